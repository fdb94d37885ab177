package queue_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

func TestUnknownQueue(t *testing.T) {
	m := newManager(t, queue.Config{})
	tests := []struct {
		name string
		call func() error
	}{
		{"Stats", func() error { _, err := m.Stats("nope"); return err }},
		{"Peek", func() error { _, err := m.Peek("nope", 1); return err }},
		{"Purge", func() error { _, err := m.Purge("nope"); return err }},
		{"Delete", func() error { return m.Delete("nope") }},
		{"Ack", func() error {
			_, err := m.Ack(queue.AckRequest{Queue: "nope", Owner: 1, IDs: []uint64{1}}, nil)
			return err
		}},
		{"Nack", func() error { return m.Nack(queue.NackRequest{Queue: "nope", Owner: 1, ID: 1, Error: "x"}) }},
		{"Extend", func() error { return m.Extend("nope", 1, []uint64{1}, 0) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, queue.ErrUnknownQueue) {
				t.Fatalf("%s = %v, want ErrUnknownQueue", tt.name, err)
			}
		})
	}
	if qs := queueNames(m); len(qs) != 0 {
		t.Fatalf("lookups created queues: %v", qs)
	}
}

func TestStats(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now, MaxLen: 10})
	mustPut(t, m, "q", "a", "b", "c", "d")
	clk.Advance(3 * time.Second)
	mustPut(t, m, "q", "e")
	ts := mustGet(t, m, "q", 2, 1)
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[0].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.Nack(queue.NackRequest{Queue: "q", Owner: 1, ID: ts[1].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	mustGet(t, m, "q", 1, 2)
	clk.Advance(2 * time.Second)
	got := mustStats(t, m, "q")
	want := queue.Stats{
		Queue: "q", Ready: 3, Leased: 1, Done: 1, MaxLen: 10,
		OldestReady: 5 * time.Second,
		Puts:        5, Gets: 3, Acks: 1, Nacks: 1,
		Policy: queue.Policy{MaxAttempts: queue.DefaultMaxAttempts},
	}
	if got != want {
		t.Fatalf("Stats =\n%+v, want\n%+v", got, want)
	}
}

func TestQueuesPeekPurgeDelete(t *testing.T) {
	m := newManager(t, queue.Config{})
	for _, q := range []string{"b", "a", "c"} {
		mustPut(t, m, q, q+"1", q+"2", q+"3")
	}
	if got := queueNames(m); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("Queues = %v", got)
	}
	all := allStats(m)
	if len(all) != 3 || all[0].Queue != "a" || all[2].Queue != "c" || all[1].Ready != 3 {
		t.Fatalf("AllStats = %+v", all)
	}

	peek, err := m.Peek("a", 2)
	if err != nil || !slices.Equal(payloads(peek), []string{"a1", "a2"}) || peek[0].Attempts != 0 {
		t.Fatalf("Peek = %+v, %v", peek, err)
	}
	if peek, _ := m.Peek("a", 10); len(peek) != 3 {
		t.Fatalf("Peek past the end = %d tasks", len(peek))
	}
	if _, err := m.Peek("a", -1); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("Peek(-1) = %v", err)
	}

	leased := mustGet(t, m, "b", 1, 1)
	n, err := m.Purge("b")
	if err != nil || n != 2 {
		t.Fatalf("Purge = %d, %v; want 2", n, err)
	}
	if s := mustStats(t, m, "b"); s.Ready != 0 || s.Leased != 1 {
		t.Fatalf("after Purge stats = %+v", s)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "b", Owner: 1, IDs: []uint64{leased[0].ID}}, nil); err != nil {
		t.Fatalf("Ack of a leased task after Purge: %v", err)
	}

	mustGet(t, m, "c", 1, 1)
	if err := m.Delete("c"); err != nil {
		t.Fatal(err)
	}
	if got := queueNames(m); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("Queues after Delete = %v", got)
	}
	if m.LeasedBy(1) != 0 {
		t.Fatal("leases of a deleted queue still counted")
	}
	if _, err := m.Stats("c"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Fatalf("Stats of a deleted queue = %v", err)
	}
	// Putting again creates a new, empty queue.
	mustPut(t, m, "c", "new")
	if got := payloads(mustGet(t, m, "c", 5, 1)); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("recreated queue holds %v", got)
	}
}

// A Put waiting on a full queue that is deleted lands in the new queue.
func TestDeleteWakesPutters(t *testing.T) {
	m := newManager(t, queue.Config{MaxLen: 1})
	mustPut(t, m, "q", "old")
	done := make(chan error, 1)
	go func() {
		_, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("new")})
		done <- err
	}()
	waitProducers(t, m, "q", 1)
	if err := m.Delete("q"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := payloads(mustGet(t, m, "q", 5, 1)); !slices.Equal(got, []string{"new"}) {
		t.Fatalf("queue holds %v", got)
	}
}

// queueNames and allStats are the Manager's Queues and AllStats, which
// never fail (their error is a cluster's, in master.Queues).
func queueNames(m *queue.Manager) []string {
	names, _ := m.Queues()
	return names
}

func allStats(m *queue.Manager) []queue.Stats {
	all, _ := m.AllStats()
	return all
}
