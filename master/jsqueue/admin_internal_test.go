package jsqueue

import (
	"testing"

	"github.com/qm-dev/qm/master/queue"
)

// Dead tasks moved twice (two requeues at once, or one tried again after
// it failed between storing them and deleting their dead messages) are
// stored once.
func TestRequeueTriedAgainStoresOnce(t *testing.T) {
	q := packQueues(t, Config{Pack: 1})
	dead := queue.DeadLetterName("jobs")
	putN(t, q, dead, 3)
	ds, err := q.open(dead, false)
	if err != nil {
		t.Fatal(err)
	}
	s, err := q.open("jobs", true)
	if err != nil {
		t.Fatal(err)
	}
	var batch []deadMsg
	if err := q.scan(ds, scanWindow, func(seq uint64, t queue.Task, _ bool) bool {
		batch = append(batch, deadMsg{seq, t})
		return true
	}); err != nil || len(batch) != 3 {
		t.Fatalf("scan: %d tasks, %v", len(batch), err)
	}
	// A second requeue read the same dead messages before the first
	// deleted them (or the first is tried again after it failed).
	for try := range 2 {
		if n, err := q.move(ds, s, batch); err != nil || n != 3 {
			t.Fatalf("move, try %d: %d, %v", try+1, n, err)
		}
	}
	st, err := q.Stats("jobs")
	if err != nil || st.Ready != 3 {
		t.Fatalf("after two tries: %+v, %v; want the 3 tasks once", st, err)
	}
}
