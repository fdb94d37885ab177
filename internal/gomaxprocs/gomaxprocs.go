// Package gomaxprocs chooses how many threads run the Go code of qm's commands.
package gomaxprocs

import (
	"os"
	"runtime"
)

// OneUnlessSet runs the calling program's Go code on one thread at a time
// (GOMAXPROCS=1) unless the GOMAXPROCS environment variable says
// otherwise. A master, a worker and a producer each do short bursts of
// work, most of it in the kernel; with more than one P, every hand-off
// between goroutines wakes an idle thread on another CPU, which costs more
// than the parallelism gives. Measured in docs/PERFORMANCE.md: fewer
// context switches per task, higher throughput and a shorter round trip.
func OneUnlessSet() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}
