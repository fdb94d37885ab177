package queue_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// TestStress runs producers, consumers with short random timeouts and
// random acks, nacks, ungets, forgotten leases and disconnects, plus a
// reaper on a fake clock, and checks that every task put is consumed
// exactly once or dead-lettered exactly once.
func TestStress(t *testing.T) {
	const (
		producers = 8
		perProd   = 2000
		consumers = 8
		total     = producers * perProd
		q         = "stress"
	)
	clk := newFakeClock()

	var (
		mu       sync.Mutex
		put      = make(map[uint64]string, total) // id → payload
		consumed = make(map[uint64]string, total) // acked or taken noAck
		dead     = make(map[uint64]string)
		failures []string
		finished atomic.Int64 // consumed + dead
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	m := newManager(t, queue.Config{
		Now:          clk.Now,
		MaxAttempts:  3,
		MaxLen:       64,
		DefaultLease: time.Hour,
		OnDead: func(name string, tk queue.Task) {
			mu.Lock()
			defer mu.Unlock()
			if name != q {
				failures = append(failures, "OnDead for queue "+name)
			}
			if _, dup := dead[tk.ID]; dup {
				failures = append(failures, fmt.Sprintf("task %d dead twice", tk.ID))
			}
			if _, ok := consumed[tk.ID]; ok {
				failures = append(failures, fmt.Sprintf("task %d dead after being consumed", tk.ID))
			}
			if tk.Attempts < 3 {
				failures = append(failures, fmt.Sprintf("task %d dead after %d attempts", tk.ID, tk.Attempts))
			}
			dead[tk.ID] = string(tk.Payload)
			finished.Add(1)
		},
	})
	markConsumed := func(ts []queue.Task) {
		mu.Lock()
		defer mu.Unlock()
		for _, tk := range ts {
			if _, dup := consumed[tk.ID]; dup {
				failures = append(failures, fmt.Sprintf("task %d consumed twice", tk.ID))
			}
			if _, ok := dead[tk.ID]; ok {
				failures = append(failures, fmt.Sprintf("task %d consumed after dying", tk.ID))
			}
			consumed[tk.ID] = string(tk.Payload)
		}
		finished.Add(int64(len(ts)))
	}

	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(p), 1))
			for seq := 0; seq < perProd; {
				n := min(1+rng.IntN(5), perProd-seq)
				its := make([]queue.Item, n)
				for i := range its {
					its[i] = queue.Item{Payload: fmt.Appendf(nil, "p%d-%d", p, seq+i)}
				}
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(3000))*time.Microsecond)
				ids, err := m.Put(ctx, queue.PutRequest{Queue: q, Items: its})
				cancel()
				if errors.Is(err, queue.ErrQueueFull) {
					continue // nothing was added: try the same batch again
				}
				if err != nil || len(ids) != n {
					fail("Put = %v, %v", ids, err)
					return
				}
				mu.Lock()
				for i, id := range ids {
					if _, dup := put[id]; dup {
						failures = append(failures, fmt.Sprintf("id %d given twice", id))
					}
					put[id] = string(its[i].Payload)
				}
				mu.Unlock()
				seq += n
			}
		})
	}

	var nextOwner atomic.Uint64
	nextOwner.Store(1000)
	for c := range consumers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(c), 2))
			owner := uint64(c + 1)
			for finished.Load() < total {
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(2000))*time.Microsecond)
				noAck := rng.IntN(20) == 0
				ts, err := m.Get(ctx, queue.GetRequest{Queue: q, Max: 1 + rng.IntN(4), Owner: owner, NoAck: noAck}, nil)
				cancel()
				if err != nil {
					fail("Get: %v", err)
					return
				}
				if noAck {
					if len(ts) > 0 && rng.IntN(5) == 0 {
						m.Unget(queue.GetRequest{Queue: q, NoAck: true}, ts) // "could not deliver"
						continue
					}
					markConsumed(ts)
					continue
				}
				var ack []uint64
				for _, tk := range ts {
					switch r := rng.IntN(100); {
					case r < 65:
						ack = append(ack, tk.ID)
					case r < 85:
						// A lease may expire meanwhile: then ErrNotLeased is right.
						if err := m.Nack(queue.NackRequest{Queue: q, Owner: owner, ID: tk.ID, Error: "failed"}); err != nil && !errors.Is(err, queue.ErrNotLeased) {
							fail("Nack: %v", err)
						}
					case r < 92:
						m.Unget(queue.GetRequest{Queue: q, Owner: owner}, []queue.Task{tk})
					default:
						// Forget it: the reaper or a disconnect returns it.
					}
				}
				if len(ack) > 0 {
					acked, err := m.Ack(queue.AckRequest{Queue: q, Owner: owner, IDs: ack}, nil)
					if err != nil && !errors.Is(err, queue.ErrNotLeased) {
						fail("Ack: %v", err)
					}
					markConsumed(acked)
				}
				if rng.IntN(50) == 0 {
					m.Release(owner) // the connection drops; a new one comes
					owner = nextOwner.Add(1)
				}
			}
		})
	}

	reaperDone := make(chan struct{})
	var reaper sync.WaitGroup
	reaper.Go(func() {
		for {
			select {
			case <-reaperDone:
				return
			case <-time.After(time.Millisecond):
			}
			m.ExpireLeases(clk.Advance(10 * time.Minute))
		}
	})

	wait := make(chan struct{})
	go func() { wg.Wait(); close(wait) }()
	select {
	case <-wait:
	case <-time.After(60 * time.Second):
		close(reaperDone)
		reaper.Wait()
		t.Fatalf("stuck: %d of %d tasks finished; stats %+v", finished.Load(), total, allStats(m))
	}
	close(reaperDone)
	reaper.Wait()

	mu.Lock()
	defer mu.Unlock()
	for _, f := range failures[:min(len(failures), 20)] {
		t.Error(f)
	}
	if len(put) != total {
		t.Fatalf("%d tasks put, want %d", len(put), total)
	}
	for id, p := range put {
		c, isConsumed := consumed[id]
		d, isDead := dead[id]
		switch {
		case isConsumed && isDead:
			t.Fatalf("task %d both consumed and dead", id)
		case isConsumed && c != p, isDead && d != p:
			t.Fatalf("task %d payload changed from %q", id, p)
		case !isConsumed && !isDead:
			t.Fatalf("task %d (%s) lost", id, p)
		}
	}
	if len(consumed)+len(dead) != total {
		t.Fatalf("%d consumed + %d dead, want %d", len(consumed), len(dead), total)
	}
	s := mustStats(t, m, q)
	if s.Ready != 0 || s.Leased != 0 || s.Consumers != 0 || s.Producers != 0 || s.Dead != len(dead) {
		t.Fatalf("final stats %+v with %d dead", s, len(dead))
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d consumed, %d dead; stats %+v", len(consumed), len(dead), s)
}

