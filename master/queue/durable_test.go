package queue_test

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store/seglog"
)

// openDurable returns a Manager over a segment log in dir, and a func
// that closes both as a crash would leave them (leases not released).
func openDurable(t *testing.T, dir string, cfg queue.Config) (*queue.Manager, func()) {
	t.Helper()
	st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = st
	m, err := queue.New(cfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	closed := false
	stop := func() {
		if !closed {
			closed = true
			m.Close()
			if err := st.Close(); err != nil {
				t.Errorf("store Close: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return m, stop
}

// TestDurableRestart: after a restart, ready tasks are ready in order,
// leased ones are ready again with their attempts, nacked ones are at the
// front with their error, acked ones are gone, dead ones are in the
// dead-letter queue, and new ids are above the old ones.
func TestDurableRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	cfg := queue.Config{MaxAttempts: 2}
	m, stop := openDurable(t, dir, cfg)
	mustPut(t, m, "q", "a", "b", "c", "d", "e", "f")
	mustPut(t, m, "other", "x")
	ts, err := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 3, Owner: 1}, nil) // a b c leased
	if err != nil || len(ts) != 3 {
		t.Fatal(ts, err)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[1].ID}}, nil); err != nil { // b acked
		t.Fatal(err)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[2].ID, Error: "boom"}); err != nil { // c back to the front
		t.Fatal(err)
	}
	// a stays leased. Now c is delivered twice more: dead.
	c, _ := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
	if len(c) != 1 || string(c[0].Payload) != "c" {
		t.Fatalf("got %v, want c", payloads(c))
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: c[0].ID, Error: "boom again"}); err != nil {
		t.Fatal(err)
	}
	if d, _ := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 2, NoAck: true}, nil); len(d) != 1 || string(d[0].Payload) != "d" { // d taken without ack
		t.Fatalf("noAck get: %v", payloads(d))
	}
	// e is delivered and the get undone: back at the front, attempts 0.
	e, _ := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 3}, nil)
	m.Unget(queue.GetRequest{Queue: "q", Max: 1, Owner: 3}, e)
	lastID := mustPut(t, m, "q", "g")[0]
	stop()

	m2, _ := openDurable(t, dir, cfg)
	got, err := m2.Peek("q", 10)
	if err != nil {
		t.Fatal(err)
	}
	// a (leased, attempts 1) keeps its place before e f g; e was pushed to
	// the front after a's lease began, so it comes first.
	if want := []string{"e", "a", "f", "g"}; !slices.Equal(payloads(got), want) {
		t.Fatalf("recovered q = %v, want %v", payloads(got), want)
	}
	if got[0].Attempts != 0 || got[1].Attempts != 1 {
		t.Errorf("attempts e=%d a=%d, want 0 1", got[0].Attempts, got[1].Attempts)
	}
	dead, _ := m2.Peek("q.dead", 10)
	if len(dead) != 1 || string(dead[0].Payload) != "c" || dead[0].Attempts != 2 || dead[0].LastError != "boom again" {
		t.Fatalf("recovered q.dead = %+v", dead)
	}
	if o, _ := m2.Peek("other", 10); !slices.Equal(payloads(o), []string{"x"}) {
		t.Fatalf("recovered other = %v", payloads(o))
	}
	if id := mustPut(t, m2, "q", "h")[0]; id <= lastID {
		t.Errorf("new id %d not above the last one before the restart, %d", id, lastID)
	}
	if err := m2.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestDurableLastAttemptCutOff: a task whose last attempt was out when
