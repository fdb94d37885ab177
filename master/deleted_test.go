package master_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// A queue deleted with its tasks (a map that ended) cancels the tasks put
// before the delete that reply to it: a get drops them and hands out the
// tasks behind, within its wait, whether it may wait or not. Tasks put
// after the delete, or replying elsewhere, run; so do those a plain
// delete leaves, and a task already handed out finishes.
func TestDeleteCancelsTasksReplyingToIt(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	w := qmtest.Dial(t, addr, "worker")
	put := func(payload any, replyTo string) uint64 {
		t.Helper()
		ids, err := c.Put(ctx, "jobs", []any{payload}, wire.PutOptions{ReplyTo: replyTo})
		if err != nil {
			t.Fatal(err)
		}
		return ids[0]
	}
	for _, q := range []string{"replies", "plain"} {
		if _, err := c.Put(ctx, q, []any{"made"}, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	running := put("running", "replies")
	for i := range 4 {
		put(i, "replies")
	}
	kept := put("kept", "plain")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != running {
		t.Fatalf("get: %+v, %v; want the first task", ts, err)
	}
	if _, err := c.DeleteCancelling(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	later := put("later", "replies")
	elsewhere := put("elsewhere", "")

	// No wait: the four cancelled tasks are passed over at once.
	first, err := w.Get(ctx, "jobs", wire.GetOptions{})
	if err != nil || len(first) != 1 || first[0].ID != kept {
		t.Fatalf("get without a wait: %+v, %v; want task %d, behind the cancelled ones", first, err, kept)
	}
	rest, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: time.Second})
	if err != nil || len(rest) != 2 || rest[0].ID != later || rest[1].ID != elsewhere {
		t.Fatalf("get: %+v, %v; want tasks %d and %d", rest, err, later, elsewhere)
	}
	var done []wire.Completion
	for _, task := range append(append(ts, first...), rest...) {
		done = append(done, wire.Completion{ID: task.ID, Value: task.Payload})
	}
	if err := w.Complete(ctx, "jobs", "", done); err != nil {
		t.Fatalf("complete: %v", err)
	}
	nothingLeft(t, c, "jobs")
	if qs, err := c.Queues(ctx); err != nil || !slices.Contains(qs, "replies") {
		t.Fatalf("queues %v, %v; want replies made again by the result of the task put after its deletion", qs, err)
	}
}

// A get whose ready tasks are all cancelled waits its time for others,
// rather than answer empty at once. Tasks are cancelled by the delete of
// a reply queue that was never made, too (a map stopped before it).
func TestGetOfCancelledTasksWaitsItsTime(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	if _, err := c.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{ReplyTo: "replies"}); err != nil {
		t.Fatal(err)
	}
	// The reply queue was never made: its tasks are cancelled all the same.
	if cancelled, err := c.DeleteCancelling(ctx, "replies"); !cancelled || !errors.Is(err, wire.ErrUnknownQueue) {
		t.Fatalf("delete: cancelled %v, %v; want true, %v", cancelled, err, wire.ErrUnknownQueue)
	}
	w := qmtest.Dial(t, addr, "worker")
	const wait = 300 * time.Millisecond
	start := time.Now()
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 2, Timeout: wait})
	if took := time.Since(start); err != nil || len(ts) != 0 || took < wait*9/10 {
		t.Fatalf("get: %+v, %v after %v; want none after about %v", ts, err, took, wait)
	}
	nothingLeft(t, c, "jobs")
}

// nothingLeft waits until queue q holds no task, ready, leased or dead:
// cancelled tasks are acked in the background.
func nothingLeft(t *testing.T, c *wire.Client, q string) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st, err := c.Stats(context.Background(), q)
		if err != nil || len(st) != 1 || st[0].Ready != 0 || st[0].Leased != 0 || st[0].Dead != 0 {
			return fmt.Errorf("stats %+v, %v; want nothing left", st, err)
		}
		return nil
	})
}

