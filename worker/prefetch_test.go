package worker_test

import (
	"context"
	"fmt"
	"sync"
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
	most := mostHeldUntilDone(t, addr, n, 10*time.Second)
	results(t, c, "results", n, 5*time.Second)
	if most > 1 {
		t.Errorf("a worker at Concurrency 1 held %d slow tasks at once: want at most the one it runs", most)
	}
	if a, b := ran[0].Load(), ran[1].Load(); a+b != n || a < n/2-1 || b < n/2-1 {
		t.Errorf("the workers ran %d and %d of %d slow tasks: want them shared", a, b, n)
	}
}

// Tasks a worker took beyond its one slot go back to the master once the
// task it runs stands still (the prefetch bet on quick tasks, and lost),
// for any worker to take; the drain then ends with none lost and each
// result once. (Before, they waited in the worker until the stuck task
// ended, and the drain ran them all first.)
func TestPrefetchGivesBackWaitingTasks(t *testing.T) {
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
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before the worker's, which waits for it
	<-blocked
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Leased != 1 || st.Done != block || st.Ready != n-block-1 {
			return fmt.Errorf("tasks queue %+v: want the blocked task alone leased, the ones after it ready", st)
		}
		return nil
	})
	w.cancel()
	unblock()
	if err := w.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	st := stats(t, c, "tasks")
	if st.Leased != 0 || st.Done != block+1 || st.Ready != n-block-1 {
		t.Fatalf("tasks queue %+v after the drain: want %d done, the rest ready", st, block+1)
	}
	rs := results(t, c, "results", block+1, 5*time.Second)
	seen := map[uint64]bool{}
	for _, r := range rs {
		if seen[r.TaskID] {
			t.Fatalf("task %d has two results", r.TaskID)
		}
		seen[r.TaskID] = true
	}
	noMoreResults(t, c, "results")
}

// Slow tasks that come after a burst of quick ones, which the prefetch
// took betting they were quick too, are given back once the worker stands
// still on the first of them, and the two workers share them (before, the
// worker that took them ran them one after another while the other idled).
func TestSlowTasksAfterQuickOnesAreShared(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const quick, slow = 300, 12
	var ran [2]atomic.Int32
	start := make(chan struct{})
	for i := range ran {
		cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) {
			v, err := task.Value()
			if v == "slow" {
				time.Sleep(100 * time.Millisecond) // far longer than a round trip
				ran[i].Add(1)
			}
			return v, err
		})
		cfg.Name = fmt.Sprintf("w%d", i)
		cfg.Logger = nil
		if i == 1 {
			<-start
		}
		startWorker(t, cfg)
		if i == 0 {
			// The first worker alone takes the burst, and with its end the
			// slow tasks its prefetch has room for.
			items := ints(0, quick)
			for range slow {
				items = append(items, "slow")
			}
			put(t, c, "tasks", items, wire.PutOptions{})
			close(start)
		}
	}
	results(t, c, "results", quick+slow, 20*time.Second)
	if a, b := ran[0].Load(), ran[1].Load(); a+b != slow || a < 3 || b < 3 {
		t.Errorf("the workers ran %d and %d of the %d slow tasks: want them shared", a, b, slow)
	}
}
