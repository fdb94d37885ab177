package worker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// A worker cancelled while its get (carrying results) waits at the master
// loses no result: the results were delivered with the get, or are sent
// again, and none twice.
func TestDrainDuringChainedGet(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"a"}, wire.PutOptions{})
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) { return "done", nil })
	cfg.GetTimeout = 10 * time.Second // the chained get waits at the master until cancelled
	w := startWorker(t, cfg)
	r := results(t, c, "results", 1, 5*time.Second)[0]
	if r.TaskID != ids[0] || value(t, r) != "done" {
		t.Fatalf("result %+v, want task %d done", r, ids[0])
	}
	begin := time.Now()
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Run took %s to return after cancel: the blocked get should end at once", took)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Ready != 0 || st.Leased != 0 || st.Done != 1 {
			return fmt.Errorf("tasks queue %+v: want 1 done, nothing else", st)
		}
		return nil
	})
	if more, err := c.Get(context.Background(), "results", wire.GetOptions{Max: 10, NoAck: true}); err != nil || len(more) != 0 {
		t.Fatalf("results beyond the one: %v, %v", more, err)
	}
}
