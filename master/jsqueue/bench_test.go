package jsqueue_test

import (
	"context"
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
