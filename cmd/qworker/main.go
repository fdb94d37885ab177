// Command qworker runs tasks from a qm master's queue, with a built-in
// handler or a command run once per task.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qm-dev/qm/internal/gomaxprocs"
	"github.com/qm-dev/qm/worker"
)

func main() { os.Exit(run()) }

func run() int {
	// qworker only moves tasks and results: its built-in handlers are
	// trivial and a command runs in processes of its own.
	gomaxprocs.OneUnlessSet()
	// SIGINT or SIGTERM drains. So does a hangup (the terminal or session
	// that started qworker went away): by default it would kill qworker
	// and leave its commands running, their tasks given to others too.
	// A second signal exits at once, and kills the commands still
	// running with all they started.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	ctx, drain := context.WithCancel(context.Background())
	defer drain()
	go func() {
		<-sigs
		drain()
		sig := <-sigs
		worker.KillCommands()
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
	}()
	f := newFactory()
	err := newRootCmd(f, nil).ExecuteContext(ctx)
	return exitCode(f.ErrOut, err)
}
