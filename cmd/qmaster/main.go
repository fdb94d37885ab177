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
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		// After the first signal, restore the default handling so that a
		// second one ends a slow shutdown at once.
		signal.Stop(sigs)
		cancel(signalled{s})
	}()
	f := newFactory()
	cmd, err := newRootCmd(f, nil).ExecuteContextC(ctx)
	signal.Stop(sigs)
	code := exitCode(f.ErrOut, cmd, err)
	if s, ok := context.Cause(ctx).(signalled); ok && code == exitError {
		// What a shell reports for a command a signal ended, so that a
		// script's loop stops at a Ctrl-C, as it would around any other.
		code = s.exitCode()
	}
	os.Exit(code)
}
