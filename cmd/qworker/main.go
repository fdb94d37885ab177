// Command qworker runs tasks from a qm master's queue, with a built-in
// handler or a command run once per task.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qm-dev/qm/internal/gomaxprocs"
)

func main() { os.Exit(run()) }

func run() int {
	// qworker only moves tasks and results: its built-in handlers are
	// trivial and a command runs in processes of its own.
	gomaxprocs.OneUnlessSet()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, which drains, restore the default handling so
	// that a second one exits at once.
	context.AfterFunc(ctx, stop)
	f := newFactory()
	err := newRootCmd(f, nil).ExecuteContext(ctx)
	return exitCode(f.ErrOut, err)
}
