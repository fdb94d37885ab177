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
	// that started qworker went away), unless qworker was started to
	// ignore it (nohup): by default it would kill qworker and leave its
	// commands running, their tasks given to others too. A second signal
	// exits at once, and kills the commands still running with all they
	// started.
	signals := []os.Signal{os.Interrupt, syscall.SIGTERM}
	if !signal.Ignored(syscall.SIGHUP) {
		signals = append(signals, syscall.SIGHUP)
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, signals...)
	ctx, drain := context.WithCancel(context.Background())
	defer drain()
	go func() {
		<-sigs
		drain()
		sig := <-sigs
		worker.KillCommands()
		os.Exit(128 + int(sig.(syscall.Signal))) // as the signal's default action reports it
	}()
	f := newFactory()
	err := newRootCmd(f, nil).ExecuteContext(ctx)
	return exitCode(f.ErrOut, err)
}
