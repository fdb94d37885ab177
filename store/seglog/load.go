package seglog

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/qm-dev/qm/store"
)

// state is the set of live tasks being rebuilt by Load.
type state struct {
	tasks    []store.Task // by index; deleted ones have ID 0
	index    map[uint64]int32
	keys     map[keyName]store.Task // idempotency keys, live tasks' or not
	policies map[string]store.Policy
	maxID    uint64
	maxSeq   int64
	arena    []byte // payload copies are carved from here
}

// keyName is an idempotency key within its queue.
type keyName struct{ queue, key string }

func (s *state) remember(t *store.Task) {
	if s.keys == nil {
		s.keys = make(map[keyName]store.Task)
	}
	s.keys[keyName{t.Queue, t.Key}] = store.Task{ID: t.ID, Queue: t.Queue, Key: t.Key, Enqueued: t.Enqueued}
}

func (s *state) apply(op *store.Op) {
	t := &op.Task
	switch op.Kind {
	case store.Add, store.Move:
		s.maxID = max(s.maxID, t.ID)
		s.maxSeq = max(s.maxSeq, t.Seq)
		t.Payload = s.copyPayload(t.Payload)
		if t.Key != "" && op.Kind == store.Add {
			s.remember(t)
		}
		if i, ok := s.index[t.ID]; ok {
			s.tasks[i] = *t
			return
		}
		s.index[t.ID] = int32(len(s.tasks))
		s.tasks = append(s.tasks, *t)
	case store.Delete:
		if i, ok := s.index[t.ID]; ok {
			s.tasks[i] = store.Task{}
			delete(s.index, t.ID)
		}
	case store.Attempts:
		if i, ok := s.index[t.ID]; ok {
			s.tasks[i].Attempts = t.Attempts
		}
	case store.Requeue:
		s.maxSeq = max(s.maxSeq, t.Seq)
		if i, ok := s.index[t.ID]; ok {
			p := &s.tasks[i]
			p.Seq, p.Attempts, p.LastError, p.Due = t.Seq, t.Attempts, t.LastError, t.Due
		}
	case store.Key:
		s.remember(t)
	case store.ForgetKeys:
		for k := range s.keys {
			if k.queue == t.Queue {
				delete(s.keys, k)
			}
		}
	case store.SetPolicy:
		if s.policies == nil {
			s.policies = make(map[string]store.Policy)
		}
		if op.Policy == (store.Policy{}) {
			delete(s.policies, t.Queue)
		} else {
			s.policies[t.Queue] = op.Policy
		}
	}
}

// copyPayload copies p out of the file buffer, carving small payloads
// from shared chunks to spare the allocator a million tiny objects.
func (s *state) copyPayload(p []byte) []byte {
	if len(p) == 0 {
		return nil
	}
	if len(p) > 4096 {
		return bytes.Clone(p)
	}
	if len(s.arena) < len(p) {
		s.arena = make([]byte, 256<<10)
	}
	c := s.arena[:len(p):len(p)]
	copy(c, p)
	s.arena = s.arena[len(p):]
	return c
}

// listing is what Load finds in the directory.
type listing struct {
	snaps, segs []uint64
	tmps        []string
}

func (l *Log) list() (listing, error) {
	var ls listing
	ents, err := os.ReadDir(l.dir)
	if err != nil {
		return ls, err
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			ls.tmps = append(ls.tmps, name)
		case strings.HasPrefix(name, "snap-"):
			if n, err := strconv.ParseUint(name[5:], 10, 64); err == nil {
				ls.snaps = append(ls.snaps, n)
			}
		case strings.HasPrefix(name, "log-"):
			if n, err := strconv.ParseUint(name[4:], 10, 64); err == nil {
				ls.segs = append(ls.segs, n)
			}
		}
	}
	slices.Sort(ls.snaps)
	slices.Sort(ls.segs)
	return ls, nil
}

