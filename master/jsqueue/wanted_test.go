package jsqueue_test

import (
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// TestHeldTasksReachGetsThatCannotWait: tasks one gateway holds from a
// pack its client took one task of reach another gateway's gets that may
// not wait (a get with no timeout, Python's get_nowait), polled: such a
// get leaves no pull request at JetStream for the holding gateway to see,
// and before, they got none until that gateway's own clients took them.
func TestHeldTasksReachGetsThatCannotWait(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{Pack: 32, HoldFor: 100 * time.Millisecond})
	b := newQueues(t, node, jsqueue.Config{Pack: 32, HoldFor: 100 * time.Millisecond})
	reaping(t, a)
	reaping(t, b)
	put(t, a, "jobs", "1", "2", "3", "4")
	if ts := get(t, a, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 {
		t.Fatalf("took %v through a, want one task", payloads(ts))
	}
	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		ts, err := b.Get(queue.NoWait, queue.GetRequest{Queue: "jobs", Max: 10, Owner: 2, Lease: time.Minute}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, payloads(ts)...)
		time.Sleep(20 * time.Millisecond) // a client polling
	}
	if !slices.Equal(got, []string{"2", "3", "4"}) {
		t.Fatalf("gets through b that may not wait took %v in 10 s, want the 3 tasks a holds", got)
	}
}
