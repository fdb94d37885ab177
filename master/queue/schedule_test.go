package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
)

// put adds its items to q, failing the test on an error.
func put(t testing.TB, m *queue.Manager, q string, its ...queue.Item) []uint64 {
	t.Helper()
	ids, err := m.Put(context.Background(), queue.PutRequest{Queue: q, Items: its})
	if err != nil {
		t.Fatalf("Put(%q): %v", q, err)
	}
	return ids
}

func item(payload string) queue.Item { return queue.Item{Payload: []byte(payload)} }

func delayedItem(payload string, due time.Time) queue.Item {
	return queue.Item{Payload: []byte(payload), Due: due}
}

// TestDelayedPut: a delayed task is invisible to gets until its time,
// not a moment earlier, then joins the back of its queue.
func TestDelayedPut(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	start := clk.Now()
	put(t, m, "q", delayedItem("late", start.Add(30*time.Second)), item("a"))
	if got := payloads(mustGet(t, m, "q", 10, 1)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("get before the due time = %v, want [a]", got)
	}
	put(t, m, "q", item("b"))
	st := mustStats(t, m, "q")
	if st.Delayed != 1 || st.Retrying != 0 || !st.NextDue.Equal(start.Add(30*time.Second)) || st.Ready != 1 {
		t.Fatalf("stats = %+v, want 1 delayed due at +30s and 1 ready", st)
	}
	if next, ok := m.NextDeadline(); !ok || !next.Equal(start.Add(30*time.Second)) {
		t.Fatalf("NextDeadline = %v, %v; want the due time", next, ok)
	}
	if n := m.ReleaseDue(start.Add(30*time.Second - time.Nanosecond)); n != 0 {
		t.Fatalf("ReleaseDue a nanosecond early made %d ready", n)
	}
	if n := m.ReleaseDue(clk.Advance(30 * time.Second)); n != 1 {
		t.Fatalf("ReleaseDue at the due time made %d ready, want 1", n)
	}
	put(t, m, "q", item("c"))
	if got := payloads(mustGet(t, m, "q", 10, 1)); !slices.Equal(got, []string{"b", "late", "c"}) {
		t.Fatalf("get after the due time = %v, want [b late c]", got)
	}
}

// TestDelayedWakesWaitingGet: a get blocked on an empty queue gets a
// delayed task as soon as the Manager's timer makes it ready.
func TestDelayedWakesWaitingGet(t *testing.T) {
	m := newManager(t, queue.Config{})
	done := make(chan struct{})
	reaped := make(chan struct{})
	go func() {
		defer close(reaped)
		m.ReapLeases(done, nil)
	}()
	defer func() { close(done); <-reaped }()
	due := time.Now().Add(50 * time.Millisecond)
	put(t, m, "q", delayedItem("x", due))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ts, err := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("Get = %v, %v; want the delayed task", ts, err)
	}
	if now := time.Now(); now.Before(due) {
		t.Fatalf("delayed task handed out %v early", due.Sub(now))
	}
}

