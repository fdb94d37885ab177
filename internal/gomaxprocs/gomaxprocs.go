// Package gomaxprocs chooses how many threads run the Go code of qm's
// commands: one to start with, more for a master that is CPU-bound while
// the machine has cores to spare.
package gomaxprocs

import (
	"log/slog"
	"os"
	"runtime"
	"sync"
	"time"
)

// OneUnlessSet runs the calling program's Go code on one thread at a time
// (GOMAXPROCS=1) unless the GOMAXPROCS environment variable says
// otherwise. A master, a worker and a producer
// each do short bursts of work, most of it in the kernel; with more than
// one P, every hand-off between goroutines wakes an idle thread on another
// CPU, which costs more than the parallelism gives. Measured in
// docs/PERFORMANCE.md: fewer context switches per task, higher throughput
// and a shorter round trip.
func OneUnlessSet() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// Load is what one period of sampling found.
type Load struct {
	// Busy is the CPU this process used over the period, in cores (its
	// user and system time over the wall time). Its socket calls are raw
	// system calls that keep their thread's P (internal/rawsock), so its
	// kernel time counts against GOMAXPROCS too.
	Busy float64
	// Idle is the CPU the machine left idle over the period, in cores.
	Idle float64
}

// busyShare is how close to its thread count a process must run to be
// CPU-bound; idleCores is how much CPU the machine must leave idle for
// another thread to help rather than compete.
const (
	busyShare = 0.85
	idleCores = 1.0
)

// next returns the thread count after a period with load at cur threads
// on a machine of ncpu cores: twice cur (at most ncpu) when the process is
// CPU-bound and the machine has a core to spare, else cur. It never
// lowers it: a master that needed more threads once is likely to again,
// and an idle thread costs nothing.
func next(cur, ncpu int, load Load) int {
	if cur >= ncpu || load.Busy < busyShare*float64(cur) || load.Idle < idleCores {
		return cur
	}
	return min(2*cur, ncpu)
}

// Adapter raises GOMAXPROCS while the process is CPU-bound and the machine
// has idle cores, and logs each change. Start it with Adapt; Stop ends
// its goroutine and waits for it.
type Adapter struct {
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Adapt samples the process's and the machine's CPU every period and
// raises GOMAXPROCS as next says when two periods in a row call for it.
// Where the machine's idle time cannot be read (not Linux), it does
// nothing. log may be nil.
func Adapt(period time.Duration, log *slog.Logger) *Adapter {
	a := &Adapter{stop: make(chan struct{}), done: make(chan struct{})}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prev, ok := readCPU()
	if !ok {
		close(a.done)
		return a
	}
	sample := func() (Load, bool) {
		cur, ok := readCPU()
		load := cur.since(prev)
		prev = cur
		return load, ok
	}
	go a.run(period, runtime.NumCPU(), sample, log)
	return a
}

// Stop ends the Adapter's goroutine and waits for it.
func (a *Adapter) Stop() {
	a.once.Do(func() { close(a.stop) })
	<-a.done
}

// run takes a sample every period until Stop, and raises GOMAXPROCS, up
// to ncpu, as next says when two samples in a row call for it.
func (a *Adapter) run(period time.Duration, ncpu int, sample func() (Load, bool), log *slog.Logger) {
	defer close(a.done)
	tick := time.NewTicker(period)
	defer tick.Stop()
	wanted := 0 // periods in a row that called for more threads
	for {
		select {
		case <-a.stop:
			return
		case <-tick.C:
		}
		load, ok := sample()
		if !ok {
			return
		}
		n := runtime.GOMAXPROCS(0)
		more := next(n, ncpu, load)
		if more == n {
			wanted = 0
			continue
		}
		if wanted++; wanted < 2 {
			continue
		}
		wanted = 0
		runtime.GOMAXPROCS(more)
		log.Info("CPU-bound with cores to spare: Go code now runs on more threads (set GOMAXPROCS to fix the number)",
			"gomaxprocs", more, "was", n, "busy_cores", round2(load.Busy), "idle_cores", round2(load.Idle))
	}
}

func round2(f float64) float64 { return float64(int(f*100+0.5)) / 100 }
