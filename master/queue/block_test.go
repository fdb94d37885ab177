package queue_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

func TestGetBlocksUntilPut(t *testing.T) {
	m := newManager(t, queue.Config{})
	ch := goGet(context.Background(), m, "q", 5, 1)
	waitConsumers(t, m, "q", 1)
	select {
	case r := <-ch:
		t.Fatalf("Get returned %v, %v on an empty queue", r.ts, r.err)
	default:
	}
	mustPut(t, m, "q", "a", "b")
	r := recvGet(t, ch)
	if r.err != nil || !slices.Equal(payloads(r.ts), []string{"a", "b"}) || r.ts[0].Attempts != 1 {
		t.Fatalf("woken Get = %+v, %v", r.ts, r.err)
	}
	if s := mustStats(t, m, "q"); s.Leased != 2 || s.Consumers != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if m.LeasedBy(1) != 2 {
		t.Fatal("tasks handed to a waiter are not leased to it")
	}
}

func TestGetTimeout(t *testing.T) {
	m := newManager(t, queue.Config{})
	start := time.Now() // before the deadline is set: it may fall a hair under 50ms from a later start
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ts, err := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
	elapsed := time.Since(start)
	if ts != nil || err != nil {
		t.Fatalf("Get = %v, %v; want nil, nil", ts, err)
	}
	if elapsed < 50*time.Millisecond || elapsed > time.Second {
		t.Fatalf("Get returned after %v, want about 50ms", elapsed)
	}
	if s := mustStats(t, m, "q"); s.Consumers != 0 {
		t.Fatalf("timed-out getter still registered: %+v", s)
	}
}

func TestWaitersFIFO(t *testing.T) {
	m := newManager(t, queue.Config{})
	const n = 5
	chs := make([]<-chan getResult, n)
	for i := range chs {
		chs[i] = goGet(context.Background(), m, "q", 1, uint64(i+1))
		waitConsumers(t, m, "q", i+1)
	}
	for i := range chs {
		ids := mustPut(t, m, "q", "t")
		r := recvGet(t, chs[i])
		if r.err != nil || len(r.ts) != 1 || r.ts[0].ID != ids[0] {
			t.Fatalf("waiter %d got %+v, %v; want task %d", i, r.ts, r.err, ids[0])
		}
		for j := i + 1; j < n; j++ {
			select {
			case r := <-chs[j]:
				t.Fatalf("waiter %d served before its turn: %+v", j, r)
			default:
			}
		}
	}
}

// A batch put wakes as many waiters as it fills, each with up to its max.
func TestPutServesSeveralWaiters(t *testing.T) {
	m := newManager(t, queue.Config{})
	a := goGet(context.Background(), m, "q", 2, 1)
	waitConsumers(t, m, "q", 1)
	b := goGet(context.Background(), m, "q", 2, 2)
	waitConsumers(t, m, "q", 2)
	mustPut(t, m, "q", "1", "2", "3")
	if r := recvGet(t, a); !slices.Equal(payloads(r.ts), []string{"1", "2"}) {
		t.Fatalf("first waiter got %v", payloads(r.ts))
	}
	if r := recvGet(t, b); !slices.Equal(payloads(r.ts), []string{"3"}) {
		t.Fatalf("second waiter got %v", payloads(r.ts))
	}
}

func TestDeleteWakesGetters(t *testing.T) {
	m := newManager(t, queue.Config{})
	ch := goGet(context.Background(), m, "q", 1, 1)
	waitConsumers(t, m, "q", 1)
	if err := m.Delete("q"); err != nil {
		t.Fatal(err)
	}
	if r := recvGet(t, ch); r.ts != nil || r.err != nil {
		t.Fatalf("Get on a deleted queue = %v, %v", r.ts, r.err)
	}
}