// TestChaos runs every operation at random on a few queues, deletes and
// purges included, then closes the Manager under load. It checks for
// deadlocks, panics and broken indexes, not for accounting.
func TestChaos(t *testing.T) {
	clk := newFakeClock()
	var deadCalls atomic.Int64
	m := newManager(t, queue.Config{
		Now: clk.Now, MaxAttempts: 2, MaxLen: 20, DefaultLease: time.Minute,
		OnDead: func(string, queue.Task) { deadCalls.Add(1) },
	})
	names := []string{"a", "b", "c", "a.dead"}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			owner := uint64(w + 1)
			var held []queue.Task
			var heldQ []string
			for {
				select {
				case <-stop:
					return
				default:
				}
				q := names[rng.IntN(len(names))]
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rng.IntN(500))*time.Microsecond)
				switch rng.IntN(16) {
				case 0, 1, 2:
					_, _ = m.Put(ctx, queue.PutRequest{Queue: q, Items: items("x", "y")[:1+rng.IntN(2)], Results: rng.IntN(10) == 0})
				case 3, 4, 5:
					ts, _ := m.Get(ctx, queue.GetRequest{Queue: q, Max: 1 + rng.IntN(3), Owner: owner, NoAck: rng.IntN(8) == 0}, nil)
					for range ts {
						heldQ = append(heldQ, q)
					}
					held = append(held, ts...)
				case 6, 7:
					if len(held) > 0 {
						i := rng.IntN(len(held))
						_, _ = m.Ack(queue.AckRequest{Queue: heldQ[i], Owner: owner, IDs: []uint64{held[i].ID}}, nil)
						held, heldQ = slices.Delete(held, i, i+1), slices.Delete(heldQ, i, i+1)
					}
				case 8:
					if len(held) > 0 {
						i := rng.IntN(len(held))
						_ = m.Nack(queue.NackRequest{Queue: heldQ[i], Owner: owner, ID: held[i].ID, Error: "e"})
						held, heldQ = slices.Delete(held, i, i+1), slices.Delete(heldQ, i, i+1)
					}
				case 9:
					if len(held) > 0 {
						_ = m.Extend(heldQ[0], owner, []uint64{held[0].ID}, time.Duration(rng.IntN(3))*time.Minute)
						m.Unget(queue.GetRequest{Queue: heldQ[0], Owner: owner}, held[:1])
					}
				case 10:
					m.Release(owner)
					held, heldQ = nil, nil
				case 11:
					if rng.IntN(4) == 0 {
						_ = m.Delete(q)
					} else {
						_, _ = m.Purge(q)
					}
				case 12:
					_ = m.SetMaxLen(q, rng.IntN(30))
				case 13:
					_, _ = m.Stats(q)
					_ = allStats(m)
					_, _ = m.Peek(q, 3)
					_ = m.LeasedBy(owner)
				case 14:
					m.ExpireLeases(clk.Advance(time.Duration(rng.IntN(40)) * time.Second))
				case 15:
					_, _ = m.NextDeadline()
					select {
					case <-m.LeaseChanged():
					default:
					}
				}
				cancel()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	if err := m.CheckInvariants(); err != nil {
		t.Error(err) // checked under load: each queue is locked while checked
	}
	m.Close() // wakes every blocked Get and Put
	close(stop)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("workers stuck after Close")
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	t.Logf("queues %v, %d dead", queueNames(m), deadCalls.Load())
}
