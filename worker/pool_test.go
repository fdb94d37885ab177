package worker

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// jobRunner is what BenchmarkPool compares: the pool, and the two simpler
// ways to run jobs it was measured against.
type jobRunner interface {
	add(jobs []job)
	stop()
}

// chanPool is the plain pool: Concurrency goroutines, started at once,
// take jobs from a channel, so each job wakes one.
type chanPool struct {
	jobs chan job
	wg   sync.WaitGroup
}

func newChanPool(n int, run func(job)) *chanPool {
	p := &chanPool{jobs: make(chan job, n)}
	p.wg.Add(n)
	for range n {
		go func() {
			defer p.wg.Done()
			for j := range p.jobs {
				run(j)
			}
		}()
	}
	return p
}

func (p *chanPool) add(jobs []job) {
	for _, j := range jobs {
		p.jobs <- j
	}
}

func (p *chanPool) stop() {
	close(p.jobs)
	p.wg.Wait()
}

// goPerJob runs each job on a goroutine of its own.
type goPerJob struct {
	run func(job)
	wg  sync.WaitGroup
}

func (p *goPerJob) add(jobs []job) {
	p.wg.Add(len(jobs))
	for _, j := range jobs {
		go func() {
			defer p.wg.Done()
			p.run(j)
		}()
	}
}

func (p *goPerJob) stop() { p.wg.Wait() }

// BenchmarkPool runs the echo built-in on 16-byte tasks, encoding each
// result as runTask does, in batches of 28 (what a get brought at
// Concurrency 32 in qbench's batched run), waiting for each batch before
// the next: ns/op is the cost of a task, handing it to a goroutine and
// back included. queue is the pool, channel Concurrency goroutines on a
// channel, goroutine one goroutine per task.
func BenchmarkPool(b *testing.B) {
	const concurrency, batch = 32, 28
	payload, err := msgpack.Marshal(make([]byte, 14)) // 16 bytes encoded
	if err != nil {
		b.Fatal(err)
	}
	jobs := make([]job, batch)
	for i := range jobs {
		jobs[i].t = Task{ID: uint64(i), Payload: payload}
	}
	for _, tc := range []struct {
		name string
		make func(run func(job)) jobRunner
	}{
		{"queue", func(run func(job)) jobRunner { return newPool(untimed(run), concurrency) }},
		{"channel", func(run func(job)) jobRunner { return newChanPool(concurrency, run) }},
		{"goroutine", func(run func(job)) jobRunner { return &goPerJob{run: run} }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var done sync.WaitGroup
			p := tc.make(func(j job) {
				v, err := echo(context.Background(), j.t)
				if err == nil {
					_, err = wire.Encode(v)
				}
				if err != nil {
					b.Error(err)
				}
				done.Done()
			})
			defer p.stop()
			b.ReportAllocs()
			for n := 0; n < b.N; n += batch {
				k := min(batch, b.N-n)
				done.Add(k)
				p.add(jobs[:k])
				done.Wait()
			}
		})
	}
}

// untimed is run as a pool runs it, knowing no times.
func untimed(run func(job)) func(job, time.Time) time.Time {
	return func(j job, _ time.Time) time.Time {
		run(j)
		return time.Time{}
	}
}

// A pool with max runs no more jobs than that at once, and with max 1
// runs them in the order they were added, however many are queued.
func TestPoolMax(t *testing.T) {
	for _, limit := range []int{1, 3} {
		var (
			mu        sync.Mutex
			now, most int
			order     []uint64
			wg        sync.WaitGroup
			jobs      []job
		)
		p := newPool(untimed(func(j job) {
			mu.Lock()
			now++
			most = max(most, now)
			order = append(order, j.t.ID)
			mu.Unlock()
			for range 100 {
				runtime.Gosched()
			}
			mu.Lock()
			now--
			mu.Unlock()
			wg.Done()
		}), limit)
		for i := range 50 {
			jobs = append(jobs, job{t: Task{ID: uint64(i)}})
		}
		wg.Add(len(jobs))
		p.add(jobs[:20])
		p.add(jobs[20:])
		wg.Wait()
		p.stop()
		if most > limit {
			t.Errorf("max %d: %d jobs ran at once", limit, most)
		}
		if limit == 1 {
			for i, id := range order {
				if id != uint64(i) {
					t.Fatalf("max 1: job %d ran %dth", id, i)
				}
			}
		}
	}
}

// A handler goroutine that goes from one job straight to the next gives
// the next the time the first ended, which spares a read of the clock; one
// that waited for work gives none.
func TestPoolPassesEndAsNextStart(t *testing.T) {
	var (
		mu     sync.Mutex
		starts []time.Time
		wg     sync.WaitGroup
	)
	p := newPool(func(j job, start time.Time) time.Time {
		mu.Lock()
		starts = append(starts, start)
		mu.Unlock()
		wg.Done()
		return time.Unix(int64(j.t.ID), 0)
	}, 1)
	defer p.stop()
	wg.Add(3)
	p.add([]job{{t: Task{ID: 1}}, {t: Task{ID: 2}}, {t: Task{ID: 3}}})
	wg.Wait()
	// Wait until the goroutine waits for work, then give it more.
	for deadline := time.Now().Add(5 * time.Second); ; {
		p.mu.Lock()
		idle := p.idle
		p.mu.Unlock()
		if idle == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pool's goroutine never waited for work")
		}
		runtime.Gosched()
	}
	wg.Add(1)
	p.add([]job{{t: Task{ID: 4}}})
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	want := []time.Time{{}, time.Unix(1, 0), time.Unix(2, 0), {}}
	if len(starts) != len(want) {
		t.Fatalf("starts %v; want %v", starts, want)
	}
	for i := range want {
		if !starts[i].Equal(want[i]) {
			t.Errorf("job %d started with %v; want %v", i+1, starts[i], want[i])
		}
	}
}
