package worker

import (
	"context"
	"runtime"
	"sync"
	"testing"

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
		{"queue", func(run func(job)) jobRunner { return newPool(run, concurrency) }},
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
		p := newPool(func(j job) {
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
		}, limit)
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
