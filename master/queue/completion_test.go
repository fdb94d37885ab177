package queue_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

// TestCompletionStoredWhole: a task's result and its ack reach the store
// in one append, so a crash anywhere in its write leaves the task to run
// again with no result stored, or its result with the task done: never
// both, which would give the task a second result when it ran again.
// The crash is every cut of the log's last segment.
func TestCompletionStoredWhole(t *testing.T) {
	dir := t.TempDir()
	m, stop := openDurable(t, dir, queue.Config{})
	ctx := context.Background()
	mustPut(t, m, "tasks", "job")
	ts, err := m.Get(ctx, queue.GetRequest{Queue: "tasks", Max: 1, Lease: time.Minute, Owner: 1}, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	_, err = m.Ack(queue.AckRequest{Queue: "tasks", Owner: 1, IDs: []uint64{ts[0].ID}, Publish: func(acked []queue.Task) ([]queue.Task, error) {
		_, err := m.Put(ctx, queue.PutRequest{Queue: "results", Items: items("its result"), Results: true,
			ResultsOf: queue.ResultsOf{Queue: "tasks", Tasks: acked}})
		return nil, err
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop()

	segs, err := filepath.Glob(filepath.Join(dir, "log-*"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	log, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	put := false // the put of the task is whole
	for cut := 1; cut <= len(log); cut++ {
		cdir := t.TempDir()
		if err := os.WriteFile(filepath.Join(cdir, filepath.Base(segs[0])), log[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		m, stop := openDurable(t, cdir, queue.Config{})
		task, result := ready(m, "tasks"), ready(m, "results")
		stop()
		put = put || task == 1
		switch {
		case task+result > 1:
			t.Fatalf("log cut at byte %d of %d: the task is ready to run again, and its result is stored", cut, len(log))
		case put && task+result == 0:
			t.Fatalf("log cut at byte %d of %d: the task is gone with no result", cut, len(log))
		case cut == len(log) && result != 1:
			t.Fatalf("the whole log: %d tasks, %d results; want the result alone", task, result)
		}
	}
}

// ready returns how many tasks are ready in queue q of m (0 if m does not
// know q).
func ready(m *queue.Manager, q string) int {
	s, err := m.Stats(q)
	if err != nil {
		return 0
	}
	return s.Ready
}
