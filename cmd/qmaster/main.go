// Command qmaster runs a qm master, the server that holds the queues, and
// offers subcommands to inspect and use a running one.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/qm-dev/qm/internal/gomaxprocs"
)

func main() {
	gomaxprocs.OneUnlessSet() // serveRun may raise it (gomaxprocs.Adapt)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal, restore the default handling so that a second
	// one ends a slow shutdown at once.
	context.AfterFunc(ctx, stop)
	f := newFactory()
	cmd, err := newRootCmd(f, nil).ExecuteContextC(ctx)
	stop()
	os.Exit(exitCode(f.ErrOut, cmd, err))
}
