package seglog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/qm-dev/qm/store"
)

// state is the set of live tasks being rebuilt by Load.
type state struct {
	tasks     []store.Task // by index; deleted ones have ID 0
	index     idIndex
	keys      map[keyName]store.Task // idempotency keys, live tasks' or not
	policies  map[string]store.Policy
	deletions map[string]store.Deletion
	maxID     uint64
	maxSeq    int64
	arena     []byte // payload copies are carved from here
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
		if i, ok := s.index.get(t.ID); ok {
			s.tasks[i] = *t
			return
		}
		s.index.set(t.ID, int32(len(s.tasks)))
		s.tasks = append(s.tasks, *t)
	case store.Delete:
		if i, ok := s.index.get(t.ID); ok {
			s.tasks[i] = store.Task{}
			s.index.del(t.ID)
		}
	case store.Attempts:
		if i, ok := s.index.get(t.ID); ok {
			s.tasks[i].Attempts = t.Attempts
		}
	case store.Requeue:
		s.maxSeq = max(s.maxSeq, t.Seq)
		if i, ok := s.index.get(t.ID); ok {
			p := &s.tasks[i]
			p.Seq, p.Attempts, p.LastError, p.Due = t.Seq, t.Attempts, t.LastError, t.Due
		}
	case store.Key:
		if t.Enqueued.IsZero() {
			delete(s.keys, keyName{t.Queue, t.Key})
		} else {
			s.remember(t)
		}
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
	case store.Deleted:
		if s.deletions == nil {
			s.deletions = make(map[string]store.Deletion)
		}
		if t.Enqueued.IsZero() {
			delete(s.deletions, t.Queue)
		} else {
			s.deletions[t.Queue] = store.Deletion{At: t.Enqueued, CancelAt: t.Due}
		}
	}
}

// idIndex finds a live task's place in state.tasks by its ID. A master
// hands out IDs in order, so those of the tasks on disk are nearly always
// dense: then the index is a table indexed by ID - lo, which a million
// tasks fill in a tenth of the time a map took (the map's lookups were a
// sixth of a restart). IDs outside the table's range, which the files'
// first scan gave, move it to a map.
type idIndex struct {
	lo    uint64
	table []int32 // table[id-lo] is the place + 1; 0 is none
	m     map[uint64]int32
}

// maxSparse is how many table entries per task added an idIndex may take
// before a map is the smaller.
const maxSparse = 4

// newIDIndex returns an index for adds tasks with IDs from lo to hi.
func newIDIndex(adds int, lo, hi uint64) idIndex {
	if adds == 0 || hi < lo || hi-lo >= uint64(maxSparse*adds+1024) {
		return idIndex{m: make(map[uint64]int32, adds)}
	}
	return idIndex{lo: lo, table: make([]int32, hi-lo+1)}
}

func (x *idIndex) get(id uint64) (int32, bool) {
	if x.m != nil {
		i, ok := x.m[id]
		return i, ok
	}
	if id < x.lo || id-x.lo >= uint64(len(x.table)) {
		return 0, false
	}
	v := x.table[id-x.lo]
	return v - 1, v > 0
}

func (x *idIndex) set(id uint64, i int32) {
	if x.m == nil && (id < x.lo || id-x.lo >= uint64(len(x.table))) {
		x.toMap()
	}
	if x.m != nil {
		x.m[id] = i
		return
	}
	x.table[id-x.lo] = i + 1
}

func (x *idIndex) del(id uint64) {
	if x.m != nil {
		delete(x.m, id)
	} else if id >= x.lo && id-x.lo < uint64(len(x.table)) {
		x.table[id-x.lo] = 0
	}
}

