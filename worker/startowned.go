package worker

import (
	"os/exec"
	"runtime"
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
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return done, nil
}
