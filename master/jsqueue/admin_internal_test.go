package jsqueue

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

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
	if err := q.scanAll(ds, scanWindow, func(seq uint64, t queue.Task, _ bool, at msgTimes) bool {
		batch = append(batch, deadMsg{seq, at.stored, t})
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

// A task dead again, in a dead-letter queue deleted and made anew since
// its last requeue, is requeued again: its dead message has the same
// sequence and task as last time, and a requeue within the dedup window
// took it for the first one's copy and lost it.
func TestRequeueAfterTheDeadLetterQueueIsMadeAnew(t *testing.T) {
	q := packQueues(t, Config{Pack: 1})
	dead := queue.DeadLetterName("jobs")
	task := queue.Task{ID: 7, Payload: []byte("x"), Enqueued: time.Now().Add(-time.Minute), LastError: "boom"}
	for round := range 2 {
		ds, err := q.open(dead, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.publish(context.Background(), []*nats.Msg{movedMsg(ds.subject, task, 3)}); err != nil {
			t.Fatal(err)
		}
		if n, err := q.Requeue("jobs", nil); err != nil || n != 1 {
			t.Fatalf("round %d: requeue: %d, %v", round+1, n, err)
		}
		if err := q.Delete(dead); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := q.Stats("jobs"); err != nil || st.Ready != 2 {
		t.Fatalf("after two requeues: %+v, %v; want the task stored twice, once a requeue", st, err)
	}
}
