package master_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// TestKeptResultQueueTakesErrorsOfTasksDeadAtStart: a master with a data
// directory keeps the result queue its queue's workers named, so that the
// error result of a task out on its last attempt at a crash reaches it
// after the restart though no worker completes anything there; and so
// after a second crash in a row, the result queue known only from the
// data directory.
func TestKeptResultQueueTakesErrorsOfTasksDeadAtStart(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxFor(t, 20*time.Second)
	cfg := master.Config{DataDir: dir, MaxAttempts: 1}
	addr, _ := qmtest.StartMaster(t, cfg)
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	takeOne(ctx, t, w, ids[0])
	if err := w.Complete(ctx, "jobs", "results", []wire.Completion{{ID: ids[0], Value: []byte{0x01}}}); err != nil {
		t.Fatal(err)
	}
	takeOne(ctx, t, w, ids[1])
	written(ctx, t, producer)
	// The master dies with task 2 out on its only attempt: its directory,
	// as a kill -9 leaves it, is copied while it runs.
	crashed := t.TempDir()
	copyFiles(t, dir, crashed)

	cfg.DataDir = crashed
	addr, _ = qmtest.StartMaster(t, cfg)
	c := qmtest.Dial(t, addr, "consumer")
	got := map[uint64]string{}
	waitResults(ctx, t, c, "results", got, map[uint64]bool{ids[0]: false, ids[1]: true})
	// Again, with task 3 out on its only attempt: this master learned
	// the result queue from the data directory alone.
	w = qmtest.Dial(t, addr, "worker")
	takeOne(ctx, t, w, ids[2])
	written(ctx, t, c)
	again := t.TempDir()
	copyFiles(t, crashed, again)

	cfg.DataDir = again
	addr, _ = qmtest.StartMaster(t, cfg)
	c = qmtest.Dial(t, addr, "consumer")
	waitResults(ctx, t, c, "results", got, map[uint64]bool{ids[0]: false, ids[1]: true, ids[2]: true})
}

// TestDeletedQueueForgetsItsResultQueue: the result queue of a deleted
// queue is forgotten, in the data directory too: after a crash, the error
// result of a task of the queue made anew by that name waits for its own
// workers' result queue rather than going to the old one.
func TestDeletedQueueForgetsItsResultQueue(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxFor(t, 20*time.Second)
	cfg := master.Config{DataDir: dir, MaxAttempts: 1}
	addr, _ := qmtest.StartMaster(t, cfg)
	producer := qmtest.Dial(t, addr, "producer")
	old, err := producer.Put(ctx, "jobs", []any{1}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	takeOne(ctx, t, w, old[0])
	if err := w.Complete(ctx, "jobs", "results", []wire.Completion{{ID: old[0], Value: []byte{0x01}}}); err != nil {
		t.Fatal(err)
	}
	if err := producer.Delete(ctx, "jobs"); err != nil {
		t.Fatal(err)
	}
	ids, err := producer.Put(ctx, "jobs", []any{2, 3}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	takeOne(ctx, t, w, ids[0])
	written(ctx, t, producer)
	crashed := t.TempDir()
	copyFiles(t, dir, crashed)

	cfg.DataDir = crashed
	addr, _ = qmtest.StartMaster(t, cfg)
	w = qmtest.Dial(t, addr, "worker")
	takeOne(ctx, t, w, ids[1])
	if err := w.Complete(ctx, "jobs", "results2", []wire.Completion{{ID: ids[1], Value: []byte{0x02}}}); err != nil {
		t.Fatal(err)
	}
	waitResults(ctx, t, w, "results2", map[uint64]string{}, map[uint64]bool{ids[0]: true, ids[1]: false})
	rs, err := w.Peek(ctx, "results", 10)
	if err != nil || len(rs) != 1 {
		t.Fatalf("the old result queue: %d results, %v; want task %d's alone", len(rs), err, old[0])
	}
}

// takeOne gets task id from jobs, on its (only) attempt.
func takeOne(ctx context.Context, t *testing.T, w *wire.Client, id uint64) {
	t.Helper()
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 1, Timeout: time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != id {
		t.Fatalf("get: %+v, %v; want task %d", ts, err, id)
	}
}

// written returns once what the master appended to its log is written
// (a get's record of an attempt is not waited for): a put waits for its
// own record, and the log is written in order.
func written(ctx context.Context, t *testing.T, c *wire.Client) {
	t.Helper()
	if _, err := c.Put(ctx, "written", []any{0}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitResults takes results from queue rq into got (task ID to error)
// until it holds one for each task of want, an error where want says so,
// and nothing else.
func waitResults(ctx context.Context, t *testing.T, c *wire.Client, rq string, got map[uint64]string, want map[uint64]bool) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		rs, err := c.Get(ctx, rq, wire.GetOptions{Max: 10, NoAck: true})
		if err != nil {
			return err
		}
		for _, r := range rs {
			res, err := wire.DecodeResult(r.Payload)
			if err != nil {
				return err
			}
			got[res.TaskID] = res.Error
		}
		if len(got) < len(want) {
			return fmt.Errorf("results in %s: %v; want those of tasks %v", rq, got, want)
		}
		return nil
	})
	for id, failed := range want {
		if e, ok := got[id]; !ok || (e != "") != failed {
			t.Errorf("task %d's result in %s: %q (there: %v); want an error: %v", id, rq, e, ok, failed)
		}
	}
	if len(got) != len(want) {
		t.Errorf("results in %s: tasks %v; want %v", rq, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// countingKeeper is the queues of a master, counting the result queues
// it is asked to keep.
type countingKeeper struct {
	*queue.Manager
	mu    sync.Mutex
	calls int
	kept  map[string]string
}

func (k *countingKeeper) KeepsResultQueues() bool { return true }

func (k *countingKeeper) KeepResultQueue(q, rq string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	k.kept[q] = rq
	return nil
}

// TestChangedResultQueueKeptOnceASecond: workers of one queue that name
// two result queues by turns do not have the map written at every
// completion (a file written and fsynced), only its last state, within a
// second.
func TestChangedResultQueueKeptOnceASecond(t *testing.T) {
	ctx := ctxFor(t, 20*time.Second)
	k := &countingKeeper{kept: map[string]string{}}
	addr, _ := qmtest.StartMaster(t, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		m, err := queue.New(qc)
		k.Manager = m
		return k, err
	}})
	c := qmtest.Dial(t, addr, "worker")
	const n = 100
	if _, err := c.Put(ctx, "jobs", make([]any, n), wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "jobs", wire.GetOptions{Max: n, Timeout: time.Second})
	if err != nil || len(ts) != n {
		t.Fatalf("get: %d tasks, %v", len(ts), err)
	}
	start := time.Now()
	rq := ""
	for i, task := range ts {
		rq = fmt.Sprint("results-", i%2)
		if err := c.Complete(ctx, "jobs", rq, []wire.Completion{{ID: task.ID, Value: []byte{0xc0}}}); err != nil {
			t.Fatal(err)
		}
	}
	// The first is kept at once; the changes after it once a second.
	k.mu.Lock()
	calls, most := k.calls, 3+int(time.Since(start)/time.Second)
	k.mu.Unlock()
	if calls > most {
		t.Fatalf("the result queue was kept %d times for %d completions naming two by turns; want at most %d", calls, n, most)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.kept["jobs"] != rq {
			return fmt.Errorf("kept %q, want the last named, %q", k.kept["jobs"], rq)
		}
		return nil
	})
}

// holdingKeeper is countingKeeper whose acks wait for hold, if set.
type holdingKeeper struct {
	*countingKeeper
	holding chan struct{} // closed once an ack waits
	hold    chan struct{}
}

func (k *holdingKeeper) Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error) {
	if k.hold != nil {
		close(k.holding)
		<-k.hold
	}
	return k.Manager.Ack(req, dst)
}