// TestDelayedSurvivesRestart: delayed and retrying tasks come back from
// the store still delayed, with their due times and priorities; one whose
// time passed while the master was down is ready at once.
func TestDelayedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := queue.Config{Now: clk.Now, MaxAttempts: 5}
	m, stop := openDurable(t, dir, cfg)
	start := clk.Now()
	put(t, m, "q",
		delayedItem("soon", start.Add(time.Minute)),
		delayedItem("later", start.Add(time.Hour)),
		queue.Item{Payload: []byte("urgent-later"), Due: start.Add(time.Hour), Priority: 7},
		item("now"))
	if err := m.SetPolicy("q", queue.Policy{BackoffMin: 10 * time.Minute, BackoffMax: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	ts := mustGet(t, m, "q", 1, 1)
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "down"}); err != nil {
		t.Fatal(err)
	}
	stop()

	clk.Advance(2 * time.Minute) // "soon" fell due while the master was down
	m, stop = openDurable(t, dir, cfg)
	defer stop()
	st := mustStats(t, m, "q")
	if st.Ready != 1 || st.Delayed != 3 || st.Retrying != 1 {
		t.Fatalf("after restart: %+v; want 1 ready (soon), 3 delayed of which 1 retrying", st)
	}
	if st.Policy.BackoffMin != 10*time.Minute {
		t.Fatalf("policy after restart = %+v", st.Policy)
	}
	if got := payloads(mustGet(t, m, "q", 10, 2)); !slices.Equal(got, []string{"soon"}) {
		t.Fatalf("ready after restart = %v, want [soon]", got)
	}
	peek, err := m.PeekDelayed("q", 10)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, p := range peek {
		seen = append(seen, fmt.Sprintf("%s@%v/p%d", p.Payload, p.Due.Sub(start), p.Priority))
	}
	// The nacked task waits its 5..10 minutes from the nack.
	if len(peek) != 3 || string(peek[0].Payload) != "now" || peek[0].Due.Before(start.Add(5*time.Minute)) || peek[0].Due.After(start.Add(10*time.Minute)) ||
		!slices.Equal(seen[1:], []string{"later@1h0m0s/p0", "urgent-later@1h0m0s/p7"}) {
		t.Fatalf("delayed after restart = %v", seen)
	}
	m.ReleaseDue(clk.Advance(time.Hour))
	if got := payloads(mustGet(t, m, "q", 10, 2)); !slices.Equal(got, []string{"urgent-later", "now", "later"}) {
		t.Fatalf("after the due times = %v, want [urgent-later now later]", got)
	}
}

// TestBackoffSequence: each failed attempt, nack or expired lease, waits
// out the queue's backoff, doubling from its minimum up to its maximum,
// drawn from the upper half of each step; the task is not handed out a
// moment earlier. The last attempt goes to the dead-letter queue at once.
func TestBackoffSequence(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, MaxAttempts: 3})
	const attempts = 7
	if err := m.SetPolicy("q", queue.Policy{MaxAttempts: attempts, BackoffMin: time.Second, BackoffMax: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	put(t, m, "q", item("flaky"))
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range attempts {
		ts := mustGet(t, m, "q", 1, 1)
		if len(ts) != 1 || ts[0].Attempts != i+1 {
			t.Fatalf("attempt %d: got %+v", i+1, ts)
		}
		if i%2 == 0 {
			if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "503"}); err != nil {
				t.Fatal(err)
			}
		} else if err := m.Extend("q", 1, []uint64{ts[0].ID}, time.Second); err != nil {
			t.Fatal(err)
		} else if n := m.ExpireLeases(clk.Advance(time.Second)); n != 1 {
			t.Fatalf("attempt %d: %d leases expired, want 1", i+1, n)
		}
		if i == attempts-1 {
			break
		}
		now := clk.Now()
		st := mustStats(t, m, "q")
		wait := st.NextDue.Sub(now)
		if st.Retrying != 1 || wait < want[i]/2 || wait > want[i] {
			t.Fatalf("after failure %d: retrying %d, waits %v; want 1 waiting %v..%v", i+1, st.Retrying, wait, want[i]/2, want[i])
		}
		m.ReleaseDue(now.Add(wait - time.Nanosecond))
		if ts := mustGet(t, m, "q", 1, 1); len(ts) != 0 {
			t.Fatalf("after failure %d: handed out %v before its backoff ran out", i+1, wait)
		}
		m.ReleaseDue(clk.Advance(wait))
	}
	if st := mustStats(t, m, "q"); st.Dead != 1 || st.Delayed != 0 || st.Ready != 0 {
		t.Fatalf("after the last attempt: %+v; want it dead", st)
	}
}

// TestNackRetryAfter: a worker's retry-after overrides the queue's
// backoff, even when the queue has none.
func TestNackRetryAfter(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	put(t, m, "q", item("x"))
	ts := mustGet(t, m, "q", 1, 1)
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "rate limited", RetryAfter: 42 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if st := mustStats(t, m, "q"); !st.NextDue.Equal(clk.Now().Add(42*time.Second)) || st.Retrying != 1 {
		t.Fatalf("stats = %+v; want retrying, due in 42s", st)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, RetryAfter: -time.Second}); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("negative retry after: %v, want ErrBadArgument", err)
	}
}

