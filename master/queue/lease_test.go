package queue_test

import (
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// deadRecorder is an OnDead that records its calls.
type deadRecorder struct {
	mu    sync.Mutex
	calls []string // "queue:payload:attempts:lastError"
}

func (r *deadRecorder) onDead(q string, t queue.Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, q+":"+string(t.Payload)+":"+strconv.Itoa(t.Attempts)+":"+t.LastError)
}

func (r *deadRecorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func TestLeaseExpiry(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, DefaultLease: 10 * time.Second})
	mustPut(t, m, "q", "a", "b", "c")
	ts := mustGet(t, m, "q", 2, 1)

	if n := m.ExpireLeases(clk.Advance(9 * time.Second)); n != 0 {
		t.Fatalf("expired %d before the deadline", n)
	}
	if n := m.ExpireLeases(clk.Advance(time.Second)); n != 2 {
		t.Fatalf("expired %d at the deadline, want 2", n)
	}
	// Back at the front, in their order, Attempts as raised, LastError set.
	peek, err := m.Peek("q", 10)
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(peek); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after expiry queue is %v", got)
	}
	if peek[0].ID != ts[0].ID || peek[0].Attempts != 1 || peek[0].LastError != "lease expired" || peek[2].LastError != "" {
		t.Fatalf("requeued tasks %+v", peek)
	}
	again := mustGet(t, m, "q", 1, 2)
	if again[0].ID != ts[0].ID || again[0].Attempts != 2 {
		t.Fatalf("redelivered %+v", again[0])
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[1].ID}}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Ack after expiry = %v, want ErrNotLeased", err)
	}
	if s := mustStats(t, m, "q"); s.Expired != 2 {
		t.Fatalf("Expired = %d", s.Expired)
	}
}

func TestDeadLetter(t *testing.T) {
	clk := newFakeClock()
	rec := &deadRecorder{}
	m := newManager(t, queue.Config{Now: clk.Now, MaxAttempts: 2, DefaultLease: time.Second, OnDead: rec.onDead})
	ids := mustPut(t, m, "tasks", "a", "b")

	mustGet(t, m, "tasks", 1, 1)
	m.ExpireLeases(clk.Advance(time.Second))
	if got := rec.get(); len(got) != 0 {
		t.Fatalf("dead after 1 attempt: %v", got)
	}
	mustGet(t, m, "tasks", 1, 1)
	m.ExpireLeases(clk.Advance(time.Second))
	if got := rec.get(); !slices.Equal(got, []string{"tasks:a:2:lease expired"}) {
		t.Fatalf("OnDead calls %v", got)
	}
	dead, err := m.Peek(queue.DeadLetterName("tasks"), 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].ID != ids[0] || dead[0].Attempts != 2 || dead[0].LastError != "lease expired" {
		t.Fatalf("dead queue holds %+v", dead)
	}
	s := mustStats(t, m, "tasks")
	if s.Dead != 1 || s.Ready != 1 {
		t.Fatalf("stats = %+v", s)
	}
	if all := allStats(m); len(all) != 2 || all[0].Queue != "tasks" || all[0].Dead != 1 || all[1].Queue != "tasks.dead" {
		t.Fatalf("AllStats = %+v", all)
	}

	// A dead-letter queue has no dead-letter queue of its own.
	d := mustGet(t, m, "tasks.dead", 1, 1)
	if err := m.Nack(queue.NackRequest{Queue: "tasks.dead", Owner: 1, ID: d[0].ID, Error: "still broken"}); err != nil {
		t.Fatal(err)
	}
	if got := payloads(mustGet(t, m, "tasks.dead", 1, 1)); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("dead queue task not requeued: %v", got)
	}
	if slices.Contains(queueNames(m), "tasks.dead.dead") || len(rec.get()) != 1 {
		t.Fatalf("dead task dead-lettered again: %v %v", queueNames(m), rec.get())
	}
}

func TestNack(t *testing.T) {
	rec := &deadRecorder{}
	m := newManager(t, queue.Config{MaxAttempts: 2, OnDead: rec.onDead})
	mustPut(t, m, "q", "a", "b")
	ts := mustGet(t, m, "q", 1, 1)
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 2, ID: ts[0].ID, Error: "boom"}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Nack by wrong owner = %v", err)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	again := mustGet(t, m, "q", 1, 1)
	if again[0].ID != ts[0].ID || again[0].Attempts != 2 || again[0].LastError != "boom" {
		t.Fatalf("after nack got %+v", again[0])
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: again[0].ID, Error: "boom 2"}); err != nil {
		t.Fatal(err)
	}
	if got := rec.get(); !slices.Equal(got, []string{"q:a:2:boom 2"}) {
		t.Fatalf("OnDead calls %v", got)
	}
	if s := mustStats(t, m, "q"); s.Nacks != 2 || s.Dead != 1 || s.Ready != 1 || s.Leased != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: again[0].ID, Error: "x"}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("second Nack = %v", err)
	}
}