// Load implements store.Store: it reads the newest snapshot, replays the
// segments after it, drops a torn tail of the newest segment, starts a
// new segment and the writer goroutine, and returns the live tasks.
func (l *Log) Load() (store.Meta, []store.Task, error) {
	meta, tasks, err := l.load()
	if err != nil {
		return meta, nil, err
	}
	l.wg.Add(2)
	go l.run()
	go l.compactor()
	return meta, tasks, nil
}

func (l *Log) load() (store.Meta, []store.Task, error) {
	var meta store.Meta
	ls, err := l.list()
	if err != nil {
		return meta, nil, err
	}
	for _, name := range ls.tmps {
		os.Remove(filepath.Join(l.dir, name)) // an unfinished snapshot
	}
	var base uint64 // first segment to replay
	if n := len(ls.snaps); n > 0 {
		base = ls.snaps[n-1]
	}
	hint := l.sizeHint(ls, base)
	st := &state{tasks: make([]store.Task, 0, hint), index: make(map[uint64]int32, hint)}
	dec := &decoder{}
	var replayed int64
	if len(ls.snaps) > 0 {
		size, err := l.loadSnapshot(base, st, dec)
		if err != nil {
			return meta, nil, err
		}
		l.snapSize.Store(size)
	}
	var segs []uint64
	for _, n := range ls.segs {
		if n < base {
			os.Remove(filepath.Join(l.dir, segName(n))) // left by a compaction cut short
			continue
		}
		segs = append(segs, n)
	}
	for i, n := range segs {
		size, warn, err := l.replay(n, i == len(segs)-1, st, dec)
		if err != nil {
			return meta, nil, err
		}
		if warn != nil {
			meta.Warnings = append(meta.Warnings, warn.Error())
			l.opts.OnEvent("recovery dropped a torn tail", warn)
		}
		replayed += size
	}
	for _, n := range ls.snaps[:max(len(ls.snaps)-1, 0)] {
		os.Remove(filepath.Join(l.dir, snapName(n)))
	}
	next := base
	if len(segs) > 0 {
		next = segs[len(segs)-1] + 1
	}
	next = max(next, 1)
	if err := l.createSegment(next); err != nil {
		return meta, nil, err
	}
	l.sinceSnap = replayed
	l.maxID, l.maxSeq = st.maxID, st.maxSeq
	meta.MaxID, meta.MaxSeq = st.maxID, st.maxSeq
	tasks := st.tasks[:0] // squeeze out the deleted ones, in place
	for i := range st.tasks {
		if st.tasks[i].ID != 0 {
			tasks = append(tasks, st.tasks[i])
		}
	}
	clear(st.tasks[len(tasks):])
	meta.Tasks = len(tasks)
	for _, k := range st.keys {
		meta.Keys = append(meta.Keys, k)
	}
	meta.Policies = st.policies
	l.live = int64(meta.Tasks)
	return meta, tasks, nil
}

// sizeHint counts the tasks the files of ls add, at most, to size the
// state at once: growing it as the records come copied a million tasks
// about twice over and cost a restarted master a second. It reads each
// file's record headers only (the page cache serves the files again to
// the replay); a file it cannot read counts as none.
func (l *Log) sizeHint(ls listing, base uint64) int {
	n := 0
	count := func(name string) {
		b, err := os.ReadFile(filepath.Join(l.dir, name))
		if err != nil || len(b) < headerLen {
			return
		}
		n += countAdds(b[headerLen:])
	}
	if k := len(ls.snaps); k > 0 {
		count(snapName(ls.snaps[k-1]))
	}
	for _, s := range ls.segs {
		if s >= base { // older ones are left by a compaction and deleted unread
			count(segName(s))
		}
	}
	return n
}