// TestRunNow: run-now makes delayed and retrying tasks ready at once, a
// retry at the front and a delayed put at the back.
func TestRunNow(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, RetryBackoffMin: time.Hour})
	far := clk.Now().Add(24 * time.Hour)
	ids := put(t, m, "q", item("failing"), delayedItem("d1", far), delayedItem("d2", far), item("plain"))
	ts := mustGet(t, m, "q", 1, 1)
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	n, err := m.RunNow("q", []uint64{ids[0], ids[2], 999})
	if n != 2 || !errors.Is(err, queue.ErrNoSuchTask) {
		t.Fatalf("RunNow = %d, %v; want 2 and ErrNoSuchTask for 999", n, err)
	}
	if got := payloads(mustGet(t, m, "q", 10, 1)); !slices.Equal(got, []string{"failing", "plain", "d2"}) {
		t.Fatalf("after RunNow = %v, want [failing plain d2]", got)
	}
	if n, err := m.RunNow("q", nil); n != 1 || err != nil {
		t.Fatalf("RunNow(all) = %d, %v; want 1", n, err)
	}
}

// TestPriorities: higher priorities first, FIFO within each, and a failed
// task goes back to the front of its own priority.
func TestPriorities(t *testing.T) {
	m := newManager(t, queue.Config{})
	pri := func(p string, n int) queue.Item { return queue.Item{Payload: []byte(p), Priority: n} }
	put(t, m, "q", pri("a0", 0), pri("b9", 9), pri("c5", 5), pri("d0", 0), pri("e9", 9))
	peek, _ := m.Peek("q", 10)
	if got := payloads(peek); !slices.Equal(got, []string{"b9", "e9", "c5", "a0", "d0"}) {
		t.Fatalf("peek = %v", got)
	}
	ts := mustGet(t, m, "q", 2, 1)
	if got := payloads(ts); !slices.Equal(got, []string{"b9", "e9"}) {
		t.Fatalf("first get = %v", got)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[1].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	put(t, m, "q", pri("f5", 5))
	if got := payloads(mustGet(t, m, "q", 10, 1)); !slices.Equal(got, []string{"e9", "c5", "f5", "a0", "d0"}) {
		t.Fatalf("second get = %v", got)
	}
}

// TestPrioritiesConcurrentGets: getters racing with a producer each see
// their batches in priority order, FIFO within a priority, and together
// get every task once.
func TestPrioritiesConcurrentGets(t *testing.T) {
	m := newManager(t, queue.Config{})
	const perPriority = 300
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range perPriority {
			var its []queue.Item
			for p := range queue.MaxPriority + 1 {
				its = append(its, queue.Item{Payload: fmt.Appendf(nil, "%d/%05d", p, i), Priority: p})
			}
			put(t, m, "q", its...)
		}
	})
	var mu sync.Mutex
	got := make(map[string]bool)
	for g := range 4 {
		wg.Go(func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				ts, err := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 7, Owner: uint64(g + 1), NoAck: true}, nil)
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				if len(ts) == 0 {
					return
				}
				for i := 1; i < len(ts); i++ {
					a, b := string(ts[i-1].Payload), string(ts[i].Payload)
					if a[0] < b[0] || a[0] == b[0] && a > b {
						t.Errorf("getter %d: %s before %s in one batch", g, a, b)
					}
				}
				mu.Lock()
				for _, tk := range ts {
					if got[string(tk.Payload)] {
						t.Errorf("%s handed out twice", tk.Payload)
					}
					got[string(tk.Payload)] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(got) != perPriority*(queue.MaxPriority+1) {
		t.Fatalf("got %d tasks, want %d", len(got), perPriority*(queue.MaxPriority+1))
	}
}