func TestExtend(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, DefaultLease: 10 * time.Second})
	mustPut(t, m, "q", "a", "b")
	ts := mustGet(t, m, "q", 2, 1)
	start := clk.Now()
	if d, ok := m.NextDeadline(); !ok || !d.Equal(start.Add(10*time.Second)) {
		t.Fatalf("NextDeadline = %v, %v", d, ok)
	}
	clk.Advance(8 * time.Second)
	if err := m.Extend("q", 1, []uint64{ts[0].ID}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.Extend("q", 2, []uint64{ts[1].ID}, 0); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Extend by wrong owner = %v", err)
	}
	if n := m.ExpireLeases(clk.Advance(2 * time.Second)); n != 1 {
		t.Fatalf("expired %d at 10s, want only b", n)
	}
	if d, ok := m.NextDeadline(); !ok || !d.Equal(start.Add(13*time.Second)) {
		t.Fatalf("NextDeadline after extend = %v, %v", d, ok)
	}
	if n := m.ExpireLeases(clk.Advance(3 * time.Second)); n != 1 {
		t.Fatalf("expired %d at 13s, want a", n)
	}
	if _, ok := m.NextDeadline(); ok {
		t.Fatal("NextDeadline with no lease")
	}
}

func TestLeaseChanged(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, DefaultLease: 10 * time.Second})
	changed := func() bool {
		select {
		case <-m.LeaseChanged():
			return true
		default:
			return false
		}
	}
	mustPut(t, m, "q", "a", "b", "c")
	if changed() {
		t.Fatal("signal without a lease")
	}
	ts := mustGet(t, m, "q", 1, 1)
	if !changed() {
		t.Fatal("no signal for the first lease")
	}
	mustGet(t, m, "q", 1, 1) // a later deadline: no need to re-arm
	if changed() {
		t.Fatal("signal for a later deadline")
	}
	if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 1, Lease: time.Second, Owner: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if !changed() {
		t.Fatal("no signal for an earlier deadline")
	}
	if err := m.Extend("q", 1, []uint64{ts[0].ID}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if !changed() {
		t.Fatal("no signal for an extend to an earlier deadline")
	}
}

func TestRelease(t *testing.T) {
	rec := &deadRecorder{}
	m := newManager(t, queue.Config{MaxAttempts: 2, OnDead: rec.onDead})
	mustPut(t, m, "q1", "a", "b", "c")
	mustPut(t, m, "q2", "x")
	mustGet(t, m, "q1", 2, 1)
	mustGet(t, m, "q2", 1, 1)
	mustGet(t, m, "q1", 1, 2)
	if n := m.LeasedBy(1); n != 3 {
		t.Fatalf("LeasedBy(1) = %d", n)
	}
	if n := m.Release(1); n != 3 {
		t.Fatalf("Release = %d, want 3", n)
	}
	if n := m.LeasedBy(1); n != 0 {
		t.Fatalf("LeasedBy after release = %d", n)
	}
	if n := m.LeasedBy(2); n != 1 {
		t.Fatalf("other owner's leases: %d", n)
	}
	ts := mustGet(t, m, "q1", 5, 3)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("released tasks: %v", got)
	}
	if ts[0].Attempts != 2 || ts[0].LastError != "worker disconnected" {
		t.Fatalf("released task %+v", ts[0])
	}
	// Second delivery used up MaxAttempts: a release dead-letters.
	if n := m.Release(3); n != 2 {
		t.Fatalf("Release = %d", n)
	}
	if got := rec.get(); !slices.Equal(got, []string{"q1:a:2:worker disconnected", "q1:b:2:worker disconnected"}) {
		t.Fatalf("OnDead calls %v", got)
	}
	if n := m.Release(99); n != 0 {
		t.Fatalf("Release of an unknown owner = %d", n)
	}
}

func TestUnget(t *testing.T) {
	m := newManager(t, queue.Config{MaxAttempts: 1})
	mustPut(t, m, "q", "a", "b", "c")
	ts := mustGet(t, m, "q", 2, 1)
	m.Unget(queue.GetRequest{Queue: "q", Max: 2, Owner: 2}, ts[:1]) // not owner 2's: ignored
	if s := mustStats(t, m, "q"); s.Leased != 2 {
		t.Fatalf("Unget by wrong owner changed leases: %+v", s)
	}
	m.Unget(queue.GetRequest{Queue: "q", Max: 2, Owner: 1}, ts)
	again := mustGet(t, m, "q", 3, 1)
	if got := payloads(again); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after Unget got %v", got)
	}
	for _, tk := range again {
		if tk.Attempts != 1 {
			t.Fatalf("Attempts after Unget: %+v (MaxAttempts 1 must not dead-letter)", tk)
		}
	}
	if s := mustStats(t, m, "q"); s.Gets != 3 || s.Dead != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

// Unget puts back a leased task only for the delivery it was taken in:
// a stale copy from before its lease expired leaves the new lease be.
func TestUngetOfAnEarlierDelivery(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	mustPut(t, m, "q", "a")
	req := queue.GetRequest{Queue: "q", Max: 1, Lease: time.Second, Owner: 1}
	first, _ := m.Get(doneCtx(), req, nil)
	m.ExpireLeases(clk.Advance(2 * time.Second))
	second, _ := m.Get(doneCtx(), req, nil)
	if len(first) != 1 || len(second) != 1 || second[0].Attempts != 2 {
		t.Fatalf("deliveries %+v then %+v", first, second)
	}
	m.Unget(req, first)
	if s := mustStats(t, m, "q"); s.Leased != 1 || s.Ready != 0 {
		t.Fatalf("Unget of the first delivery changed the second's lease: %+v", s)
	}
	m.Unget(req, second)
	if s := mustStats(t, m, "q"); s.Leased != 0 || s.Ready != 1 {
		t.Fatalf("Unget of the current delivery: %+v", s)
	}
}