// the master crashed is dead-lettered at start-up, not run once more than
// MaxAttempts allows; OnDead hears of it once ReapLeases runs. One with
// attempts left, and the tasks of a dead-letter queue, stay where they
// were.
func TestDurableLastAttemptCutOff(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	m, stop := openDurable(t, dir, queue.Config{MaxAttempts: 1})
	mustPut(t, m, "q", "a", "b")
	if ts, err := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil); err != nil || len(ts) != 1 {
		t.Fatal(ts, err)
	}
	mustPut(t, m, "q.dead", "old")
	if ts, err := m.Get(ctx, queue.GetRequest{Queue: "q.dead", Max: 1, Owner: 1}, nil); err != nil || len(ts) != 1 {
		t.Fatal(ts, err)
	}
	mustPut(t, m, "r", "c")
	if err := m.SetPolicy("r", queue.Policy{MaxAttempts: 2}); err != nil {
		t.Fatal(err)
	}
	if ts, err := m.Get(ctx, queue.GetRequest{Queue: "r", Max: 1, Owner: 1}, nil); err != nil || len(ts) != 1 {
		t.Fatal(ts, err)
	}
	stop() // a crash: a, old and c are leased

	var rec deadRecorder
	m2, _ := openDurable(t, dir, queue.Config{MaxAttempts: 1, OnDead: rec.onDead})
	if got, _ := m2.Peek("q", 10); !slices.Equal(payloads(got), []string{"b"}) {
		t.Errorf("recovered q = %v, want [b]", payloads(got))
	}
	dead, _ := m2.Peek("q.dead", 10)
	if !slices.Equal(payloads(dead), []string{"old", "a"}) || dead[1].Attempts != 1 || !strings.HasPrefix(dead[1].LastError, "its attempts were used up when the master started") {
		t.Errorf("recovered q.dead = %+v, want old, then a with its attempt used", dead)
	}
	if got, _ := m2.Peek("r", 10); !slices.Equal(payloads(got), []string{"c"}) {
		t.Errorf("recovered r = %v, want [c]: it has an attempt left", payloads(got))
	}
	if calls := rec.get(); len(calls) != 0 {
		t.Errorf("OnDead called before ReapLeases: %v", calls)
	}
	done, reaped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(reaped)
		m2.ReapLeases(done, nil)
	}()
	defer func() { close(done); <-reaped }()
	want := []string{"q:a:1:its attempts were used up when the master started: the master stopped during its last attempt (or the queue's max attempts were lowered)"}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(rec.get(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("OnDead calls %v, want %v", rec.get(), want)
		}
		time.Sleep(time.Millisecond)
	}
	if err := m2.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestDurablePause: a paused queue, empty or not, stays paused over a
// crash; a resumed one, or one deleted while paused, is not paused after.
func TestDurablePause(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	mustPut(t, m, "q", "a")
	mustPut(t, m, "gone", "x")
	for _, name := range []string{"q", "empty", "resumed", "gone"} {
		if err := m.SetPaused(name, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.SetPaused("resumed", false); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete("gone"); err != nil {
		t.Fatal(err)
	}
	stop() // a crash

	m2, stop2 := openDurable(t, dir, queue.Config{})
	paused := func(m *queue.Manager) (names []string) {
		all, err := m.AllStats()
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range all {
			if st.Paused {
				names = append(names, st.Queue)
			}
		}
		return names
	}
	if got := paused(m2); !slices.Equal(got, []string{"empty", "q"}) {
		t.Fatalf("paused after the restart: %v, want [empty q]", got)
	}
	if ts, err := m2.Get(queue.NoWait, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil); err != nil || len(ts) != 0 {
		t.Fatalf("a get of the paused queue: %v, %v", ts, err)
	}
	if err := m2.SetPaused("q", false); err != nil {
		t.Fatal(err)
	}
	mustPut(t, m2, "gone", "y")
	stop2()

	m3, _ := openDurable(t, dir, queue.Config{})
	if got := paused(m3); !slices.Equal(got, []string{"empty"}) {
		t.Fatalf("paused after resuming q: %v, want [empty]", got)
	}
}

// failingPauses is a segment log whose first fails records of pauses fail,
// as on a full disk.
type failingPauses struct {
	*seglog.Log
	fails int
}

func (s *failingPauses) SetPaused(name string, paused bool) error {
	if s.fails > 0 {
		s.fails--
		return errors.New("no space left on device")
	}
	return s.Log.SetPaused(name, paused)
}

// TestPauseNotRecordedAtFirst: a pause the data directory cannot record
// takes effect, with an error saying so; the same pause again, once the
// directory takes it, is recorded; and the same holds for a resume, and
// for a deletion forgetting a pause.
func TestPauseNotRecordedAtFirst(t *testing.T) {
	dir := t.TempDir()
	reopen := func(fails int) (*queue.Manager, func()) {
		st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever})
		if err != nil {
			t.Fatal(err)
		}
		m, err := queue.New(queue.Config{Store: &failingPauses{st, fails}})
		if err != nil {
			t.Fatal(err)
		}
		return m, func() { m.Close(); st.Close() }
	}
	paused := func(m *queue.Manager, name string) bool {
		st, err := m.Stats(name)
		return err == nil && st.Paused
	}
	m, stop := reopen(1)
	if err := m.SetPaused("q", true); err == nil || !strings.Contains(err.Error(), "q is paused, but the data directory did not record it") || !paused(m, "q") {
		t.Fatalf("a pause not recorded: %v, paused %v", err, paused(m, "q"))
	}
	if err := m.SetPaused("q", true); err != nil {
		t.Fatal(err)
	}
	stop()
	m, stop = reopen(1)
	if !paused(m, "q") {
		t.Fatal("the pause made again is not kept")
	}
	if err := m.SetPaused("q", false); err == nil || paused(m, "q") {
		t.Fatalf("a resume not recorded: %v, paused %v", err, paused(m, "q"))
	}
	if err := m.Delete("q"); err != nil {
		t.Fatal(err)
	}
	stop()
	m, stop = reopen(0)
	if _, err := m.Stats("q"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Fatalf("the deleted queue after a restart: %v, want it unknown (not made again, paused)", err)
	}
	// A deletion whose forgetting of the pause failed: a resume or a
	// delete again, though the queue is gone, forgets it.
	for _, again := range []func(*queue.Manager) error{
		func(m *queue.Manager) error { return m.SetPaused("r", false) },
		func(m *queue.Manager) error { return m.Delete("r") },
	} {
		stop()
		m, stop = reopen(0)
		if err := m.SetPaused("r", true); err != nil {
			t.Fatal(err)
		}
		stop()
		m, stop = reopen(1)
		if err := m.Delete("r"); err == nil {
			t.Fatal("a deletion whose pause was not forgotten said nothing")
		}
		if err := again(m); !errors.Is(err, queue.ErrUnknownQueue) {
			t.Fatalf("again: %v, want ErrUnknownQueue", err)
		}
		stop()
		m, stop = reopen(0)
		if _, err := m.Stats("r"); !errors.Is(err, queue.ErrUnknownQueue) {
			t.Fatalf("after a restart: %v, want r unknown, not made again, paused", err)
		}
	}
	stop()
}