// TestIdempotentPut: a put with a key seen within the dedup window adds
// nothing and returns the first task's ID, even after that task is done;
// past the window the key is new again. Keys are per queue.
func TestIdempotentPut(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, DedupWindow: time.Minute})
	keyed := func(p, k string) queue.Item { return queue.Item{Payload: []byte(p), Key: k} }
	first := put(t, m, "q", keyed("a", "k1"), keyed("b", ""), keyed("c", "k1"))
	if first[2] != first[0] {
		t.Fatalf("a key repeated in one put: ids %v, want the third to be the first's", first)
	}
	repeats := -1
	again, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{keyed("a again", "k1"), keyed("d", "k2"), keyed("e", ""), keyed("d again", "k2")}, Repeats: &repeats})
	if err != nil {
		t.Fatal(err)
	}
	if again[0] != first[0] || again[3] != again[1] {
		t.Fatalf("repeated keys: ids %v, want the first %d and the fourth the second's", again, first[0])
	}
	if repeats != 2 {
		t.Fatalf("Repeats = %d, want 2 (a key of an earlier put, one repeated in the put)", repeats)
	}
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{keyed("f", "k3")}, Repeats: &repeats}); err != nil || repeats != 0 {
		t.Fatalf("a new key: Repeats = %d (%v), want 0", repeats, err)
	}
	if other := put(t, m, "other", keyed("a", "k1")); other[0] == first[0] {
		t.Fatal("a key of another queue deduplicated")
	}
	ts := mustGet(t, m, "q", 10, 1)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b", "d", "e", "f"}) {
		t.Fatalf("queue holds %v, want [a b d e f]", got)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[0].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	clk.Advance(59 * time.Second)
	if ids := put(t, m, "q", keyed("a late retry", "k1")); ids[0] != first[0] {
		t.Fatalf("retry within the window after the ack: id %d, want %d", ids[0], first[0])
	}
	clk.Advance(time.Second)
	if ids := put(t, m, "q", keyed("a new one", "k1")); ids[0] == first[0] {
		t.Fatal("a key past its window still deduplicated")
	}
	if st := mustStats(t, m, "q"); st.Puts != 6 {
		t.Fatalf("puts = %d, want 6 (a, b, d, e, f, a new one)", st.Puts)
	}
}

// TestIdempotentPutSurvivesRestart: keys are remembered across a restart,
// those of tasks done before it too, and forgotten after their window.
func TestIdempotentPutSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := queue.Config{Now: clk.Now, DedupWindow: time.Minute}
	m, stop := openDurable(t, dir, cfg)
	keyed := func(p, k string) queue.Item { return queue.Item{Payload: []byte(p), Key: k} }
	ids := put(t, m, "q", keyed("live", "k-live"), keyed("done", "k-done"))
	ts := mustGet(t, m, "q", 2, 1)
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[1].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	stop()
	clk.Advance(30 * time.Second)
	m, stop = openDurable(t, dir, cfg)
	again := put(t, m, "q", keyed("live", "k-live"), keyed("done", "k-done"))
	if !slices.Equal(again, ids) {
		t.Fatalf("after restart: ids %v, want %v", again, ids)
	}
	if st := mustStats(t, m, "q"); st.Ready != 1 {
		t.Fatalf("after restart: %d ready, want 1", st.Ready)
	}
	stop()
	clk.Advance(31 * time.Second)
	m, stop = openDurable(t, dir, cfg)
	defer stop()
	if later := put(t, m, "q", keyed("done", "k-done")); later[0] == ids[1] {
		t.Fatal("a key past its window was remembered across a restart")
	}
}

// TestScheduleBadInput: out-of-range priorities, long keys and bad
// policies are refused with ErrBadArgument, and change nothing.
func TestScheduleBadInput(t *testing.T) {
	m := newManager(t, queue.Config{})
	for _, it := range []queue.Item{
		{Payload: []byte("x"), Priority: 10},
		{Payload: []byte("x"), Priority: -1},
		{Payload: []byte("x"), Key: strings.Repeat("k", queue.MaxKeyLen+1)},
	} {
		if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{item("ok"), it}}); !errors.Is(err, queue.ErrBadArgument) {
			t.Errorf("Put(%+v): %v, want ErrBadArgument", it, err)
		}
	}
	if _, err := m.Stats("q"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("a refused put left a queue: %v", err)
	}
	put(t, m, "q", queue.Item{Payload: []byte("x"), Key: strings.Repeat("k", queue.MaxKeyLen)})
	for _, p := range []queue.Policy{
		{MaxAttempts: -1},
		{MaxAttempts: queue.MaxMaxAttempts + 1},
		{BackoffMin: -2},
		{BackoffMin: time.Minute, BackoffMax: time.Second},
		{BackoffMax: time.Second},
		{BackoffMin: time.Second, BackoffMax: queue.MaxBackoff + 1},
	} {
		if err := m.SetPolicy("q", p); !errors.Is(err, queue.ErrBadArgument) {
			t.Errorf("SetPolicy(%+v): %v, want ErrBadArgument", p, err)
		}
	}
	if err := m.SetPolicy("q.dead", queue.Policy{MaxAttempts: 2}); !errors.Is(err, queue.ErrBadArgument) {
		t.Errorf("SetPolicy on a dead-letter queue: %v, want ErrBadArgument", err)
	}
	if st := mustStats(t, m, "q"); st.Policy != (queue.Policy{MaxAttempts: queue.DefaultMaxAttempts}) {
		t.Errorf("refused policies changed it: %+v", st.Policy)
	}
}

