package queue_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// readyPayloads returns the payloads of the ready tasks of q, in order.
func readyPayloads(t *testing.T, m *queue.Manager, q string) []string {
	t.Helper()
	ts, err := m.Peek(q, 1000)
	if err != nil {
		t.Fatalf("Peek(%q): %v", q, err)
	}
	out := make([]string, len(ts))
	for i, task := range ts {
		out[i] = string(task.Payload)
	}
	return out
}

// kill dead-letters every ready task of q (MaxAttempts must be 1), with
// errText as their last error.
func kill(t *testing.T, m *queue.Manager, q, errText string) {
	t.Helper()
	ts, err := m.Get(context.Background(), queue.GetRequest{Queue: q, Max: 1000, Owner: 99}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range ts {
		if err := m.Nack(queue.NackRequest{Queue: q, Owner: 99, ID: task.ID, Error: errText}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPause(t *testing.T) {
	m := newManager(t, queue.Config{})
	ctx := context.Background()
	mustPut(t, m, "q", "a", "b")
	if err := m.SetPaused("q", true); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Stats("q"); !st.Paused || st.Ready != 2 {
		t.Fatalf("stats of a paused queue: %+v", st)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if ts, err := m.Get(short, queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil); err != nil || len(ts) != 0 {
		t.Fatalf("Get from a paused queue: %v %v", ts, err)
	}
	mustPut(t, m, "q", "c") // puts go in
	got := make(chan []queue.Task, 1)
	go func() {
		ts, _ := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 5, Owner: 1}, nil)
		got <- ts
	}()
	select {
	case ts := <-got:
		t.Fatalf("a paused queue handed out %d tasks", len(ts))
	case <-time.After(50 * time.Millisecond):
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPaused("q", false); err != nil {
		t.Fatal(err)
	}
	select {
	case ts := <-got:
		if len(ts) != 3 {
			t.Fatalf("after resume, the waiting Get got %d tasks, want 3", len(ts))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("resume did not wake the waiting Get")
	}
	if err := m.SetPaused("nope", false); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("resume of an unknown queue: %v", err)
	}
	if err := m.SetPaused("new", true); err != nil { // pausing creates
		t.Errorf("pause of a new queue: %v", err)
	}
}

func TestRequeue(t *testing.T) {
	m := newManager(t, queue.Config{MaxAttempts: 1})
	ids := mustPut(t, m, "q", "a", "b", "c", "d")
	kill(t, m, "q", "boom")
	mustPut(t, m, "q", "e")
	if st, _ := m.Stats("q"); st.Dead != 4 || st.Ready != 1 {
		t.Fatalf("before: %+v", st)
	}
	n, err := m.Requeue("q", []uint64{ids[2], ids[0], 12345})
	var te *queue.TaskError
	if n != 2 || !errors.Is(err, queue.ErrNoSuchTask) || !errors.As(err, &te) || te.ID != 12345 {
		t.Fatalf("Requeue: %d, %v", n, err)
	}
	if got, want := readyPayloads(t, m, "q"), []string{"e", "a", "c"}; !slices.Equal(got, want) {
		t.Errorf("q after requeue: %q, want %q", got, want)
	}
	if got, want := readyPayloads(t, m, "q.dead"), []string{"b", "d"}; !slices.Equal(got, want) {
		t.Errorf("q.dead after requeue: %q, want %q", got, want)
	}
	ts, _ := m.Peek("q", 3)
	if ts[1].Attempts != 0 || ts[1].LastError != "boom" {
		t.Errorf("a requeued task: attempts %d, last error %q", ts[1].Attempts, ts[1].LastError)
	}
	if n, err := m.Requeue("q", nil); n != 2 || err != nil {
		t.Fatalf("Requeue all: %d, %v", n, err)
	}
	if st, _ := m.Stats("q"); st.Dead != 0 || st.Ready != 5 {
		t.Fatalf("after: %+v", st)
	}
	if n, err := m.Requeue("other", nil); n != 0 || err != nil {
		t.Errorf("Requeue of a queue without dead tasks: %d, %v", n, err)
	}
	if _, err := m.Requeue("q.dead", nil); err == nil {
		t.Error("Requeue named a dead-letter queue")
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// A requeue wakes a waiting Get.
func TestRequeueWakesGet(t *testing.T) {
	m := newManager(t, queue.Config{MaxAttempts: 1})
	mustPut(t, m, "q", "a")
	kill(t, m, "q", "boom")
	got := make(chan []queue.Task, 1)
	go func() {
		ts, _ := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil)
		got <- ts
	}()
	time.Sleep(20 * time.Millisecond)
	if n, err := m.Requeue("q", nil); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	select {
	case ts := <-got:
		if len(ts) != 1 || string(ts[0].Payload) != "a" || ts[0].Attempts != 1 {
			t.Fatalf("got %+v", ts)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the requeued task did not reach the waiting Get")
	}
}

func TestDrop(t *testing.T) {
	m := newManager(t, queue.Config{})
	ids := mustPut(t, m, "q", "a", "b", "c", "d", "e")
	n, err := m.Drop("q", []uint64{ids[1], ids[3], ids[1], 999})
	if n != 2 || !errors.Is(err, queue.ErrNoSuchTask) {
		t.Fatalf("Drop: %d, %v", n, err)
	}
	if got, want := readyPayloads(t, m, "q"), []string{"a", "c", "e"}; !slices.Equal(got, want) {
		t.Errorf("after Drop: %q, want %q", got, want)
	}
	if _, err := m.Drop("nope", []uint64{1}); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("Drop from an unknown queue: %v", err)
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

func TestLeases(t *testing.T) {
	clock := newFakeClock()
	m := newManager(t, queue.Config{Now: clock.Now})
	mustPut(t, m, "q", "a", "b")
	mustPut(t, m, "r", "c")
	start := clock.Now()
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Lease: time.Minute, Owner: 7}, nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "r", Max: 1, Lease: time.Minute, Owner: 7}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Owner: 8, NoAck: true}, nil); err != nil { // no lease
		t.Fatal(err)
	}
	all := m.Leases()
	if len(all) != 1 || len(all[7]) != 2 {
		t.Fatalf("Leases: %+v", all)
	}
	l := all[7]
	if l[0].Queue != "q" || !l[0].Since.Equal(start) || !l[0].Deadline.Equal(start.Add(time.Minute)) || l[0].Attempts != 1 {
		t.Errorf("first lease: %+v", l[0])
	}
	if l[1].Queue != "r" || !l[1].Since.Equal(start.Add(time.Second)) {
		t.Errorf("second lease: %+v", l[1])
	}
}

// TestLeasesAndGiveBackKeepTheOrderHandedOut: the tasks of one get, which
// share their lease's start, are listed in the order handed out, and
// GiveBack puts them back in it, in front, their attempts unused.
func TestLeasesAndGiveBackKeepTheOrderHandedOut(t *testing.T) {
	m := newManager(t, queue.Config{})
	ids := mustPut(t, m, "q", "a", "b", "c", "d", "e")
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 4, Owner: 7}, nil); err != nil {
		t.Fatal(err)
	}
	var listed []uint64
	for _, l := range m.Leases()[7] {
		listed = append(listed, l.ID)
	}
	if !slices.Equal(listed, ids[:4]) {
		t.Fatalf("Leases lists %v, want %v", listed, ids[:4])
	}
	if n := m.GiveBack(7); n != 4 {
		t.Fatalf("GiveBack = %d, want 4", n)
	}
	ts, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 5, Owner: 8}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for _, task := range ts {
		got = append(got, task.ID)
		if task.Attempts != 1 {
			t.Errorf("task %d at attempt %d after GiveBack, want 1", task.ID, task.Attempts)
		}
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("after GiveBack, got %v, want %v", got, ids)
	}
	if err := m.CheckInvariants(); err != nil {
		t.Fatal(err)
	}
}

// TestDurableRequeueDrop: requeued and dropped tasks stay so after a
// restart.
func TestDurableRequeueDrop(t *testing.T) {
	dir := t.TempDir()
	cfg := queue.Config{MaxAttempts: 1}
	m, stop := openDurable(t, dir, cfg)
	ids := mustPut(t, m, "q", "a", "b", "c")
	kill(t, m, "q", "boom")
	if n, err := m.Requeue("q", []uint64{ids[1]}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := m.Drop("q.dead", []uint64{ids[2]}); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	stop()

	m, _ = openDurable(t, dir, cfg)
	if got, want := readyPayloads(t, m, "q"), []string{"b"}; !slices.Equal(got, want) {
		t.Errorf("q after restart: %q, want %q", got, want)
	}
	if got, want := readyPayloads(t, m, "q.dead"), []string{"a"}; !slices.Equal(got, want) {
		t.Errorf("q.dead after restart: %q, want %q", got, want)
	}
	ts, _ := m.Peek("q", 1)
	if len(ts) != 1 || ts[0].Attempts != 0 || ts[0].LastError != "boom" {
		t.Errorf("requeued task after restart: %+v", ts)
	}
}
