package queue_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/qm-dev/qm/master/queue"
)

var payload16 = []byte("0123456789abcdef")

// BenchmarkPutGetAck is one goroutine putting, getting and acking one
// 16-byte task per op.
func BenchmarkPutGetAck(b *testing.B) {
	m := newManager(b, queue.Config{})
	ctx := context.Background()
	its := []queue.Item{{Payload: payload16}}
	ack := make([]uint64, 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Put(ctx, queue.PutRequest{Queue: "bench", Items: its}); err != nil {
			b.Fatal(err)
		}
		ts, err := m.Get(ctx, queue.GetRequest{Queue: "bench", Max: 1, Owner: 1}, nil)
		if err != nil || len(ts) != 1 {
			b.Fatal(ts, err)
		}
		ack[0] = ts[0].ID
		if _, err := m.Ack(queue.AckRequest{Queue: "bench", Owner: 1, IDs: ack}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParallel runs put+get+ack per op from GOMAXPROCS goroutines,
// on one shared queue and on a queue per goroutine.
func BenchmarkParallel(b *testing.B) {
	for _, shared := range []bool{true, false} {
		name := "shared"
		if !shared {
			name = "perG"
		}
		b.Run(name, func(b *testing.B) {
			m := newManager(b, queue.Config{})
			ctx := context.Background()
			var owners atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				owner := owners.Add(1)
				q := "bench"
				if !shared {
					q += strconv.FormatUint(owner, 10)
				}
				its := []queue.Item{{Payload: payload16}}
				ack := make([]uint64, 1)
				for pb.Next() {
					if _, err := m.Put(ctx, queue.PutRequest{Queue: q, Items: its}); err != nil {
						b.Error(err)
						return
					}
					ts, err := m.Get(ctx, queue.GetRequest{Queue: q, Max: 1, Owner: owner}, nil)
					if err != nil || len(ts) != 1 {
						b.Error(ts, err)
						return
					}
					ack[0] = ts[0].ID
					if _, err := m.Ack(queue.AckRequest{Queue: q, Owner: owner, IDs: ack}, nil); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkHandoff is one task handed by a Put to a Get blocked on the
// empty queue, acked, and the producer told: the wake-up path, one
// blocked Get per op (two goroutine switches included).
func BenchmarkHandoff(b *testing.B) {
	m := newManager(b, queue.Config{})
	ctx := context.Background()
	its := []queue.Item{{Payload: payload16}}
	got := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		ack := make([]uint64, 1)
		for {
			ts, err := m.Get(ctx, queue.GetRequest{Queue: "bench", Max: 1, Owner: 1}, nil)
			if err != nil {
				return // closed
			}
			ack[0] = ts[0].ID
			if _, err := m.Ack(queue.AckRequest{Queue: "bench", Owner: 1, IDs: ack}, nil); err != nil {
				return // closed
			}
			got <- struct{}{}
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Put(ctx, queue.PutRequest{Queue: "bench", Items: its}); err != nil {
			b.Fatal(err)
		}
		<-got
	}
	m.Close()
	<-done
}

// BenchmarkBatch256 is a master's queue work at 256 tasks a call, as in
// qbench's B=256 rows: four owners each hold a batch while it is worked
// on; each loop puts 256 tasks, gets 256 for the next owner and acks
// the batch that owner held.
func BenchmarkBatch256(b *testing.B) {
	m := newManager(b, queue.Config{})
	ctx := context.Background()
	const batch, owners = 256, 4
	items := make([]queue.Item, batch)
	for i := range items {
		items[i] = queue.Item{Payload: payload16}
	}
	held := make([][]uint64, owners)
	var ts, acked []queue.Task
	tasks := 0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := m.Put(ctx, queue.PutRequest{Queue: "bench", Items: items}); err != nil {
			b.Fatal(err)
		}
		owner := i % owners
		if len(held[owner]) > 0 {
			var err error
			if acked, err = m.Ack(queue.AckRequest{Queue: "bench", Owner: uint64(owner + 1), IDs: held[owner]}, acked); err != nil {
				b.Fatal(err)
			}
		}
		var err error
		ts, err = m.Get(ctx, queue.GetRequest{Queue: "bench", Max: batch, Owner: uint64(owner + 1)}, ts)
		if err != nil || len(ts) != batch {
			b.Fatal(len(ts), err)
		}
		held[owner] = held[owner][:0]
		for _, t := range ts {
			held[owner] = append(held[owner], t.ID)
		}
		tasks += batch
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(tasks), "ns/task")
}
