package seglog_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
)

// open opens dir and loads it, returning the live tasks by ID. The log is
// closed at the end of the test unless the test closed it.
func open(t *testing.T, dir string, opts seglog.Options) (*seglog.Log, map[uint64]store.Task, store.Meta) {
	t.Helper()
	l, err := seglog.Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	meta, tasks, err := l.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got := make(map[uint64]store.Task)
	for _, st := range tasks {
		got[st.ID] = st
	}
	return l, got, meta
}

func add(id uint64, q string, seq int64, payload string) store.Op {
	return store.Op{Kind: store.Add, Task: store.Task{
		ID: id, Queue: q, Seq: seq, Payload: []byte(payload), ReplyTo: "r",
		Enqueued: time.Unix(1700000000, int64(id)),
	}}
}

func del(id uint64) store.Op { return store.Op{Kind: store.Delete, Task: store.Task{ID: id}} }

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l, got, _ := open(t, dir, seglog.Options{})
	if len(got) != 0 {
		t.Fatalf("fresh dir has %d tasks", len(got))
	}
	tk := l.Append(add(1, "a", 1, "one"), add(2, "a", 2, "two"), add(3, "b", 3, "three"))
	l.Append(store.Op{Kind: store.Attempts, Task: store.Task{ID: 1, Attempts: 1}})
	l.Append(store.Op{Kind: store.Requeue, Task: store.Task{ID: 1, Seq: -1, Attempts: 1, LastError: "boom"}})
	l.Append(del(2))
	t4 := l.Append(store.Op{Kind: store.Move, Task: store.Task{ID: 3, Queue: "b.dead", Seq: 4, Payload: []byte("three"), Attempts: 3, LastError: "dead"}})
	if err := l.Wait(tk); err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(t4); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, got, meta := open(t, dir, seglog.Options{})
	if meta.MaxID != 3 || meta.MaxSeq != 4 || meta.Tasks != 2 {
		t.Errorf("meta = %+v", meta)
	}
	if g := got[1]; g.Queue != "a" || g.Seq != -1 || g.Attempts != 1 || g.LastError != "boom" || string(g.Payload) != "one" || g.ReplyTo != "r" || !g.Enqueued.Equal(time.Unix(1700000000, 1)) {
		t.Errorf("task 1 = %+v", g)
	}
	if _, ok := got[2]; ok {
		t.Errorf("deleted task 2 came back")
	}
	if g := got[3]; g.Queue != "b.dead" || g.Attempts != 3 || string(g.Payload) != "three" {
		t.Errorf("task 3 = %+v", g)
	}
}

func TestSecondOpenRefused(t *testing.T) {
	dir := t.TempDir()
	open(t, dir, seglog.Options{})
	_, err := seglog.Open(dir, seglog.Options{})
	if !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), filepath.Join(dir, "LOCK")) {
		t.Fatalf("second Open: %v; want ErrLocked naming the lock file", err)
	}
	// The directory stays locked though its LOCK file is deleted (a
	// script clearing "stale" locks): the second would delete the first's
	// segments as it compacts.
	if err := os.Remove(filepath.Join(dir, "LOCK")); err != nil {
		t.Fatal(err)
	}
	if _, err := seglog.Open(dir, seglog.Options{}); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Open after LOCK was deleted: %v; want ErrLocked", err)
	}
}

// segments returns the log segment files of dir, oldest first.
func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "log-*"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(m)
	return m
}