// toMap moves the table's entries to a map, for an ID out of its range.
func (x *idIndex) toMap() {
	x.m = make(map[uint64]int32)
	for k, v := range x.table {
		if v > 0 {
			x.m[x.lo+uint64(k)] = v - 1
		}
	}
	x.table = nil
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
	if meta.Paused, err = l.loadPaused(); err != nil {
		return meta, nil, fmt.Errorf("read the paused queues: %w", err)
	}
	var warn error
	if meta.ResultQueues, warn, err = l.loadResultQueues(); err != nil {
		return meta, nil, fmt.Errorf("read the result queues: %w", err)
	}
	if warn != nil {
		meta.Warnings = append(meta.Warnings, warn.Error())
		l.opts.OnEvent("the result queues file has lines it cannot read; they are skipped", warn)
	}
	reserved, warn, err := l.loadReservedIDs()
	if err != nil {
		return meta, nil, fmt.Errorf("read the reserved task IDs: %w", err)
	}
	if warn != nil {
		meta.Warnings = append(meta.Warnings, warn.Error())
		l.opts.OnEvent("the reserved task IDs file cannot be read; it is ignored", warn)
	}
	meta.MaxID = max(meta.MaxID, reserved)
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
	var segs []uint64
	for _, n := range ls.segs {
		if n < base {
			os.Remove(filepath.Join(l.dir, segName(n))) // left by a compaction cut short
			continue
		}
		segs = append(segs, n)
	}
	// Segments are numbered on from the snapshot's (or from 1): one
	// missing (a partial copy or restore) loses its tasks. Said, not
	// refused: masters before the thirty-fourth session left such a gap
	// when a segment they created had no header yet at a crash, with
	// nothing lost.
	want := max(base, 1)
	for _, n := range segs {
		if n != want {
			warn := fmt.Errorf("%s to %s are missing: if the directory was copied or restored in part, the tasks they held are lost (a crash of an older master as it started a segment leaves such a gap with nothing lost)",
				filepath.Join(l.dir, segName(want)), segName(n-1))
			meta.Warnings = append(meta.Warnings, warn.Error())
			l.opts.OnEvent("recovery found segments missing", warn)
		}
		want = n + 1
	}
	// Each file is read once: its records' headers are counted first, to
	// size the state at once, and the same bytes are then replayed.
	var (
		snap    []byte
		release []func()
	)
	defer func() {
		for _, f := range release {
			f()
		}
	}()
	read := func(name string) ([]byte, error) {
		b, done, err := readFile(filepath.Join(l.dir, name))
		if err == nil {
			release = append(release, done)
		}
		return b, err
	}
	if len(ls.snaps) > 0 {
		if snap, err = read(snapName(base)); err != nil {
			return meta, nil, err
		}
	}
	logs := make([][]byte, len(segs))
	for i, n := range segs {
		if logs[i], err = read(segName(n)); err != nil {
			return meta, nil, err
		}
	}
	// The format of the newest file: if older than this qmaster's, an
	// older one wrote last, and the directory moves to this format now,
	// for good.
	last := formatOf(logMagic)
	for _, b := range append([][]byte{snap}, logs...) {
		if len(b) >= headerLen && (isLogMagic(string(b[:headerLen])) || isSnapMagic(string(b[:headerLen]))) {
			last = formatOf(string(b[:headerLen]))
		}
	}
	var sc scan
	sc.file(snap)
	for _, b := range logs {
		sc.file(b)
	}
	st := &state{tasks: make([]store.Task, 0, sc.adds), index: newIDIndex(sc.adds, sc.lo, sc.hi)}
	prefault(st.tasks)
	dec := &decoder{}
	var replayed int64
	if len(ls.snaps) > 0 {
		size, err := l.loadSnapshot(base, snap, st, dec)
		if err != nil {
			return meta, nil, err
		}
		snap = nil
		l.snapSize.Store(size)
	}
	for i, n := range segs {
		size, warn, err := l.replay(n, logs[i], i == len(segs)-1, st, dec)
		logs[i] = nil
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
	if n := len(segs); n > 0 {
		next = segs[n-1] + 1
		if _, err := os.Stat(filepath.Join(l.dir, segName(segs[n-1]))); errors.Is(err, os.ErrNotExist) {
			// Dropped by replay (created, its header not yet on disk):
			// its number is used again, so that none is missing.
			next, segs = segs[n-1], segs[:n-1]
		}
	}
	next = max(next, 1)
	// What was replayed is on disk before anything is written after it:
	// the process that wrote it may have died before its data reached
	// the disk, and a machine crash now would leave a damaged segment
	// that is no longer the newest, which stops the next start.
	for _, n := range segs {
		if err := syncFile(filepath.Join(l.dir, segName(n))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return meta, nil, err
		}
	}
	if err := l.createSegment(next); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return meta, nil, fmt.Errorf("%w: the data directory %s has no room to start a new log segment: free some space and start again (nothing was lost): %w", store.ErrDiskFull, l.dir, err)
		}
		return meta, nil, err
	}
	if cur := formatOf(logMagic); last < cur {
		warn := fmt.Errorf("the data directory was in log format %s and is now in format %s, which qmasters built before %s cannot read: to go back to one, restore a copy of the directory made before this start",
			last, cur, formatSince[cur])
		meta.Warnings = append(meta.Warnings, warn.Error())
		l.opts.OnEvent("data directory moved to a newer format", warn)
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
	meta.Deletions = st.deletions
	l.live = int64(meta.Tasks)
	return meta, tasks, nil
}

