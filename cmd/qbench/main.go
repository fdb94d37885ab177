// Command qbench measures qm against the task queues a user would
// otherwise pick — Python's multiprocessing BaseManager and Redis lists —
// on one workload, in one run, and prints the table (and with --out,
// writes it into docs/PERFORMANCE.md).
//
// Every process it starts (masters, workers, redis-server, Python scripts)
// runs in a process group of its own on loopback, and is stopped when its
// measurement ends, when qbench fails, and on SIGINT or SIGTERM.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/qm-dev/qm/internal/gomaxprocs"
)

func main() {
	// The bench's own processes (the producers of every system and the
	// Redis workers) run as qm's commands do, so that no system gets a
	// runtime setting the others lack.
	gomaxprocs.OneUnlessSet()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "qbench:", err)
		os.Exit(1)
	}
}