// countAdds counts the records of b that add a task (Add or Move), up to
// the first that is cut short or damaged in its header.
func countAdds(b []byte) int {
	n := 0
	for len(b) > recHeaderLen {
		size := binary.LittleEndian.Uint32(b)
		if size == 0 || size > maxRecord || uint64(len(b)-recHeaderLen) < uint64(size) {
			break
		}
		if k := store.Kind(b[recHeaderLen]); k == store.Add || k == store.Move {
			n++
		}
		b = b[recHeaderLen+int(size):]
	}
	return n
}

// loadSnapshot applies snapshot n to st and returns its size. Any damage
// is an error: a snapshot is renamed into place only once complete.
func (l *Log) loadSnapshot(n uint64, st *state, dec *decoder) (int64, error) {
	name := filepath.Join(l.dir, snapName(n))
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, err
	}
	if len(b) < headerLen || !isSnapMagic(string(b[:headerLen])) {
		return 0, fmt.Errorf("%w: %s: not a qm snapshot (bad header)", store.ErrCorrupt, name)
	}
	var op store.Op
	count := 0
	for off := headerLen; ; {
		if off == len(b) {
			return 0, fmt.Errorf("%w: %s: ends at offset %d without its trailer", store.ErrCorrupt, name, off)
		}
		k, err := dec.decode(b[off:], &op)
		if err != nil {
			return 0, fmt.Errorf("%w: %s at offset %d: %w", store.ErrCorrupt, name, off, err)
		}
		off += k
		if op.Kind == kindMeta {
			if op.Task.Attempts != count || off != len(b) {
				return 0, fmt.Errorf("%w: %s: trailer at offset %d says %d tasks, read %d", store.ErrCorrupt, name, off-k, op.Task.Attempts, count)
			}
			st.maxID = max(st.maxID, op.Task.ID)
			st.maxSeq = max(st.maxSeq, op.Task.Seq)
			return int64(len(b)), nil
		}
		switch op.Kind {
		case store.Add:
			count++
		case store.Key, store.SetPolicy:
		default:
			return 0, fmt.Errorf("%w: %s at offset %d: %v record in a snapshot", store.ErrCorrupt, name, off-k, op.Kind)
		}
		st.apply(&op)
	}
}

// replay applies segment n to st and returns its size. In the newest
// segment (last) a bad record is a torn write: the file is cut there and
// warn says what was dropped. Elsewhere it is an error.
func (l *Log) replay(n uint64, last bool, st *state, dec *decoder) (size int64, warn, err error) {
	name := filepath.Join(l.dir, segName(n))
	b, err := os.ReadFile(name)
	if err != nil {
		return 0, nil, err
	}
	if len(b) < headerLen || !isLogMagic(string(b[:headerLen])) {
		if last && (len(b) < headerLen && bytes.HasPrefix([]byte(logMagic), b) || isZero(b)) {
			// Created, header not yet on disk: nothing in it.
			if err := os.Remove(name); err != nil {
				return 0, nil, err
			}
			return 0, fmt.Errorf("dropped %s: a segment without a complete header (%d bytes), cut short by a crash", name, len(b)), nil
		}
		return 0, nil, fmt.Errorf("%w: %s: not a qm log segment (bad header)", store.ErrCorrupt, name)
	}
	var op store.Op
	off := headerLen
	for off < len(b) {
		k, derr := dec.decode(b[off:], &op)
		if derr == nil && op.Kind == kindMeta {
			derr = fmt.Errorf("%w: snapshot trailer in a log segment", errBadBody)
		}
		if derr != nil {
			if !last {
				return 0, nil, fmt.Errorf("%w: %s at offset %d: %w", store.ErrCorrupt, name, off, derr)
			}
			if err := truncate(name, int64(off)); err != nil {
				return 0, nil, err
			}
			return int64(off), fmt.Errorf("dropped a torn tail of %s: %d bytes from offset %d: %w", name, len(b)-off, off, derr), nil
		}
		st.apply(&op)
		off += k
	}
	return int64(len(b)), nil, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func truncate(name string, size int64) error {
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return fmt.Errorf("cut torn tail of %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