// A plain delete after one that cancelled leaves the tasks it cancelled
// cancelled; dead-letter queues keep their tasks, each the record of a
// failure.
func TestCancelledStaysCancelled(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	w := qmtest.Dial(t, addr, "worker")
	if _, err := c.Put(ctx, "jobs", []any{"fails"}, wire.PutOptions{ReplyTo: "replies"}); err != nil {
		t.Fatal(err)
	}
	failing, err := w.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second})
	if err != nil || len(failing) != 1 {
		t.Fatalf("get: %+v, %v", failing, err)
	}
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: failing[0].ID, Error: "boom"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{ReplyTo: "replies"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteCancelling(ctx, "replies"); err != nil { // made by the dead task's error result
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "replies", []any{"made again"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	if ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 200 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Fatalf("get after a plain delete: %+v, %v; want the cancelled tasks to stay cancelled", ts, err)
	}
	dead, err := c.Get(ctx, "jobs.dead", wire.GetOptions{Max: 10, NoAck: true})
	if err != nil || len(dead) != 1 || dead[0].ID != failing[0].ID {
		t.Fatalf("dead-letter queue: %+v, %v; want the dead task kept", dead, err)
	}
}

// TestDeletionsKeptAcrossARestart: a master with a data directory keeps
// its deletions across a restart: the tasks a deletion cancelled stay
// cancelled, and the result of a task put before its reply queue's plain
// deletion goes nowhere, rather than make the queue again for no one.
func TestDeletionsKeptAcrossARestart(t *testing.T) {
	dir := t.TempDir()
	addr, srv := qmtest.StartMaster(t, master.Config{DataDir: dir})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	if _, err := c.Put(ctx, "replies", []any{"made"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	put := func(c *wire.Client, payload any, replyTo string) uint64 {
		t.Helper()
		ids, err := c.Put(ctx, "jobs", []any{payload}, wire.PutOptions{ReplyTo: replyTo})
		if err != nil {
			t.Fatal(err)
		}
		return ids[0]
	}
	stale := put(c, "stale", "replies")
	for i := range 3 {
		put(c, i, "map-1") // cancelled below
	}
	if err := c.Delete(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteCancelling(ctx, "map-1"); !errors.Is(err, wire.ErrUnknownQueue) {
		t.Fatalf("delete map-1: %v, want it unknown (never made), and its tasks cancelled", err)
	}
	after := put(c, "after", "map-1")
	c.Close()
	srv.Close()

	addr, _ = qmtest.StartMaster(t, master.Config{DataDir: dir})
	c = qmtest.Dial(t, addr, "producer")
	w := qmtest.Dial(t, addr, "worker")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 200 * time.Millisecond})
	var got []uint64
	for _, task := range ts {
		got = append(got, task.ID)
	}
	if err != nil || !slices.Equal(got, []uint64{stale, after}) {
		t.Fatalf("get after the restart: %v, %v; want tasks %d and %d, the cancelled ones passed over", got, err, stale, after)
	}
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: ts[0].ID, Value: ts[0].Payload}, {ID: ts[1].ID, Value: ts[1].Payload}}); err != nil {
		t.Fatal(err)
	}
	if qs, err := c.Queues(ctx); err != nil || slices.Contains(qs, "replies") {
		t.Errorf("queues %v, %v: the deleted reply queue was made again after the restart", qs, err)
	}
	rs, err := c.Get(ctx, "map-1", wire.GetOptions{Max: 5, Timeout: time.Second, NoAck: true})
	if err != nil || len(rs) != 1 {
		t.Fatalf("map-1: %d items, %v; want the result of the task put after its deletion", len(rs), err)
	}
	if r, err := wire.DecodeResult(rs[0].Payload); err != nil || r.TaskID != after {
		t.Fatalf("result %+v, %v; want task %d's", r, err, after)
	}
}

// A delete of a name no queue can have is refused, and remembers nothing:
// it would be kept, in memory and on disk, for a day.
func TestDeleteOfABadNameIsRefused(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	for _, name := range []string{"", strings.Repeat("x", 100<<10), "a\x00b"} {
		if _, err := c.DeleteCancelling(ctx, name); !errors.Is(err, wire.ErrBadRequest) {
			t.Errorf("delete of a %d-byte bad name: %v, want a bad request", len(name), err)
		}
	}
}
