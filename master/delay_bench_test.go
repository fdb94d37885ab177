package master_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// BenchmarkDelayedLateness measures how late delayed tasks reach a
// waiting worker, over a real connection, while a producer and a worker
// keep the master busy with plain tasks (batches of 100) on another
// queue. The b.N delayed tasks fall due 10,000 a second, 10 each
// millisecond, from a second after the first put (the puts are done by
// then). Reported: the lateness at p50, p99 and max (target: p99
// within 50ms), and the plain tasks' rate meanwhile.
func BenchmarkDelayedLateness(b *testing.B) {
	addr, _ := qmtest.StartMaster(b, master.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The load: put 100, get 100, complete 100, as fast as it goes.
	var loadWG sync.WaitGroup
	var loaded int64
	prod, work := qmtest.Dial(b, addr, "producer"), qmtest.Dial(b, addr, "worker")
	payload, _ := wire.Encode(12345)
	batch := make([]msgpack.RawMessage, 100)
	for i := range batch {
		batch[i] = payload
	}
	loadStart := time.Now()
	loadWG.Go(func() {
		for ctx.Err() == nil {
			if _, err := prod.PutRaw(ctx, "load", batch, wire.PutOptions{}); err != nil {
				return
			}
			ts, err := work.Get(ctx, "load", wire.GetOptions{Max: 100, Timeout: time.Second})
			if err != nil {
				return
			}
			cs := make([]wire.Completion, len(ts))
			for i, t := range ts {
				cs[i] = wire.Completion{ID: t.ID, Value: t.Payload}
			}
			if err := work.Complete(ctx, "load", "", cs); err != nil {
				return
			}
			loaded += int64(len(ts))
		}
	})

	timer := qmtest.Dial(b, addr, "producer")
	start := time.Now().Add(time.Second)
	due := func(i int) time.Time { return start.Add(time.Duration(i/10) * time.Millisecond) }
	for i := 0; i < b.N; i += 10 {
		// One put per due time: the put's At is its tasks' due time.
		var ps []msgpack.RawMessage
		for j := i; j < min(i+10, b.N); j++ {
			p, _ := wire.Encode(j)
			ps = append(ps, p)
		}
		if _, err := timer.PutRaw(ctx, "timed", ps, wire.PutOptions{At: due(i)}); err != nil {
			b.Fatal(err)
		}
	}
	if time.Now().After(start) {
		b.Fatalf("the puts took past the first due time; the lateness would count them")
	}
	b.ResetTimer()
	late := make([]time.Duration, 0, b.N)
	for len(late) < b.N {
		ts, err := timer.Get(ctx, "timed", wire.GetOptions{Max: 100, Timeout: 10 * time.Second, NoAck: true})
		if err != nil {
			b.Fatal(err)
		}
		if len(ts) == 0 {
			b.Fatalf("no delayed task within 10s; %d of %d came", len(late), b.N)
		}
		now := time.Now()
		for _, t := range ts {
			var i int
			if err := msgpack.Unmarshal(t.Payload, &i); err != nil {
				b.Fatal(err)
			}
			if now.Before(due(i)) {
				b.Fatalf("task %d came %v early", i, due(i).Sub(now))
			}
			late = append(late, now.Sub(due(i)))
		}
	}
	b.StopTimer()
	cancel()
	loadWG.Wait()
	elapsed := time.Since(loadStart)
	slices.Sort(late)
	pct := func(p float64) float64 { return float64(late[int(p*float64(len(late)-1))]) / 1e6 }
	b.ReportMetric(pct(0.5), "late-p50-ms")
	b.ReportMetric(pct(0.99), "late-p99-ms")
	b.ReportMetric(pct(1), "late-max-ms")
	b.ReportMetric(float64(loaded)/elapsed.Seconds(), "load-tasks/s")
}