// scan counts the records that add a task (Add or Move) in the files of
// a data directory, reading their headers and IDs only, and the range of
// their IDs: to size the state at once (growing it as the records came
// copied a million tasks about twice over and cost a restarted master a
// second) and to choose its index.
type scan struct {
	adds   int
	lo, hi uint64
}

// file scans the records of the file b, up to the first that is cut short
// or damaged in its header; a file too short for its header has none.
func (sc *scan) file(b []byte) {
	if len(b) < headerLen {
		return
	}
	b = b[headerLen:]
	for len(b) > recHeaderLen {
		size := binary.LittleEndian.Uint32(b)
		if size == 0 || size > maxRecord || uint64(len(b)-recHeaderLen) < uint64(size) {
			break
		}
		body := b[recHeaderLen : recHeaderLen+int(size)]
		if k := store.Kind(body[0]); k == store.Add || k == store.Move {
			id, n := binary.Uvarint(body[1:])
			if n > 0 {
				if sc.adds == 0 || id < sc.lo {
					sc.lo = id
				}
				sc.hi = max(sc.hi, id)
			}
			sc.adds++
		}
		b = b[recHeaderLen+int(size):]
	}
}

// loadSnapshot applies snapshot n to st and returns its size. Any damage
// is an error: a snapshot is renamed into place only once complete.
func (l *Log) loadSnapshot(n uint64, b []byte, st *state, dec *decoder) (int64, error) {
	name := filepath.Join(l.dir, snapName(n))
	if len(b) < headerLen || !isSnapMagic(string(b[:headerLen])) {
		return 0, headerError(name, b, "QMSNP", "snapshot")
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
		case store.Key, store.SetPolicy, store.Deleted:
		default:
			return 0, fmt.Errorf("%w: %s at offset %d: %v record in a snapshot", store.ErrCorrupt, name, off-k, op.Kind)
		}
		st.apply(&op)
	}
}