func writeN(t *testing.T, dir string, n int) {
	t.Helper()
	l, _, _ := open(t, dir, seglog.Options{})
	var tk store.Ticket
	for i := 1; i <= n; i++ {
		tk = l.Append(add(uint64(i), "q", int64(i), fmt.Sprint("payload-", i)))
	}
	if err := l.Wait(tk); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestTornTailDropped(t *testing.T) {
	for _, cut := range []int{1, 5, 9, 20} {
		t.Run(fmt.Sprint("cut", cut), func(t *testing.T) {
			dir := t.TempDir()
			writeN(t, dir, 10)
			segs := segments(t, dir)
			last := segs[len(segs)-1]
			fi, err := os.Stat(last)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(last, fi.Size()-int64(cut)); err != nil {
				t.Fatal(err)
			}
			var events []string
			_, got, meta := open(t, dir, seglog.Options{OnEvent: func(msg string, _ error, _ ...any) { events = append(events, msg) }})
			if len(got) != 9 {
				t.Errorf("%d tasks after a torn tail, want 9", len(got))
			}
			if _, ok := got[10]; ok {
				t.Errorf("the torn task came back")
			}
			if len(meta.Warnings) != 1 || !strings.Contains(meta.Warnings[0], last) || len(events) != 1 {
				t.Errorf("warnings %q, events %q: want one naming %s", meta.Warnings, events, last)
			}
		})
	}
}

// TestTornGroupDropped: the records of one Append stand or fall together.
// A completion appends its results and its tasks' acks at once: a crash
// that tears that write anywhere must leave neither, never the results
// without the acks (a task that runs again, and a second result).
func TestTornGroupDropped(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := open(t, dir, seglog.Options{})
	if err := l.Wait(l.Append(add(1, "tasks", 1, "job"))); err != nil {
		t.Fatal(err)
	}
	seg := segments(t, dir)[0]
	before := size(t, seg)
	// The result of task 1, and its ack.
	if err := l.Wait(l.Append(add(2, "results", 2, "its result"), del(1))); err != nil {
		t.Fatal(err)
	}
	after := size(t, seg)
	l.Close()
	whole, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	for cut := before + 1; cut < after; cut++ {
		cdir := t.TempDir()
		if err := os.WriteFile(filepath.Join(cdir, filepath.Base(seg)), whole[:cut], 0o644); err != nil {
			t.Fatal(err)
		}
		_, got, meta := open(t, cdir, seglog.Options{})
		if len(got) != 1 || got[1].Queue != "tasks" || len(meta.Warnings) != 1 {
			t.Fatalf("the group cut at byte %d of %d..%d: tasks %v, warnings %q; want task 1 alone, and the tail said dropped", cut, before, after, slices.Collect(maps.Keys(got)), meta.Warnings)
		}
	}
	// Whole, it is applied whole.
	if _, got, _ := open(t, dir, seglog.Options{}); len(got) != 1 || got[2].Queue != "results" {
		t.Fatalf("tasks %v after the whole group; want task 2 alone", slices.Collect(maps.Keys(got)))
	}
}

func size(t *testing.T, name string) int64 {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func TestGarbageTailDropped(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 10)
	segs := segments(t, dir)
	f, err := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("\x10\x00\x00\x00garbage-garbage-garbage"))
	f.Close()
	_, got, meta := open(t, dir, seglog.Options{})
	if len(got) != 10 || len(meta.Warnings) != 1 {
		t.Fatalf("%d tasks, warnings %q", len(got), meta.Warnings)
	}
}

func TestCorruptMiddleIsAnError(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 10)
	writeN(t, dir, 0) // a second session: the first segment is no longer the newest
	segs := segments(t, dir)
	if len(segs) < 2 {
		t.Fatalf("segments %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := seglog.Open(dir, seglog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, _, err = l.Load()
	if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), segs[0]) {
		t.Fatalf("Load: %v; want ErrCorrupt naming %s", err, segs[0])
	}
}

