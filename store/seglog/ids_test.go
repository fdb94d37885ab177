package seglog_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
)

var _ store.IDReserver = (*seglog.Log)(nil)

// TestReservedIDs: Load's MaxID is at least the IDs reserved, though no
// task that high was stored; a lower reservation changes nothing; an
// unreadable file is said, and ignored; a reservation after Close fails.
func TestReservedIDs(t *testing.T) {
	dir := t.TempDir()
	opts := seglog.Options{Fsync: seglog.FsyncNever}
	l, _, meta := open(t, dir, opts)
	if meta.MaxID != 0 {
		t.Fatalf("MaxID of a new directory: %d", meta.MaxID)
	}
	if err := l.Wait(l.Append(add(5, "q", 1, "five"))); err != nil {
		t.Fatal(err)
	}
	for _, upTo := range []uint64{1000, 10} {
		if err := l.ReserveIDs(upTo); err != nil {
			t.Fatalf("ReserveIDs(%d): %v", upTo, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.ReserveIDs(2000); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("ReserveIDs after Close: %v, want store.ErrClosed", err)
	}
	l, tasks, meta := open(t, dir, opts)
	if meta.MaxID != 1000 || len(tasks) != 1 {
		t.Fatalf("after a reopen: MaxID %d, %d tasks; want 1000 and the one task", meta.MaxID, len(tasks))
	}
	// A store that reached past the reservation keeps its own MaxID.
	if err := l.Wait(l.Append(add(1500, "q", 2, "high"))); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if l, _, meta = open(t, dir, opts); meta.MaxID != 1500 {
		t.Fatalf("MaxID %d after a task above the reservation; want 1500", meta.MaxID)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "IDS"), []byte("lots\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var events []string
	opts.OnEvent = func(msg string, err error, _ ...any) { events = append(events, msg+": "+err.Error()) }
	_, _, meta = open(t, dir, opts)
	const said = "IDS: not a task ID"
	if meta.MaxID != 1500 || len(meta.Warnings) != 1 || !strings.Contains(meta.Warnings[0], said) || len(events) != 1 {
		t.Fatalf("an unreadable IDS: MaxID %d, warnings %q, events %q; want 1500, and a warning saying %q", meta.MaxID, meta.Warnings, events, said)
	}
}