// TestDurablePurgeDelete: purged and deleted tasks stay gone.
func TestDurablePurgeDelete(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	mustPut(t, m, "p", "1", "2")
	mustPut(t, m, "d", "1", "2")
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "d", Max: 1, Owner: 1}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Purge("p"); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete("d"); err != nil {
		t.Fatal(err)
	}
	mustPut(t, m, "d", "3")
	stop()
	m2, _ := openDurable(t, dir, queue.Config{})
	if p, _ := m2.Peek("p", 10); len(p) != 0 {
		t.Errorf("purged tasks came back: %v", payloads(p))
	}
	if d, _ := m2.Peek("d", 10); !slices.Equal(payloads(d), []string{"3"}) {
		t.Errorf("d = %v, want [3]", payloads(d))
	}
}

// TestPolicyOfAQueueGoneShows: the figures of a queue with a policy and no
// tasks, gone in a restart (empty queues are not kept) or deleted, show
// its policy, as before; they said "unknown queue" (qmaster config).
func TestPolicyOfAQueueGoneShows(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	if err := m.SetPolicy("cfg", queue.Policy{MaxAttempts: 8}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPolicy("gone", queue.Policy{MaxAttempts: 7}); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete("gone"); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Stats("gone"); err != nil || st.Policy.MaxAttempts != 7 {
		t.Errorf("a deleted queue's figures: %+v, %v; want its policy", st, err)
	}
	if all, _ := m.AllStats(); slices.ContainsFunc(all, func(s queue.Stats) bool { return s.Queue == "gone" }) {
		t.Error("reading a deleted queue's figures made it again")
	}
	stop()
	m, _ = openDurable(t, dir, queue.Config{})
	if st, err := m.Stats("cfg"); err != nil || st.Policy.MaxAttempts != 8 || st.Ready != 0 {
		t.Errorf("after a restart: %+v, %v; want an empty queue under its policy", st, err)
	}
	if _, err := m.Stats("never"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("a queue with no policy and no tasks: %v, want ErrUnknownQueue", err)
	}
}

// TestDurableResultQueues: the result queues kept are handed over once
// after a restart, but for one forgotten and names no queue can have (an
// edit by hand); a Manager without a store keeps none.
func TestDurableResultQueues(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	for _, kept := range [][2]string{{"jobs", "results"}, {"gone", "r"}, {"other", "r2"}, {"gone", ""}} {
		if err := m.KeepResultQueue(kept[0], kept[1]); err != nil {
			t.Fatal(err)
		}
	}
	stop() // a crash
	f, err := os.OpenFile(filepath.Join(dir, "RESULTQUEUES"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("bad\x01name\tr\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()

	m2, _ := openDurable(t, dir, queue.Config{})
	if got, want := m2.ResultQueues(), map[string]string{"jobs": "results", "other": "r2"}; !maps.Equal(got, want) {
		t.Fatalf("result queues after a restart: %v, want %v", got, want)
	}
	if got := m2.ResultQueues(); got != nil {
		t.Fatalf("result queues asked again: %v, want none", got)
	}
	mem := newManager(t, queue.Config{})
	if err := mem.KeepResultQueue("jobs", "results"); err != nil || mem.ResultQueues() != nil {
		t.Fatalf("a Manager without a store: %v, %v", err, mem.ResultQueues())
	}
}