// TestPurgeDropsDelayed: purge and delete take the delayed tasks too.
func TestPurgeDropsDelayed(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	put(t, m, "q", item("a"), delayedItem("b", clk.Now().Add(time.Hour)))
	if n, err := m.Purge("q"); n != 2 || err != nil {
		t.Fatalf("Purge = %d, %v; want 2", n, err)
	}
	if st := mustStats(t, m, "q"); st.Delayed != 0 || !st.NextDue.IsZero() {
		t.Fatalf("after purge: %+v", st)
	}
	if n := m.ReleaseDue(clk.Advance(2 * time.Hour)); n != 0 {
		t.Fatalf("a purged delayed task came back: %d", n)
	}
}

// heldStore is a store whose writes are durable only once the test says
// so (release), or never with a full disk (failing): puts wait on it.
type heldStore struct {
	mu      sync.Mutex
	waiters int
	release chan struct{}
	failing bool
	// failsOnRelease makes a write fail once released, so that gets may
	// take tasks of a put whose write then fails.
	failsOnRelease bool
	ops            []store.Op // every op appended, in order
}

func (s *heldStore) Load() (store.Meta, []store.Task, error) { return store.Meta{}, nil, nil }
func (s *heldStore) Writable() error                         { return nil }
func (s *heldStore) Append(ops ...store.Op) store.Ticket {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, ops...)
	return 1
}
func (s *heldStore) SetDumper(store.Dumper) {}
func (s *heldStore) Close() error           { return nil }
func (s *heldStore) Wait(store.Ticket) error {
	if s.failing {
		return store.ErrDiskFull
	}
	s.mu.Lock()
	s.waiters++
	s.mu.Unlock()
	<-s.release
	if s.failsOnRelease {
		return store.ErrDiskFull
	}
	return nil
}

func (s *heldStore) waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters
}

// TestRepeatedKeyWaitsForDurability: a put that repeats a key returns
// only once the first put is durable, and a put whose write failed
// forgets its keys, so that its retry adds the task.
func TestRepeatedKeyWaitsForDurability(t *testing.T) {
	st := &heldStore{release: make(chan struct{})}
	m := newManager(t, queue.Config{Store: st})
	keyed := queue.Item{Payload: []byte("x"), Key: "k"}
	done := make(chan []uint64, 2)
	for range 2 {
		go func() {
			ids, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{keyed}})
			if err != nil {
				t.Error(err)
			}
			done <- ids
		}()
	}
	checkFor(t, 5*time.Second, func() error {
		if n := st.waiting(); n != 2 {
			return fmt.Errorf("%d puts wait for the store, want both", n)
		}
		return nil
	})
	close(st.release)
	a, b := <-done, <-done
	if !slices.Equal(a, b) {
		t.Fatalf("ids %v and %v, want the same", a, b)
	}

	failing := &heldStore{failing: true}
	m = newManager(t, queue.Config{Store: failing})
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{keyed}}); !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("put on a full disk: %v", err)
	}
	failing.failing = false
	failing.release = make(chan struct{})
	close(failing.release)
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{keyed}}); err != nil {
		t.Fatal(err)
	}
	if st := mustStats(t, m, "q"); st.Ready != 1 {
		t.Fatalf("the retry of a refused keyed put left %d ready, want 1", st.Ready)
	}
}

