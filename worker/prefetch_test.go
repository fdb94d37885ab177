package worker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// Quick tasks at Concurrency 1 come in batches: the worker prefetches
// what it runs during a get's round trip, so far fewer gets reach the
// master than there are tasks.
func TestPrefetchBatchesQuickTasks(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n = 2000
	put(t, c, "tasks", ints(0, n), wire.PutOptions{})
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) { return task.Value() })
	cfg.Logger = nil
	startWorker(t, cfg)
	if got := len(results(t, c, "results", n, 20*time.Second)); got != n {
		t.Fatalf("%d results, want %d", got, n)
	}
	m := metricCounts(t, url)
	t.Logf("%d tasks: %d gets, %d completes, %d chained", n, m["op/get"], m["op/complete"], m["chained"])
	if m["op/get"] >= n/4 {
		t.Fatalf("the master answered %d gets for %d quick tasks at Concurrency 1: want fewer than %d", m["op/get"], n, n/4)
	}
}

// Slow tasks are not hoarded: of two workers at Concurrency 1, neither
// ever holds a task beyond the one it runs, so that none waits in one
// worker while the other is idle, and they share the tasks.
func TestPrefetchHoardsNoSlowTasks(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n = 10
	put(t, c, "tasks", ints(0, n), wire.PutOptions{})
	var ran [2]atomic.Int32
	for i := range ran {
		cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) {
			time.Sleep(30 * time.Millisecond) // far longer than a round trip on loopback
			ran[i].Add(1)
			return task.Value()
		})
		cfg.Name = fmt.Sprintf("slow%d", i)
		startWorker(t, cfg)
	}
	watch := qmtest.Dial(t, addr, "watch")
	most := 0
	deadline := time.Now().Add(10 * time.Second)
	for stats(t, watch, "tasks").Done < n {
		if time.Now().After(deadline) {
			t.Fatalf("tasks queue %+v after 10s: want %d done", stats(t, watch, "tasks"), n)
		}
		cs, err := watch.Clients(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, ci := range cs {
			if ci.Role == "worker" {
				most = max(most, ci.InFlight)
			}
		}
		time.Sleep(time.Millisecond) // polling pace
	}
	results(t, c, "results", n, 5*time.Second)
	if most > 1 {
		t.Errorf("a worker at Concurrency 1 held %d slow tasks at once: want at most the one it runs", most)
	}
	if a, b := ran[0].Load(), ran[1].Load(); a+b != n || a < n/2-1 || b < n/2-1 {
		t.Errorf("the workers ran %d and %d of %d slow tasks: want them shared", a, b, n)
	}
}

// A worker that drains while tasks wait in its prefetch runs them: no
// task is lost, and each result comes once.
func TestPrefetchDrainRunsWaitingTasks(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n, block = 600, 300
	put(t, c, "tasks", ints(0, n), wire.PutOptions{})
	blocked := make(chan struct{})
	release := make(chan struct{})
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) {
		v, err := task.Value()
		if fmt.Sprint(v) == fmt.Sprint(block) {
			close(blocked)
			<-release
		}
		return v, err
	})
	cfg.Logger = nil
	w := startWorker(t, cfg)
	<-blocked
	// Quick tasks before it: the worker prefetches the ones after, until
	// it holds as many as it wants (no get of its own is in flight then,
	// so that every leased task but the blocked one is waiting in it).
	last := -1
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		st := stats(t, c, "tasks")
		prev := last
		last = st.Leased
		if st.Leased < 2 || st.Leased != prev {
			return fmt.Errorf("tasks queue %+v: want tasks waiting behind the blocked one, and no more taken", st)
		}
		return nil
	})
	waiting := last - 1
	w.cancel()
	close(release)
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	st := stats(t, c, "tasks")
	if st.Leased != 0 {
		t.Fatalf("tasks queue %+v after the drain: want nothing leased", st)
	}
	rs := results(t, c, "results", int(st.Done), 5*time.Second)
	seen := map[uint64]bool{}
	for _, r := range rs {
		if seen[r.TaskID] {
			t.Fatalf("task %d has two results", r.TaskID)
		}
		seen[r.TaskID] = true
	}
	noMoreResults(t, c, "results")
	if int(st.Done) < block+1+waiting || int(st.Done)+st.Ready != n {
		t.Fatalf("tasks queue %+v after a drain with %d tasks waiting behind task %d: want those run, the rest ready", st, waiting, block)
	}
}