// In the newest segment, bad bytes followed by good records are damage,
// not a write cut short by a crash: Load refuses to start rather than
// drop the good records (acknowledged, maybe). A hole of zeros (pages a
// machine crash never wrote) before them is a torn tail still.
func TestCorruptNewestSegment(t *testing.T) {
	var firstEnd int // where the segment ended after its first 7 records
	for _, tc := range []struct {
		name    string
		damage  func(b []byte)
		corrupt bool
	}{
		{"a byte flipped", func(b []byte) { b[len(b)/2] ^= 0xff }, true},
		{"a hole of zeros", func(b []byte) { clear(b[len(b)/2 : len(b)/2+1024]) }, false},
		// A power loss after a write that began mid-sector: the disk kept
		// the sector as it was (the old end, then zeros), and later ones.
		{"an old sector", func(b []byte) { clear(b[firstEnd : (firstEnd/512+1)*512]) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, _, _ := open(t, dir, seglog.Options{})
			for i := 1; i <= 100; i++ {
				tk := l.Append(add(uint64(i), "q", int64(i), strings.Repeat("x", 100)))
				if i == 7 || i == 100 {
					if err := l.Wait(tk); err != nil {
						t.Fatal(err)
					}
				}
				if i == 7 {
					segs := segments(t, dir)
					fi, err := os.Stat(segs[len(segs)-1])
					if err != nil {
						t.Fatal(err)
					}
					firstEnd = int(fi.Size())
				}
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			segs := segments(t, dir)
			last := segs[len(segs)-1]
			b, err := os.ReadFile(last)
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(b)
			if err := os.WriteFile(last, b, 0o644); err != nil {
				t.Fatal(err)
			}
			l, err = seglog.Open(dir, seglog.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			meta, got, err := l.Load()
			if tc.corrupt {
				if !errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "good records follow") {
					t.Fatalf("Load: %v, %d tasks; want ErrCorrupt saying good records follow", err, len(got))
				}
				if fi, err := os.Stat(last); err != nil || fi.Size() != int64(len(b)) {
					t.Fatalf("the damaged segment was cut: %v, %v", fi, err)
				}
				return
			}
			if err != nil || len(got) == 0 || len(got) >= 100 || len(meta.Warnings) != 1 {
				t.Fatalf("Load: %v, %d tasks, warnings %q; want the tail from the hole dropped, said", err, len(got), meta.Warnings)
			}
		})
	}
}

// A segment missing between the snapshot (or the start) and the newest
// (a partial copy or restore) is said, naming it, not tasks lost unsaid;
// the number of a newest segment dropped for want of a header is used
// again, so that none goes missing that way. (Not refused: older masters
// left such gaps with nothing lost.)
func TestMissingSegmentIsSaid(t *testing.T) {
	dir := t.TempDir()
	writeN(t, dir, 10)
	writeN(t, dir, 0)
	// A segment created, its header not yet on disk: dropped, and its
	// number used again.
	if err := os.WriteFile(filepath.Join(dir, "log-0000000000000003"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	writeN(t, dir, 0)
	writeN(t, dir, 0) // loads with no segment missing
	segs := segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("segments %v", segs)
	}
	if err := os.Remove(segs[1]); err != nil {
		t.Fatal(err)
	}
	var events []string
	_, _, meta := open(t, dir, seglog.Options{OnEvent: func(msg string, _ error, _ ...any) { events = append(events, msg) }})
	if len(meta.Warnings) != 1 || !strings.Contains(meta.Warnings[0], segs[1]+" to ") || !slices.Contains(events, "recovery found segments missing") {
		t.Fatalf("warnings %q, events %q; want one saying %s is missing", meta.Warnings, events, segs[1])
	}
}

// tracker is a dumper over the tasks a test has appended.
type tracker struct {
	mu    sync.Mutex
	tasks map[uint64]store.Task
}

func (tr *tracker) dump(emit func(*store.Op) error) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, t := range tr.tasks {
		if err := emit(&store.Op{Kind: store.Add, Task: t}); err != nil {
			return err
		}
	}
	return nil
}

// TestCompaction: with a small CompactMin, a long run of puts and deletes
// keeps the directory small, and what is live survives a restart.
func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := seglog.Options{CompactMin: 64 << 10, Fsync: seglog.FsyncNever, OnEvent: func(msg string, err error, a ...any) { t.Log(msg, err, a) }}
	l, _, _ := open(t, dir, opts)
	tr := &tracker{tasks: make(map[uint64]store.Task)}
	l.SetDumper(tr.dump)
	payload := strings.Repeat("x", 1000)
	for i := uint64(1); i <= 5000; i++ {
		op := add(i, "q", int64(i), payload)
		tr.mu.Lock()
		l.Append(op)
		tr.tasks[i] = op.Task
		tr.mu.Unlock()
		if i%10 != 0 { // keep every tenth
			tr.mu.Lock()
			tk := l.Append(del(i))
			delete(tr.tasks, i)
			tr.mu.Unlock()
			if err := l.Wait(tk); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, func() bool { return dirSize(t, dir) < 2<<20 })
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, got, meta := open(t, dir, opts)
	if len(got) != 500 || meta.MaxID != 5000 {
		t.Fatalf("%d tasks, max id %d after compactions; want 500, 5000", len(got), meta.MaxID)
	}
	for id := range got {
		if id%10 != 0 {
			t.Fatalf("deleted task %d came back", id)
		}
	}
}

// TestDrainedGivesSpaceBack: once every task is deleted the log compacts
// to almost nothing, and the next IDs stay above the old ones.
func TestDrainedGivesSpaceBack(t *testing.T) {
	dir := t.TempDir()
	opts := seglog.Options{Fsync: seglog.FsyncNever, OnEvent: func(msg string, err error, a ...any) { t.Log(msg, err, a) }}
	l, _, _ := open(t, dir, opts)
	tr := &tracker{tasks: make(map[uint64]store.Task)}
	l.SetDumper(tr.dump)
	payload := strings.Repeat("x", 4096)
	for i := uint64(1); i <= 2000; i++ {
		l.Append(add(i, "q", int64(i), payload))
	}
	var tk store.Ticket
	for i := uint64(1); i <= 2000; i++ {
		tk = l.Append(del(i))
	}
	if err := l.Wait(tk); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return dirSize(t, dir) < 64<<10 })
	l.Close()
	_, got, meta := open(t, dir, opts)
	if len(got) != 0 || meta.MaxID != 2000 {
		t.Fatalf("%d tasks, max id %d; want 0, 2000", len(got), meta.MaxID)
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseFsync(t *testing.T) {
	for _, tt := range []struct {
		in   string
		mode seglog.FsyncMode
		d    time.Duration
		bad  bool
	}{
		{"always", seglog.FsyncAlways, 0, false},
		{"never", seglog.FsyncNever, 0, false},
		{"interval", seglog.FsyncInterval, seglog.DefaultInterval, false},
		{"250ms", seglog.FsyncInterval, 250 * time.Millisecond, false},
		{"0s", 0, 0, true},
		{"sometimes", 0, 0, true},
	} {
		t.Run(tt.in, func(t *testing.T) {
			mode, d, err := seglog.ParseFsync(tt.in)
			if (err != nil) != tt.bad || !tt.bad && (mode != tt.mode || d != tt.d) {
				t.Errorf("ParseFsync(%q) = %v, %v, %v", tt.in, mode, d, err)
			}
		})
	}
}

// TestScheduledRoundTrip: a task's due time, priority and idempotency
// key, a requeue's due time, a key kept after its task, a queue's
// policy and a queue's deletion come back from the log; the zero policy
// removes one, a Key with a zero Enqueued a key, and a Deleted with a zero
// Enqueued a deletion.
func TestScheduledRoundTrip(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := open(t, dir, seglog.Options{})
	due := time.Unix(1800000000, 0)
	a := add(1, "q", 1, "one")
	a.Task.Due, a.Task.Priority, a.Task.Key = due, 7, "k1"
	b := add(2, "q", 2, "two")
	b.Task.Key = "k2"
	c := add(3, "q", 3, "three")
	c.Task.Key = "k3" // its put taken back
	l.Append(a, b, c, del(2), del(3), store.Op{Kind: store.Key, Task: store.Task{Queue: "q", Key: "k3"}})
	l.Append(store.Op{Kind: store.Requeue, Task: store.Task{ID: 1, Seq: 5, Attempts: 1, LastError: "503", Due: due.Add(time.Minute)}})
	l.Append(store.Op{Kind: store.Key, Task: store.Task{ID: 9, Queue: "r", Key: "k9", Enqueued: due}})
	l.Append(store.Op{Kind: store.Key, Task: store.Task{ID: 8, Queue: "gone", Key: "k8", Enqueued: due}})
	l.Append(store.Op{Kind: store.ForgetKeys, Task: store.Task{Queue: "gone"}})
	l.Append(store.Op{Kind: store.SetPolicy, Task: store.Task{Queue: "q"}, Policy: store.Policy{MaxAttempts: 10, BackoffMin: time.Second, BackoffMax: time.Hour}})
	l.Append(store.Op{Kind: store.SetPolicy, Task: store.Task{Queue: "r"}, Policy: store.Policy{MaxAttempts: 4}})
	l.Append(store.Op{Kind: store.SetPolicy, Task: store.Task{Queue: "r"}})
	l.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: "map-1", Enqueued: due}})
	l.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: "map-1", Enqueued: due.Add(time.Second), Due: due.Add(time.Second)}})
	l.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: "map-2", Enqueued: due}})
	l.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: "map-3", Enqueued: due}})
	tk := l.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: "map-3"}})
	if err := l.Wait(tk); err != nil {
		t.Fatal(err)
	}
	l.Close()
	_, got, meta := open(t, dir, seglog.Options{})
	one := got[1]
	if len(got) != 1 || !one.Due.Equal(due.Add(time.Minute)) || one.Priority != 7 || one.Key != "k1" || one.Seq != 5 {
		t.Fatalf("tasks = %+v", got)
	}
	keys := make(map[string]uint64)
	for _, k := range meta.Keys {
		keys[k.Queue+"/"+k.Key] = k.ID
	}
	if want := map[string]uint64{"q/k1": 1, "q/k2": 2, "r/k9": 9}; !maps.Equal(keys, want) {
		t.Fatalf("keys = %v, want %v", keys, want)
	}
	if want := map[string]store.Policy{"q": {MaxAttempts: 10, BackoffMin: time.Second, BackoffMax: time.Hour}}; !maps.Equal(meta.Policies, want) {
		t.Fatalf("policies = %v, want %v", meta.Policies, want)
	}
	wantDeletions := map[string]store.Deletion{
		"map-1": {At: due.Add(time.Second), CancelAt: due.Add(time.Second)},
		"map-2": {At: due},
	}
	if !maps.EqualFunc(meta.Deletions, wantDeletions, func(a, b store.Deletion) bool {
		return a.At.Equal(b.At) && a.CancelAt.Equal(b.CancelAt)
	}) {
		t.Fatalf("deletions = %v, want %v", meta.Deletions, wantDeletions)
	}
}