// TestRepeatedKeyInFullQueue: a put that only repeats known keys needs no
// room: it adds nothing.
func TestRepeatedKeyInFullQueue(t *testing.T) {
	m := newManager(t, queue.Config{MaxLen: 1})
	keyed := queue.Item{Payload: []byte("x"), Key: "k"}
	first := put(t, m, "q", keyed)
	ids, err := m.Put(queue.NoWait, queue.PutRequest{Queue: "q", Items: []queue.Item{keyed}})
	if err != nil || !slices.Equal(ids, first) {
		t.Fatalf("repeat into a full queue: %v, %v; want %v", ids, err, first)
	}
}

// TestDueTooFar: a due time or a retry-after past the bounds is refused,
// not wrapped around into "now".
func TestDueTooFar(t *testing.T) {
	m := newManager(t, queue.Config{})
	far := time.Now().Add(queue.MaxDelay + time.Hour)
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{delayedItem("x", far)}}); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("put due at %v: %v, want ErrBadArgument", far, err)
	}
	put(t, m, "q", item("x"))
	ts := mustGet(t, m, "q", 1, 1)
	err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, RetryAfter: queue.MaxBackoff + time.Second})
	if !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("nack with a retry-after past MaxBackoff: %v, want ErrBadArgument", err)
	}
}

// TestDeleteForgetsKeysAcrossRestart: a deleted queue's keys are not
// remembered after a restart.
func TestDeleteForgetsKeysAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	put(t, m, "q", queue.Item{Payload: []byte("x"), Key: "k"})
	if err := m.Delete("q"); err != nil {
		t.Fatal(err)
	}
	stop()
	m, stop = openDurable(t, dir, queue.Config{})
	defer stop()
	if qs := queueNames(m); len(qs) != 0 {
		t.Fatalf("queues after the restart: %v, want none", qs)
	}
	put(t, m, "q", queue.Item{Payload: []byte("x"), Key: "k"})
	if st := mustStats(t, m, "q"); st.Ready != 1 {
		t.Fatalf("a put with a deleted queue's key added %d, want 1", st.Ready)
	}
}

// TestPeekDelayedMany: peeking at many delayed tasks lists them by due
// time, quickly.
func TestPeekDelayedMany(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	const n = 50000
	its := make([]queue.Item, n)
	for i := range its {
		its[i] = delayedItem(fmt.Sprint(i), clk.Now().Add(time.Duration((i*7919)%n+1)*time.Second))
	}
	put(t, m, "q", its...)
	ts, err := m.PeekDelayed("q", n)
	if err != nil || len(ts) != n {
		t.Fatalf("PeekDelayed: %d tasks, %v", len(ts), err)
	}
	if !slices.IsSortedFunc(ts, func(a, b queue.Task) int { return a.Due.Compare(b.Due) }) {
		t.Fatal("delayed tasks not listed by due time")
	}
}

// putRequest puts items under the request ID rid.
func putRequest(t *testing.T, m *queue.Manager, name, rid string, items ...queue.Item) []uint64 {
	t.Helper()
	ids, err := m.Put(context.Background(), queue.PutRequest{Queue: name, Items: items, RequestID: rid})
	if err != nil {
		t.Fatalf("put %s under request %q: %v", name, rid, err)
	}
	return ids
}