// TestResultQueueChangedAsTheMasterStopsIsKept: a completion that changes
// its queue's result queue while the master shuts down has it kept.
func TestResultQueueChangedAsTheMasterStopsIsKept(t *testing.T) {
	ctx := ctxFor(t, 20*time.Second)
	k := &holdingKeeper{countingKeeper: &countingKeeper{kept: map[string]string{}}}
	addr, srv := qmtest.StartMaster(t, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		m, err := queue.New(qc)
		k.Manager = m
		return k, err
	}})
	c := qmtest.Dial(t, addr, "worker")
	if _, err := c.Put(ctx, "jobs", []any{1, 2}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "jobs", wire.GetOptions{Max: 2, Timeout: time.Second})
	if err != nil || len(ts) != 2 {
		t.Fatalf("get: %d tasks, %v", len(ts), err)
	}
	if err := c.Complete(ctx, "jobs", "results-a", []wire.Completion{{ID: ts[0].ID, Value: []byte{0xc0}}}); err != nil {
		t.Fatal(err)
	}
	k.holding, k.hold = make(chan struct{}), make(chan struct{})
	completed := make(chan error, 1)
	go func() {
		completed <- c.Complete(ctx, "jobs", "results-b", []wire.Completion{{ID: ts[1].ID, Value: []byte{0xc0}}})
	}()
	<-k.holding
	// A get blocked on an empty queue returns once the shutdown has
	// begun: then the completion goes on.
	waiting := qmtest.Dial(t, addr, "consumer")
	blocked := make(chan error, 1)
	go func() {
		_, err := waiting.Get(ctx, "empty", wire.GetOptions{Max: 1, Timeout: 10 * time.Second})
		blocked <- err
	}()
	qmtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		st, err := c.Stats(ctx, "empty")
		if err != nil || len(st) != 1 || st[0].Consumers != 1 {
			return fmt.Errorf("stats %+v, %v: want one get waiting", st, err)
		}
		return nil
	})
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Shutdown(ctx) }()
	<-blocked
	close(k.hold)
	if err := <-completed; err != nil {
		t.Fatal(err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kept["jobs"] != "results-b" {
		t.Fatalf("kept %q after the shutdown, want results-b", k.kept["jobs"])
	}
}