// TestLoadsOlderFormats: a log written before format 03 (headers QMLOG01
// and QMLOG02) loads as it is.
func TestLoadsOlderFormats(t *testing.T) {
	for _, magic := range []string{"QMLOG01\n", "QMLOG02\n", "QMLOG03\n"} {
		t.Run(magic[:7], func(t *testing.T) { loadsFormat(t, magic) })
	}
}

func loadsFormat(t *testing.T, magic string) {
	dir := t.TempDir()
	l, _, _ := open(t, dir, seglog.Options{})
	// One op an Append, as older formats have no groups.
	for _, op := range []store.Op{add(1, "q", 1, "one"), add(2, "q", 2, "two"), del(1)} {
		if err := l.Wait(l.Append(op)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	rewriteHeaders(t, dir, magic)
	l2, got, meta := open(t, dir, seglog.Options{})
	if len(got) != 1 || string(got[2].Payload) != "two" {
		t.Fatalf("tasks = %+v, want task 2", got)
	}
	// The move to this format is said, as older qmasters cannot read it.
	want := fmt.Sprintf("the data directory was in log format %s and is now in format 04, which qmasters built before", magic[5:7])
	if len(meta.Warnings) != 1 || !strings.HasPrefix(meta.Warnings[0], want) {
		t.Errorf("warnings %q, want one starting %q", meta.Warnings, want)
	}
	l2.Close()
	if _, _, meta := open(t, dir, seglog.Options{}); len(meta.Warnings) != 0 {
		t.Errorf("warnings at the next start, the directory mixing formats: %q", meta.Warnings)
	}
}

// TestRefusesNewerFormats: a data directory written by a newer qm is
// refused, saying so, rather than misread.
func TestRefusesNewerFormats(t *testing.T) {
	dir := t.TempDir()
	l, _, _ := open(t, dir, seglog.Options{})
	if err := l.Wait(l.Append(add(1, "q", 1, "one"))); err != nil {
		t.Fatal(err)
	}
	l.Close()
	rewriteHeaders(t, dir, "QMLOG09\n")
	l2, err := seglog.Open(dir, seglog.Options{})
	if err == nil {
		_, _, err = l2.Load()
		l2.Close()
	}
	if !errors.Is(err, store.ErrNewerFormat) || errors.Is(err, store.ErrCorrupt) || !strings.Contains(err.Error(), "is in format 09, and this qmaster reads formats up to 04") {
		t.Fatalf("open of a format 09 log: %v; want it refused as newer", err)
	}
}

// rewriteHeaders gives every log segment in dir the header magic.
func rewriteHeaders(t *testing.T, dir, magic string) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "log-*"))
	for _, s := range segs {
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) >= len(magic) {
			copy(b, magic)
			if err := os.WriteFile(s, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestSnapshotWaitsForWhatItReliedOn: a snapshot replaces the segments
// before it only once the records appended while it was dumped are
// written. A dump may leave out a task whose delete was appended
// meanwhile (master/queue's completing tasks): with that delete not yet
// written and the segment holding the task's Add deleted, a crash would
// leave the task in neither.
func TestSnapshotWaitsForWhatItReliedOn(t *testing.T) {
	dir := t.TempDir()
	var holding atomic.Bool // the writer waits in OnSync, after writing, before the records count as written
	release := make(chan struct{})
	var released sync.Once
	free := func() {
		holding.Store(false)
		released.Do(func() { close(release) })
	}
	compacted := make(chan bool, 4) // whether the writer was held when a compaction ended
	l, _, _ := open(t, dir, seglog.Options{CompactMin: 1,
		OnSync: func(time.Duration) {
			if holding.Load() {
				<-release
			}
		},
		OnEvent: func(msg string, _ error, _ ...any) {
			if msg == "compacted" {
				compacted <- holding.Load()
			}
		}})
	t.Cleanup(free) // before the log's Close, which waits for the writer
	var once sync.Once
	l.SetDumper(func(emit func(*store.Op) error) error {
		op := add(1, "q", 1, "one")
		if err := emit(&op); err != nil {
			return err
		}
		// Task 1's delete, appended as the dump ends: left out of it.
		once.Do(func() {
			holding.Store(true)
			l.Append(del(1))
		})
		return nil
	})
	if err := l.Wait(l.Append(add(1, "q", 1, "one"))); err != nil {
		t.Fatal(err)
	}
	select {
	case held := <-compacted:
		if held {
			t.Fatal("the snapshot replaced the segments before the delete its dump left out was written")
		}
		t.Fatal("compacted before the dump appended")
	case <-time.After(200 * time.Millisecond): // long enough for a compaction that does not wait
	}
	free()
	if held := <-compacted; held {
		t.Fatal("compacted while the writer was held")
	}
}