// replay applies segment n, whose bytes are b, to st and returns its
// size. In the newest segment (last) a bad record is a torn write: the
// file is cut there and warn says what was dropped. Elsewhere it is an
// error.
func (l *Log) replay(n uint64, b []byte, last bool, st *state, dec *decoder) (size int64, warn, err error) {
	name := filepath.Join(l.dir, segName(n))
	if len(b) < headerLen || !isLogMagic(string(b[:headerLen])) {
		if last && (len(b) < headerLen && bytes.HasPrefix([]byte(logMagic), b) || isZero(b)) {
			// Created, header not yet on disk: nothing in it.
			if err := os.Remove(name); err != nil {
				return 0, nil, err
			}
			return 0, fmt.Errorf("dropped %s: a segment without a complete header (%d bytes), cut short by a crash", name, len(b)), nil
		}
		return 0, nil, headerError(name, b, "QMLOG", "log segment")
	}
	var op store.Op
	off := headerLen
	for off < len(b) {
		// start is where the records that stand or fall together begin:
		// the group's record, if bad is in a group.
		start, bad := off, off
		k, derr := dec.decode(b[off:], &op)
		if derr == nil && op.Kind == kindGroup {
			// The group's records are checked whole first, then decoded
			// and applied: a group may hold a purge of millions.
			p := off + k
			for left := op.Task.ID; derr == nil && left > 0; left-- {
				bad = p
				var rk int
				var kind store.Kind
				rk, kind, derr = checkRecord(b[p:])
				if derr == nil && (kind == kindGroup || kind == kindMeta) {
					derr = fmt.Errorf("%w: %v record in a group", errBadBody, kind)
				}
				p += rk
			}
			if derr == nil {
				for off += k; off < p; off += k {
					k = recHeaderLen + int(binary.LittleEndian.Uint32(b[off:])) // checked
					if err := dec.decodeBody(b[off+recHeaderLen:off+k], &op); err != nil {
						// Whole, so not torn: damaged.
						return 0, nil, fmt.Errorf("%w: %s at offset %d: %w", store.ErrCorrupt, name, off, err)
					}
					st.apply(&op)
				}
				continue
			}
		}
		if derr == nil && op.Kind == kindMeta {
			derr = fmt.Errorf("%w: snapshot trailer in a log segment", errBadBody)
		}
		if derr != nil {
			if !last {
				return 0, nil, fmt.Errorf("%w: %s at offset %d: %w", store.ErrCorrupt, name, bad, derr)
			}
			// A write cut short by a crash ends the file, or leaves pages
			// the disk never got (zeros) before later ones it did; good
			// records after bad bytes that are not such a hole are
			// damage to records that may have been acknowledged.
			if p := nextRecord(b[bad:], dec); p > 0 && !hasHole(b[bad:bad+p]) && !zerosToSector(b, bad) {
				return 0, nil, fmt.Errorf("%w: %s at offset %d: %w, and %d bytes of good records follow: not a write cut short by a crash, so the master does not start (restore the file, or move it aside to lose what it holds from offset %d)", store.ErrCorrupt, name, bad, derr, len(b)-bad-p, start)
			}
			if err := truncate(name, int64(start)); err != nil {
				return 0, nil, err
			}
			return int64(start), fmt.Errorf("dropped a torn tail of %s: %d bytes from offset %d: %w", name, len(b)-start, start, derr), nil
		}
		st.apply(&op)
		off += k
	}
	return int64(len(b)), nil, nil
}

// nextRecord returns the offset in b of the first good record after the
// bad one at its start, or -1.
func nextRecord(b []byte, dec *decoder) int {
	var op store.Op
	for p := 1; p+recHeaderLen <= len(b); p++ {
		if n := binary.LittleEndian.Uint32(b[p:]); n == 0 || uint64(n) > uint64(len(b)-p-recHeaderLen) {
			continue
		}
		if _, err := dec.decode(b[p:], &op); err == nil && op.Kind != kindMeta {
			return p
		}
	}
	return -1
}

// holeLen is the shortest run of zeros taken for a hole: a disk sector.
const holeLen = 512

// hasHole reports whether b holds holeLen zeros in a row.
func hasHole(b []byte) bool {
	run := 0
	for _, c := range b {
		if run++; c != 0 {
			run = 0
		} else if run >= holeLen {
			return true
		}
	}
	return false
}

// zerosToSector reports whether b, a whole file, holds zeros from off up
// to a sector's end: a sector the disk kept as it was when the file ended
// at off (a write after it cut short by a power loss), whatever the
// later sectors kept.
func zerosToSector(b []byte, off int) bool {
	i := off
	for i < len(b) && b[i] == 0 {
		i++
	}
	return i > off && i%holeLen == 0
}

// syncFile fsyncs the file name.
func syncFile(name string) error {
	f, err := openToSync(name)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", name, err)
	}
	return f.Close()
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
