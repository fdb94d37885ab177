package worker

import (
	"slices"
	"sync"
	"time"
)

// job is a task for a handler goroutine.
type job struct {
	s *session
	l *lease
	t Task
}

// pool runs jobs on handler goroutines, which live until stop, so that a
// task costs neither a new goroutine nor the growth of its stack.
//
// It owns the handler goroutines and the queue of jobs waiting for one.
// The Run goroutine adds jobs and, at the end, stops the pool; the handler
// goroutines take jobs from the queue. All of that is under mu, which
// nothing else takes.
//
// Jobs wait in the queue. idle goroutines wait on wake; looking is set
// while one has been woken (or started) and has not yet looked at the
// queue, so that a batch wakes one goroutine, not one per job: it takes
// the next job and has another come for the rest before it runs its own,
// so that a job that blocks holds up no other, and a goroutine done with
// its job takes the next itself. A goroutine is started only when none is
// idle or on its way, so there are never more of them than jobs queued
// or running at once, which the Run goroutine keeps within Concurrency.
//
// With max set, at most max jobs run at once and the rest wait in the
// queue, each goroutine taking the next when done: at Concurrency 1 the
// Run goroutine hands the pool every prefetched task at once (see
// runner.runWaiting), and they run one after another on one goroutine
// instead of each being handed over when the one before returns.
//
// The simpler pools are slower. BenchmarkPool (pool_test.go) runs 16-byte
// echo tasks, in batches of 28, through this pool, through Concurrency
// goroutines that take jobs from a channel, and on a goroutine each;
// medians per task of -count 5 at the default -benchtime (1s): 75, 263
// and 384 ns at GOMAXPROCS=1, qworker's setting; 123, 267 and 767 ns at
// GOMAXPROCS=2. A channel wakes a goroutine for every job, and a goroutine
// of its own grows a fresh stack for every job.
type pool struct {
	// run is what a handler goroutine does with a job. A goroutine that
	// goes from one job straight to the next passes the time the first
	// ended, which run may return, as the second's start: reading the
	// clock costs 50-60 ns on a VM's kvm-clock, a few per cent of a quick
	// task, and the second starts a lock and a few appends after the
	// first ended. It is zero when the goroutine waited, or run returned
	// none (runTask returns none after a log line, which may be slow).
	run func(j job, start time.Time) (end time.Time)
	max int // most jobs run at once; 0: as many as are added

	mu       sync.Mutex
	queue    []job // queue[qhead:] wait
	qhead    int
	idle     int
	looking  bool
	busy     int       // goroutines running a job
	wake     sync.Cond // on mu
	stopping bool      // set by stop: idle goroutines end
	wg       sync.WaitGroup
}

func newPool(run func(job, time.Time) time.Time, max int) *pool {
	p := &pool{run: run, max: max}
	p.wake.L = &p.mu
	return p
}

// add queues jobs for the handler goroutines. It must not be called after
// stop.
func (p *pool) add(jobs []job) {
	p.mu.Lock()
	if p.qhead > 0 { // drop the taken ones first, so that the array stays Concurrency long
		n := copy(p.queue, p.queue[p.qhead:])
		clear(p.queue[n:])
		p.queue, p.qhead = p.queue[:n], 0
	}
	p.queue = append(p.queue, jobs...)
	p.dispatchLocked()
	p.mu.Unlock()
}

// beyondSlots counts the queued jobs that wait for a job running now to
// end: those beyond what the free slots start at once (only with max).
func (p *pool) beyondSlots() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.beyondSlotsLocked()
}

func (p *pool) beyondSlotsLocked() int {
	if p.max == 0 {
		return 0
	}
	return max(0, len(p.queue)-p.qhead-max(0, p.max-p.busy))
}

// takeBeyondSlots removes the queued jobs beyondSlots counts, and returns
// them.
func (p *pool) takeBeyondSlots() []job {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.beyondSlotsLocked()
	if n == 0 {
		return nil
	}
	jobs := slices.Clone(p.queue[len(p.queue)-n:])
	clear(p.queue[len(p.queue)-n:])
	p.queue = p.queue[:len(p.queue)-n]
	return jobs
}

// dispatchLocked makes sure a handler goroutine comes for the queue: it
// wakes an idle one, or starts one, unless one is on its way already.
func (p *pool) dispatchLocked() {
	if p.qhead == len(p.queue) || p.looking || p.max > 0 && p.busy >= p.max {
		return
	}
	p.looking = true
	if p.idle > 0 {
		p.wake.Signal()
		return
	}
	p.wg.Add(1)
	go p.handle()
}

// handle runs queued jobs until stop. It was started or woken to look at
// the queue; before it runs a job, it has another goroutine come for the
// rest, so that a job that blocks holds up no other.
func (p *pool) handle() {
	defer p.wg.Done()
	p.mu.Lock()
	running := false
	defer func() {
		if running {
			// A job ended this goroutine (a handler's runtime.Goexit;
			// runTask failed its task): it is done, and another
			// goroutine comes for the queue.
			p.mu.Lock()
			p.busy--
			p.dispatchLocked()
		}
		p.mu.Unlock()
	}()
	p.looking = false
	var ended time.Time // when this goroutine's last job ended, if it has not waited since
	for {
		if p.qhead == len(p.queue) {
			if p.stopping {
				return
			}
			ended = time.Time{}
			p.idle++
			p.wake.Wait()
			p.idle--
			p.looking = false
			continue
		}
		j := p.queue[p.qhead]
		p.queue[p.qhead] = job{}
		if p.qhead++; p.qhead == len(p.queue) {
			p.queue, p.qhead = p.queue[:0], 0 // reuse the array
		}
		p.busy++
		p.dispatchLocked()
		p.mu.Unlock()
		running = true
		ended = p.run(j, ended)
		running = false
		p.mu.Lock()
		p.busy--
	}
}

// stop waits for every handler goroutine to finish its job and end.
func (p *pool) stop() {
	p.mu.Lock()
	p.stopping = true
	p.wake.Broadcast()
	p.mu.Unlock()
	p.wg.Wait()
}
