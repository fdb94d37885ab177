package jsqueue_test

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// BenchmarkPutGetAck moves tasks through one queue of a single node in
// batches of 32: put, get, ack. b.N counts tasks.
func BenchmarkPutGetAck(b *testing.B) {
	q := newQueues(b, startNode(b), jsqueue.Config{})
	const batch = 32
	items := make([]queue.Item, batch)
	for i := range items {
		items[i] = queue.Item{Payload: []byte("0123456789abcdef")}
	}
	ctx := context.Background()
	put(b, q, "bench")
	var tPut, tGet, tAck time.Duration
	gets := 0
	b.ResetTimer()
	for done := 0; done < b.N; done += batch {
		t0 := time.Now()
		if _, err := q.Put(ctx, queue.PutRequest{Queue: "bench", Items: items}); err != nil {
			b.Fatal(err)
		}
		tPut += time.Since(t0)
		got := 0
		for got < batch {
			t1 := time.Now()
			ts, err := q.Get(ctx, queue.GetRequest{Queue: "bench", Max: batch - got, Owner: 1, MaxWait: time.Second}, nil)
			if err != nil || len(ts) == 0 {
				b.Fatalf("get: %d tasks, %v", len(ts), err)
			}
			tGet += time.Since(t1)
			gets++
			ids := make([]uint64, len(ts))
			for i, t := range ts {
				ids[i] = t.ID
			}
			t2 := time.Now()
			if _, err := q.Ack(queue.AckRequest{Queue: "bench", Owner: 1, IDs: ids}, nil); err != nil {
				b.Fatal(err)
			}
			tAck += time.Since(t2)
			got += len(ts)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(tPut.Nanoseconds())/n, "put-ns/task")
	b.ReportMetric(float64(tGet.Nanoseconds())/n, "get-ns/task")
	b.ReportMetric(float64(tAck.Nanoseconds())/n, "ack-ns/task")
	b.ReportMetric(float64(gets)*batch/n, "gets/batch")
}

// BenchmarkWorkers is qbench's batched run inside one process: a
// producer puts batches of 1,000 and takes the results (NoAck, then
// Delivered) while 4 workers of 4 loops each get up to 8 tasks and ack
// them, publishing a result each. b.N counts tasks; cpu-µs/task is the
// whole process's (the node's included), the figure that bounds
// throughput on a busy machine.
func BenchmarkWorkers(b *testing.B) { benchWorkers(b, 0) }

// BenchmarkWorkersWithPriorities is BenchmarkWorkers with every other
// task put at priority 5: the queue has two levels.
func BenchmarkWorkersWithPriorities(b *testing.B) { benchWorkers(b, 5) }

func benchWorkers(b *testing.B, priority int) {
	q := newQueues(b, startNode(b), jsqueue.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	put(b, q, "bench")
	put(b, q, "results")
	var wg sync.WaitGroup
	for w := range 4 * 4 {
		owner := uint64(w + 1)
		wg.Go(func() {
			for ctx.Err() == nil {
				ts, err := q.Get(ctx, queue.GetRequest{Queue: "bench", Max: 8, Owner: owner, MaxWait: 100 * time.Millisecond}, nil)
				if err != nil || len(ts) == 0 {
					continue
				}
				ids := make([]uint64, len(ts))
				for i, t := range ts {
					ids[i] = t.ID
				}
				_, err = q.Ack(queue.AckRequest{Queue: "bench", Owner: owner, IDs: ids, Publish: func(acked []queue.Task) ([]queue.Task, error) {
					items := make([]queue.Item, len(acked))
					for i, t := range acked {
						items[i] = queue.Item{Payload: t.Payload}
					}
					_, err := q.Put(ctx, queue.PutRequest{Queue: "results", Items: items, Results: true})
					return nil, err
				}}, nil)
				if err != nil && ctx.Err() == nil {
					b.Error(err)
				}
			}
		})
	}
	items := make([]queue.Item, 1000)
	for i := range items {
		items[i] = queue.Item{Payload: []byte("0123456789abcdef")}
		if i%2 == 1 {
			items[i].Priority = priority
		}
	}
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; {
		n := min(len(items), b.N-done)
		if _, err := q.Put(ctx, queue.PutRequest{Queue: "bench", Items: items[:n]}); err != nil {
			b.Fatal(err)
		}
		for got := 0; got < n; {
			req := queue.GetRequest{Queue: "results", Max: n - got, Owner: 1000, NoAck: true, MaxWait: 5 * time.Second}
			ts, err := q.Get(ctx, req, nil)
			if err != nil || len(ts) == 0 {
				b.Fatalf("results: %d, %v", len(ts), err)
			}
			q.Delivered(req, ts)
			got += len(ts)
		}
		done += n
	}
	b.StopTimer()
	took, cpu := time.Since(start), cpuTime()-cpu0
	cancel()
	wg.Wait()
	b.ReportMetric(float64(b.N)/took.Seconds(), "tasks/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/task")
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRequeue moves 1,000 dead tasks back to their queue per
// operation (each is put into the dead-letter queue again between
// operations, untimed), and peeks at them first. b.N counts requeues.
func BenchmarkRequeue(b *testing.B) {
	q := newQueues(b, startNode(b), jsqueue.Config{})
	const n = 1000
	items := make([]queue.Item, n)
	for i := range items {
		items[i] = queue.Item{Payload: []byte("0123456789abcdef")}
	}
	dead := queue.DeadLetterName("jobs")
	ctx := context.Background()
	var peek, requeue time.Duration
	for b.Loop() {
		b.StopTimer()
		if _, err := q.Purge("jobs"); err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
			b.Fatal(err)
		}
		if _, err := q.Put(ctx, queue.PutRequest{Queue: dead, Items: items}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if ts, err := q.Peek(dead, n); err != nil || len(ts) != n {
			b.Fatalf("peek: %d tasks, %v", len(ts), err)
		}
		t1 := time.Now()
		if moved, err := q.Requeue("jobs", nil); err != nil || moved != n {
			b.Fatalf("requeue: %d moved, %v", moved, err)
		}
		peek += t1.Sub(t0)
		requeue += time.Since(t1)
	}
	b.ReportMetric(float64(peek.Microseconds())/float64(b.N*n), "peek-µs/task")
	b.ReportMetric(float64(requeue.Microseconds())/float64(b.N*n), "requeue-µs/task")
}