// TestRequestIDPutsOnce: a put sent again with its request ID within the
// dedup window adds nothing and gets the first send's IDs, even after its
// tasks are done and across a restart; another ID, another queue, or the
// window's end, and the put is new.
func TestRequestIDPutsOnce(t *testing.T) {
	dir := t.TempDir()
	clk := newFakeClock()
	cfg := queue.Config{Now: clk.Now, DedupWindow: time.Minute}
	m, stop := openDurable(t, dir, cfg)
	batch := []queue.Item{item("a"), item("b"), item("c")}
	ids := putRequest(t, m, "q", "r1", batch...)
	if again := putRequest(t, m, "q", "r1", batch...); !slices.Equal(again, ids) {
		t.Fatalf("the same put again: ids %v, want %v", again, ids)
	}
	other := putRequest(t, m, "q", "r2", batch...)
	if slices.Contains(ids, other[0]) {
		t.Fatalf("another request ID got the first put's IDs: %v", other)
	}
	if o := putRequest(t, m, "other", "r1", batch...); slices.Contains(ids, o[0]) {
		t.Fatal("a request ID of another queue deduplicated")
	}
	ts := mustGet(t, m, "q", 10, 1)
	if got := payloads(ts); len(got) != 6 {
		t.Fatalf("queue holds %v, want the two puts' six tasks", got)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: ids}, nil); err != nil {
		t.Fatal(err)
	}
	stop()
	clk.Advance(30 * time.Second)
	m, stop = openDurable(t, dir, cfg)
	if again := putRequest(t, m, "q", "r1", batch...); !slices.Equal(again, ids) {
		t.Fatalf("after its tasks were done and a restart: ids %v, want %v", again, ids)
	}
	if st := mustStats(t, m, "q"); st.Puts != 0 || st.Ready != 3 {
		t.Fatalf("after the repeat: puts %d, ready %d; want 0 since the restart, and r2's 3 (leased before it)", st.Puts, st.Ready)
	}
	stop()
	clk.Advance(31 * time.Second)
	m, stop = openDurable(t, dir, cfg)
	defer stop()
	if later := putRequest(t, m, "q", "r1", batch...); slices.Contains(ids, later[0]) {
		t.Fatal("a request ID past its window was remembered across a restart")
	}
}

// TestRequestIDBadInput: a request ID with item keys, a long one, and an
// item key that could pass for one are refused, and add nothing.
func TestRequestIDBadInput(t *testing.T) {
	m := newManager(t, queue.Config{})
	for _, req := range []queue.PutRequest{
		{Queue: "q", Items: []queue.Item{item("a"), {Payload: []byte("b"), Key: "k"}}, RequestID: "r"},
		{Queue: "q", Items: []queue.Item{item("a")}, RequestID: strings.Repeat("r", queue.MaxKeyLen+1)},
		{Queue: "q", Items: []queue.Item{{Payload: []byte("a"), Key: "\x00request\x00r"}}},
	} {
		if _, err := m.Put(context.Background(), req); !errors.Is(err, queue.ErrBadArgument) {
			t.Errorf("Put(%+v): %v, want ErrBadArgument", req, err)
		}
	}
	if _, err := m.Stats("q"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("a refused put left a queue: %v", err)
	}
}

// TestRequestIDInFullQueue: a repeated put needs no room, and a put whose
// write failed is forgotten, so that its retry adds its tasks.
func TestRequestIDInFullQueue(t *testing.T) {
	m := newManager(t, queue.Config{MaxLen: 2})
	batch := []queue.Item{item("a"), item("b")}
	first := putRequest(t, m, "q", "r", batch...)
	ids, err := m.Put(queue.NoWait, queue.PutRequest{Queue: "q", Items: batch, RequestID: "r"})
	if err != nil || !slices.Equal(ids, first) {
		t.Fatalf("repeat into a full queue: %v, %v; want %v", ids, err, first)
	}
	// Nor does it wait behind a put that waits for room.
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error, 1)
	go func() {
		_, err := m.Put(ctx, queue.PutRequest{Queue: "q", Items: []queue.Item{item("c")}})
		waiting <- err
	}()
	waitProducers(t, m, "q", 1)
	ids, err = m.Put(queue.NoWait, queue.PutRequest{Queue: "q", Items: batch, RequestID: "r"})
	if err != nil || !slices.Equal(ids, first) {
		t.Fatalf("repeat behind a waiting put: %v, %v; want %v", ids, err, first)
	}
	cancel()
	if err := <-waiting; !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("the waiting put, cancelled: %v", err)
	}

	failing := &heldStore{failing: true}
	m = newManager(t, queue.Config{Store: failing})
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: batch, RequestID: "r"}); !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("put on a full disk: %v", err)
	}
	failing.failing = false
	failing.release = make(chan struct{})
	close(failing.release)
	putRequest(t, m, "q", "r", batch...)
	if st := mustStats(t, m, "q"); st.Ready != 2 {
		t.Fatalf("the retry of a refused put left %d ready, want 2", st.Ready)
	}

	// The first task is handed out before the write fails: it runs, the
	// second is taken back, and a retry must add the second again, not
	// be told that both were stored.
	held := &heldStore{release: make(chan struct{}), failsOnRelease: true}
	m = newManager(t, queue.Config{Store: held})
	failed := make(chan error, 1)
	go func() {
		_, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: batch, RequestID: "r"})
		failed <- err
	}()
	checkFor(t, 5*time.Second, func() error {
		if n := held.waiting(); n != 1 {
			return fmt.Errorf("%d puts wait for the store, want 1", n)
		}
		return nil
	})
	taken := mustGet(t, m, "q", 1, 1)
	close(held.release)
	if err := <-failed; !errors.Is(err, store.ErrDiskFull) {
		t.Fatalf("put whose write failed: %v", err)
	}
	held.failsOnRelease = false
	retry := putRequest(t, m, "q", "r", batch...)
	if slices.Contains(retry, taken[0].ID+1) {
		t.Fatalf("the retry got the taken-back task's ID: %v", retry)
	}
	if st := mustStats(t, m, "q"); st.Ready != 2 {
		t.Fatalf("after the retry: %d ready, want its 2", st.Ready)
	}
}