func TestMaxLen(t *testing.T) {
	ctx := context.Background()
	m := newManager(t, queue.Config{MaxLen: 2})

	t.Run("waits then fits", func(t *testing.T) {
		mustPut(t, m, "a", "1", "2")
		done := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "a", Items: items("3")})
			done <- err
		}()
		waitProducers(t, m, "a", 1)
		ts := mustGet(t, m, "a", 1, 1) // leased tasks still count
		select {
		case err := <-done:
			t.Fatalf("Put returned %v though the queue is still full", err)
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := m.Ack(queue.AckRequest{Queue: "a", Owner: 1, IDs: []uint64{ts[0].ID}}, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Put not woken by the ack")
		}
		if got := payloads(mustGet(t, m, "a", 5, 1)); !slices.Equal(got, []string{"2", "3"}) {
			t.Fatalf("queue holds %v", got)
		}
	})

	t.Run("noAck get frees room", func(t *testing.T) {
		mustPut(t, m, "b", "1", "2")
		done := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "b", Items: items("3")})
			done <- err
		}()
		checkFor(t, 5*time.Second, func() error {
			if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "b", Max: 1, Owner: 1, NoAck: true}, nil); err != nil {
				return err
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				return nil
			default:
				return errors.New("Put still waiting")
			}
		})
	})

	t.Run("full at deadline", func(t *testing.T) {
		mustPut(t, m, "c", "1", "2")
		start := time.Now() // before the deadline is set: it counts from then
		ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		ids, err := m.Put(ctx, queue.PutRequest{Queue: "c", Items: items("3")})
		if !errors.Is(err, queue.ErrQueueFull) || ids != nil {
			t.Fatalf("Put = %v, %v; want ErrQueueFull", ids, err)
		}
		if d := time.Since(start); d < 50*time.Millisecond || d > time.Second {
			t.Fatalf("Put gave up after %v", d)
		}
		if s := mustStats(t, m, "c"); s.Ready != 2 || s.Producers != 0 {
			t.Fatalf("queue length %d after a failed put", s.Ready)
		}
	})

	t.Run("batch too large", func(t *testing.T) {
		start := time.Now()
		if _, err := m.Put(ctx, queue.PutRequest{Queue: "d", Items: items("1", "2", "3")}); !errors.Is(err, queue.ErrQueueFull) {
			t.Fatalf("Put = %v", err)
		}
		if time.Since(start) > time.Second {
			t.Fatal("an oversized batch waited")
		}
	})

	t.Run("force", func(t *testing.T) {
		mustPut(t, m, "e", "1", "2")
		if _, err := m.Put(ctx, queue.PutRequest{Queue: "e", Items: items("3", "4"), Results: true}); err != nil {
			t.Fatalf("forced Put: %v", err)
		}
		if s := mustStats(t, m, "e"); s.Ready != 4 || s.MaxLen != 2 {
			t.Fatalf("stats = %+v", s)
		}
	})

	t.Run("waiting puts are FIFO", func(t *testing.T) {
		mustPut(t, m, "f", "1", "2")
		big := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "f", Items: items("b1", "b2")})
			big <- err
		}()
		waitProducers(t, m, "f", 1)
		small := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "f", Items: items("s")})
			small <- err
		}()
		waitProducers(t, m, "f", 2)
		// One slot frees: the small batch must not overtake the big one.
		if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "f", Max: 1, Owner: 1, NoAck: true}, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-small:
			t.Fatalf("small batch overtook the waiting big one: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "f", Max: 1, Owner: 1, NoAck: true}, nil); err != nil {
			t.Fatal(err)
		}
		if err := <-big; err != nil {
			t.Fatal(err)
		}
		if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "f", Max: 2, Owner: 1, NoAck: true}, nil); err != nil {
			t.Fatal(err)
		}
		if err := <-small; err != nil {
			t.Fatal(err)
		}
		if got := payloads(mustGet(t, m, "f", 5, 1)); !slices.Equal(got, []string{"s"}) {
			t.Fatalf("queue holds %v", got)
		}
	})

	t.Run("a cancelled head put lets the next through", func(t *testing.T) {
		mustPut(t, m, "h", "1")
		bctx, cancel := context.WithCancel(ctx)
		big := make(chan error, 1)
		go func() {
			_, err := m.Put(bctx, queue.PutRequest{Queue: "h", Items: items("b1", "b2")})
			big <- err
		}()
		waitProducers(t, m, "h", 1)
		small := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "h", Items: items("s")})
			small <- err
		}()
		waitProducers(t, m, "h", 2)
		cancel()
		if err := <-big; !errors.Is(err, queue.ErrQueueFull) {
			t.Fatalf("cancelled Put = %v", err)
		}
		if err := <-small; err != nil {
			t.Fatalf("Put behind the cancelled one = %v", err)
		}
	})

	t.Run("SetMaxLen", func(t *testing.T) {
		mustPut(t, m, "g", "1", "2")
		done := make(chan error, 1)
		go func() {
			_, err := m.Put(ctx, queue.PutRequest{Queue: "g", Items: items("3")})
			done <- err
		}()
		waitProducers(t, m, "g", 1)
		if err := m.SetMaxLen("g", 0); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := m.SetMaxLen("g", -1); !errors.Is(err, queue.ErrBadArgument) {
			t.Fatalf("SetMaxLen(-1) = %v", err)
		}
	})
}

// A waiter whose ctx ends just as tasks are handed to it gives them back:
// the next waiter (or the next Get) receives them, Attempts untouched.
func TestCancelAtHandoff(t *testing.T) {
	m := newManager(t, queue.Config{})
	for i := range 200 {
		ctx, cancel := context.WithCancel(context.Background())
		ch := goGet(ctx, m, "q", 1, 1)
		waitConsumers(t, m, "q", 1)
		go cancel()
		ids := mustPut(t, m, "q", "x")
		r := recvGet(t, ch)
		if r.err != nil {
			t.Fatal(r.err)
		}
		owner := uint64(1)
		if len(r.ts) == 0 {
			// Given back: it must be ready again with Attempts 0.
			ts := mustGet(t, m, "q", 1, 2)
			if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 1 {
				t.Fatalf("round %d: task after cancel = %+v", i, ts)
			}
			r.ts, owner = ts, 2
		} else if r.ts[0].ID != ids[0] || r.ts[0].Attempts != 1 {
			t.Fatalf("round %d: got %+v", i, r.ts)
		}
		if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: owner, IDs: []uint64{r.ts[0].ID}}, nil); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if s := mustStats(t, m, "q"); s.Ready+s.Leased != 0 || s.Consumers != 0 {
			t.Fatalf("round %d: stats %+v", i, s)
		}
	}
}
