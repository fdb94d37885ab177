// Command goworker is a qm worker in Go, with the worker package: it
// squares the numbers in the queue "tasks".
//
//	QM_SERVER=master:5000 QM_AUTHKEY=secret go run ./examples/goworker
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/qm-dev/qm/worker"
)

func main() {
	// The first Ctrl-C (or SIGTERM) drains: running tasks finish, the
	// others go back to the master. Once it has come, the signals are
	// let go, so that a second one stops the worker at once; the tasks
	// it ran then come back when their leases run out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, stop)
	err := worker.Run(ctx, worker.Config{
		Server:      os.Getenv("QM_SERVER"),
		Authkey:     []byte(os.Getenv("QM_AUTHKEY")),
		Concurrency: 4,
		Logger:      slog.Default(),
		Handler:     square,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "goworker:", err)
		os.Exit(1)
	}
}

// square returns the square of a task's integer payload.
func square(_ context.Context, t worker.Task) (any, error) {
	v, err := t.Value()
	if err != nil {
		return nil, err
	}
	n, ok := v.(int64)
	if !ok {
		return nil, fmt.Errorf("not an integer: %v", v)
	}
	return n * n, nil
}