// TestTakenBackKeysStayForgotten: the keys of a put taken back after its
// write failed are forgotten on disk as in memory. The store writes the
// put's adds, with their keys, once the disk has room: after a restart, a
// retry must still add the tasks taken back.
func TestTakenBackKeysStayForgotten(t *testing.T) {
	for _, tc := range []struct {
		name  string
		req   queue.PutRequest
		ready int // after the restart and the retry
	}{
		// The first task, handed out, runs; the retry adds the whole put.
		{"request ID", queue.PutRequest{Queue: "q", Items: []queue.Item{item("a"), item("b")}, RequestID: "r"}, 3},
		// The first key names the task handed out; the second is added.
		{"keys", queue.PutRequest{Queue: "q", Items: []queue.Item{{Payload: []byte("a"), Key: "ka"}, {Payload: []byte("b"), Key: "kb"}}}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			held := &heldStore{release: make(chan struct{}), failsOnRelease: true}
			m := newManager(t, queue.Config{Store: held})
			failed := make(chan error, 1)
			go func() {
				_, err := m.Put(context.Background(), tc.req)
				failed <- err
			}()
			checkFor(t, 5*time.Second, func() error {
				if n := held.waiting(); n != 1 {
					return fmt.Errorf("%d puts wait for the store, want 1", n)
				}
				return nil
			})
			mustGet(t, m, "q", 1, 1)
			close(held.release)
			if err := <-failed; !errors.Is(err, store.ErrDiskFull) {
				t.Fatalf("put whose write failed: %v", err)
			}
			m.Close()

			// What the store writes once it can, then a restart.
			dir := t.TempDir()
			st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := st.Load(); err != nil { // starts its writer
				t.Fatal(err)
			}
			held.mu.Lock()
			ops := held.ops
			held.mu.Unlock()
			if err := st.Wait(st.Append(ops...)); err != nil {
				t.Fatal(err)
			}
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			m, _ = openDurable(t, dir, queue.Config{})
			if _, err := m.Put(context.Background(), tc.req); err != nil {
				t.Fatal(err)
			}
			if st := mustStats(t, m, "q"); st.Ready != tc.ready {
				t.Fatalf("after the restart and the retry: %d ready, want %d", st.Ready, tc.ready)
			}
		})
	}
}

// TestStaleRequestIDWaitsForRoom: a request ID past its window, not yet
// swept, no longer makes its put a repeat: the put needs room as a new one.
func TestStaleRequestIDWaitsForRoom(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, DedupWindow: time.Minute, MaxLen: 2})
	batch := []queue.Item{item("a"), item("b")}
	putRequest(t, m, "q", "r", batch...)
	clk.Advance(61 * time.Second)
	if ids, err := m.Put(queue.NoWait, queue.PutRequest{Queue: "q", Items: batch, RequestID: "r"}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("a put past its request ID's window into a full queue: %v, %v; want ErrQueueFull", ids, err)
	}
}
