package seglog_test

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
)

var _ store.ResultQueueKeeper = (*seglog.Log)(nil)

// TestResultQueues: the result queues set are loaded again after a
// reopen, a forgotten one is not, and the file lists them sorted, one
// "queue<TAB>result queue" a line; setting what is set writes nothing,
// and forgetting the last removes the file.
func TestResultQueues(t *testing.T) {
	dir := t.TempDir()
	opts := seglog.Options{Fsync: seglog.FsyncNever}
	path := filepath.Join(dir, "RESULTQUEUES")
	l, _, meta := open(t, dir, opts)
	if meta.ResultQueues != nil {
		t.Fatalf("result queues of a new directory: %v, want none", meta.ResultQueues)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RESULTQUEUES of a new directory: %v, want none", err)
	}
	for _, set := range [][2]string{{"jobs", "results"}, {"b", "x"}, {"gone", "r"}, {"b", "y"}, {"gone", ""}, {"never", ""}} {
		if err := l.SetResultQueue(set[0], set[1]); err != nil {
			t.Fatalf("SetResultQueue(%q, %q): %v", set[0], set[1], err)
		}
	}
	b, err := os.ReadFile(path)
	if want := "b\ty\njobs\tresults\n"; err != nil || string(b) != want {
		t.Fatalf("RESULTQUEUES: %q, %v; want %q", b, err, want)
	}
	// What is set already is not written again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := l.SetResultQueue("jobs", "results"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RESULTQUEUES after setting what was set: %v, want not written", err)
	}
	if err := l.SetResultQueue("c", "z"); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.SetResultQueue("late", "r"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("SetResultQueue after Close: %v, want store.ErrClosed", err)
	}

	l, _, meta = open(t, dir, opts)
	if want := map[string]string{"b": "y", "c": "z", "jobs": "results"}; !maps.Equal(meta.ResultQueues, want) {
		t.Fatalf("result queues after a reopen: %v, want %v", meta.ResultQueues, want)
	}
	for _, q := range []string{"b", "c", "jobs"} {
		if err := l.SetResultQueue(q, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("RESULTQUEUES with every result queue forgotten: %v, want removed", err)
	}
	l.Close()
	if _, _, meta = open(t, dir, opts); meta.ResultQueues != nil {
		t.Fatalf("result queues after forgetting them all: %v, want none", meta.ResultQueues)
	}
}

// TestResultQueuesEditedByHand: lines that are not a queue, a tab and a
// result queue are skipped, and said in Meta.Warnings; the others load
// (a queue listed twice takes its last). A file that cannot be read fails
// Load, naming what it was reading.
func TestResultQueuesEditedByHand(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "RESULTQUEUES")
	edited := "jobs\tresults\nno tab here\n\tno-queue\nno-result\t\n\na\tb\tc\nother\tr1\nother\tr2\n"
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	var events []string
	opts := seglog.Options{Fsync: seglog.FsyncNever, OnEvent: func(msg string, err error, _ ...any) {
		events = append(events, msg+": "+err.Error())
	}}
	l, _, meta := open(t, dir, opts)
	if want := map[string]string{"jobs": "results", "other": "r2"}; !maps.Equal(meta.ResultQueues, want) {
		t.Fatalf("result queues of an edited file: %v, want %v", meta.ResultQueues, want)
	}
	const said = "RESULTQUEUES: 4 lines skipped (first: line 2)"
	if len(meta.Warnings) != 1 || !strings.Contains(meta.Warnings[0], said) {
		t.Fatalf("warnings %q, want one saying %q", meta.Warnings, said)
	}
	if len(events) != 1 || !strings.Contains(events[0], said) {
		t.Fatalf("events %q, want one saying %q", events, said)
	}
	// The next change writes the file clean.
	if err := l.SetResultQueue("new", "r"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "jobs\tresults\nnew\tr\nother\tr2\n" {
		t.Fatalf("RESULTQUEUES after a change: %q, %v", b, err)
	}
	l.Close()

	unreadable := t.TempDir()
	if err := os.Mkdir(filepath.Join(unreadable, "RESULTQUEUES"), 0o755); err != nil {
		t.Fatal(err)
	}
	l2, err := seglog.Open(unreadable, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, _, err := l2.Load(); err == nil || !strings.Contains(err.Error(), "read the result queues") {
		t.Fatalf("Load with an unreadable RESULTQUEUES: %v, want an error naming it", err)
	}
}

// TestResultQueueNotWritten: a result queue whose write fails (as on a
// full disk) is kept in memory and written with the next change; one
// still unwritten is written by Close.
func TestResultQueueNotWritten(t *testing.T) {
	dir := t.TempDir()
	opts := seglog.Options{Fsync: seglog.FsyncNever}
	path := filepath.Join(dir, "RESULTQUEUES")
	block := func() {
		t.Helper()
		// A directory where the temporary file goes: its create fails.
		if err := os.Mkdir(path+".tmp", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unblock := func() {
		t.Helper()
		if err := os.Remove(path + ".tmp"); err != nil {
			t.Fatal(err)
		}
	}
	l, _, _ := open(t, dir, opts)
	block()
	if err := l.SetResultQueue("a", "ra"); err == nil {
		t.Fatal("SetResultQueue with its file blocked: no error")
	}
	unblock()
	if err := l.SetResultQueue("b", "rb"); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "a\tra\nb\trb\n" {
		t.Fatalf("RESULTQUEUES after the next change: %q, %v; want both", b, err)
	}
	block()
	if err := l.SetResultQueue("c", "rc"); err == nil {
		t.Fatal("SetResultQueue with its file blocked: no error")
	}
	unblock()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, meta := open(t, dir, opts); !maps.Equal(meta.ResultQueues, map[string]string{"a": "ra", "b": "rb", "c": "rc"}) {
		t.Fatalf("result queues after Close wrote what was unwritten: %v", meta.ResultQueues)
	}
}
