package worker

import (
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
)

// startOwned starts cmd and returns a channel that gets cmd.Wait's error
// once it has exited. Linux sends a process its parent-death signal
// (dieWithWorker) when the thread that forked it ends, not the worker: a
// goroutine that ends while locked to its thread ends that thread. So the
// goroutine that starts cmd holds its thread until cmd has exited, and no
// other goroutine can lock it meanwhile.
func startOwned(cmd *exec.Cmd) (exited <-chan error, err error) {
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		running.Store(cmd, struct{}{})
		started <- nil
		err := cmd.Wait()
		running.Delete(cmd)
		done <- err
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}

// running holds the commands startOwned started that have not exited,
// for KillCommands.
var running sync.Map // *exec.Cmd → struct{}

// commandsKilled says KillCommands ran: the children's failures after it
// are its doing, not a sign of a broken command (StdioConfig.Broken).
var commandsKilled atomic.Bool

// KillCommands kills every command that the package's handlers (command
// mode, and --stdio's children) started and that still runs, with all it
// started: for a program that must exit at once, such as qworker at its
// second signal. Their tasks are not completed, and run again once their
// leases run out; a command left running would go on with them. The
// handlers see their commands fail.
func KillCommands() {
	commandsKilled.Store(true)
	running.Range(func(k, _ any) bool {
		_ = killGroup(k.(*exec.Cmd))
		return true
	})
}
