package queue_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/queue"
)

// TestDeletionsKept: a queue's deletion kept by KeepDeletion comes back
// after a restart, through a compaction that dropped the log it was
// written in; its times only move forward; one older than DeletionKept is
// forgotten.
func TestDeletionsKept(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	m, stop := openDurable(t, dir, queue.Config{})
	keep := func(name string, d queue.Deletion) {
		t.Helper()
		if err := m.KeepDeletion(name, d); err != nil {
			t.Fatal(err)
		}
	}
	keep("map-1", queue.Deletion{At: now.Add(-time.Minute), CancelAt: now.Add(-time.Minute)})
	keep("map-1", queue.Deletion{At: now})                 // a plain delete after: cancels nothing more
	keep("map-1", queue.Deletion{At: now.Add(-time.Hour)}) // heard of late
	keep("old", queue.Deletion{At: now.Add(-queue.DeletionKept - time.Minute)})
	want := map[string]queue.Deletion{"map-1": {At: now, CancelAt: now.Add(-time.Minute)}}
	check := func(m *queue.Manager) {
		t.Helper()
		got, err := m.Deletions()
		if err != nil || len(got) != len(want) {
			t.Fatalf("deletions: %v, %v; want %v", got, err, want)
		}
		for name, d := range want {
			if g := got[name]; !g.At.Equal(d.At) || !g.CancelAt.Equal(d.CancelAt) {
				t.Fatalf("deletion of %s: %+v, want %+v", name, g, d)
			}
		}
	}
	check(m)

	// With no task live, the log compacts once quiet (a second): only
	// the snapshot, which the Manager's dump wrote, holds the deletion.
	qmtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*"))
		logs, _ := filepath.Glob(filepath.Join(dir, "log-*"))
		if len(snaps) == 0 || len(logs) != 1 {
			return errors.New("not compacted yet")
		}
		return nil
	})
	stop()
	m, _ = openDurable(t, dir, queue.Config{})
	check(m)
}

// TestDeletionsKeptAreBounded: past the bound, the older half of the
// deletions go, even when they are all of an age.
func TestDeletionsKeptAreBounded(t *testing.T) {
	queue.SetMaxDeletionsKept(t, 8)
	m, _ := openDurable(t, t.TempDir(), queue.Config{})
	now := time.Now()
	for i := range 20 {
		at := now.Add(time.Duration(i) * time.Second)
		if i >= 10 {
			at = now.Add(time.Minute) // the last ten of an age
		}
		if err := m.KeepDeletion(fmt.Sprintf("map-%d", i), queue.Deletion{At: at}); err != nil {
			t.Fatal(err)
		}
		got, _ := m.Deletions()
		if len(got) > 8 {
			t.Fatalf("%d deletions kept after %d, want 8 at most", len(got), i+1)
		}
		if _, ok := got[fmt.Sprintf("map-%d", i)]; !ok {
			t.Fatalf("the latest deletion, of map-%d, is not kept", i)
		}
	}
}
