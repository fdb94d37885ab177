package master_test

import (
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestCrashAfterACompletionWithADroppedResult: a completion whose tasks
// have a result to publish and one with none (its reply queue deleted
// since its put) stores every ack: after a crash neither task runs
// again, and the one result is there.
func TestCrashAfterACompletionWithADroppedResult(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxFor(t, 20*time.Second)
	cfg := master.Config{DataDir: dir}
	addr, _ := qmtest.StartMaster(t, cfg)
	producer := qmtest.Dial(t, addr, "producer")
	var ids []uint64
	for _, rq := range []string{"kept", "gone", "kept"} {
		id, err := producer.Put(ctx, "jobs", []any{len(ids)}, wire.PutOptions{ReplyTo: rq})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id...)
	}
	if _, err := producer.Put(ctx, "gone", []any{0}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := producer.Delete(ctx, "gone"); err != nil { // its producer is gone: no one waits for its result
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 3, Timeout: time.Second})
	if err != nil || len(ts) != 3 {
		t.Fatalf("get: %+v, %v", ts, err)
	}
	var done []wire.Completion
	for _, task := range ts {
		done = append(done, wire.Completion{ID: task.ID, Value: []byte{0x01}})
	}
	if err := w.Complete(ctx, "jobs", "", done); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	copyFiles(t, dir, crashed) // as a kill -9 leaves it: the completion is written before it answers

	cfg.DataDir = crashed
	addr, _ = qmtest.StartMaster(t, cfg)
	c := qmtest.Dial(t, addr, "consumer")
	stats, err := c.Stats(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]int{}
	for _, s := range stats {
		ready[s.Queue] = s.Ready + s.Leased + s.Delayed
	}
	if ready["jobs"] != 0 || ready["kept"] != 2 || ready["gone"] != 0 {
		t.Fatalf("after the crash: %v; want no task of jobs, the 2 results in kept, none in gone", ready)
	}
}
