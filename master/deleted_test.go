package master_test

import (
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// The result of a task put before its reply queue was deleted (an
// interrupted map's) goes nowhere, rather than make the queue again; a
// task put after names the queue anew, and its result is stored.
func TestResultsOfADeletedReplyQueue(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	if _, err := c.Put(ctx, "replies", []any{"made"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{1, 2}, wire.PutOptions{ReplyTo: "replies"}); err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	before, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 2, Timeout: time.Second})
	if err != nil || len(before) != 2 {
		t.Fatalf("get: %d tasks, %v", len(before), err)
	}
	if err := c.Delete(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	// One done, one failed for good (its error result too goes nowhere).
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: before[0].ID, Value: before[0].Payload}, {ID: before[1].ID, Error: "boom"}}); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if qs, err := c.Queues(ctx); err != nil || slices.Contains(qs, "replies") {
		t.Fatalf("queues %v, %v: the deleted reply queue was made again", qs, err)
	}
	ids, err := c.Put(ctx, "jobs", []any{3}, wire.PutOptions{ReplyTo: "replies"})
	if err != nil {
		t.Fatal(err)
	}
	after, err := w.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second})
	if err != nil || len(after) != 1 {
		t.Fatalf("get: %d tasks, %v", len(after), err)
	}
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: after[0].ID, Value: after[0].Payload}}); err != nil {
		t.Fatal(err)
	}
	rs, err := c.Get(ctx, "replies", wire.GetOptions{Max: 5, Timeout: time.Second, NoAck: true})
	if err != nil || len(rs) != 1 {
		t.Fatalf("replies: %d items, %v; want the one result of the task put after the deletion", len(rs), err)
	}
	if r, err := wire.DecodeResult(rs[0].Payload); err != nil || r.TaskID != ids[0] {
		t.Fatalf("result %+v, %v; want task %d's", r, err, ids[0])
	}
}
