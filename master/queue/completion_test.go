package queue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store/seglog"
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

// TestCompletionAcrossACompaction: a snapshot taken while a completion
// is between its ack in memory and the append of its results and ack
// keeps the task, whose Add it replaces: a crash then runs the task again
// rather than losing it, and its result, for good.
func TestCompletionAcrossACompaction(t *testing.T) {
	dir, crashed := t.TempDir(), t.TempDir()
	// Once the completion is held, the second compaction to end (the
	// first may have begun before) is followed by a crash: the directory
	// is copied as it ends, when no other can run.
	var compactions atomic.Int32
	copied := make(chan error, 1)
	st, err := seglog.Open(dir, seglog.Options{Fsync: seglog.FsyncNever, CompactMin: 4096, OnEvent: func(msg string, _ error, _ ...any) {
		if msg == "compacted" && compactions.Add(1) == 2 {
			copied <- copyDir(dir, crashed)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := queue.New(queue.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	defer m.Close()
	ctx := context.Background()
	mustPut(t, m, "tasks", "job")
	ts, err := m.Get(ctx, queue.GetRequest{Queue: "tasks", Max: 1, Lease: time.Minute, Owner: 1}, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	held, release, acked := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := m.Ack(queue.AckRequest{Queue: "tasks", Owner: 1, IDs: []uint64{ts[0].ID}, Publish: func(tasks []queue.Task) ([]queue.Task, error) {
			close(held)
			<-release
			_, err := m.Put(ctx, queue.PutRequest{Queue: "results", Items: items("its result"), Results: true,
				ResultsOf: queue.ResultsOf{Queue: "tasks", Tasks: tasks}})
			return nil, err
		}}, nil)
		acked <- err
	}()
	<-held
	compactions.Store(0)
	var crash error
	qmtest.CheckFor(t, 10*time.Second, 0, func() error {
		select {
		case crash = <-copied:
			return nil
		default:
		}
		mustPut(t, m, "other", strings.Repeat("x", 100))
		return fmt.Errorf("%d compactions since the completion began, want 2", compactions.Load())
	})
	close(release)
	if err := <-acked; err != nil {
		t.Fatal(err)
	}
	if crash != nil {
		t.Fatal(crash)
	}

	m2, stop := openDurable(t, crashed, queue.Config{})
	defer stop()
	if task, result := ready(m2, "tasks"), ready(m2, "results"); task != 1 || result != 0 {
		t.Fatalf("after a crash during the completion: %d tasks, %d results; want the task to run again", task, result)
	}
}

// copyDir copies the files of directory src into dst.
func copyDir(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
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
