package queue

import "time"

// entry is a ready task as the deque keeps it: 64 bytes where a Task takes
// over 100, since a million ready tasks must fit in a small master. The
// reply queue and last error, rare or shared by a whole batch, live behind
// one pointer that the tasks of a batch share.
type entry struct {
	payload  []byte
	meta     *entryMeta // nil: no ReplyTo, no LastError
	id       uint64
	enqueued int64 // unix nanoseconds; 0 is the zero time
	seq      int64
	attempts int32
	priority uint8
}

type entryMeta struct {
	replyTo, lastError string
}

// blockLen is how many entries one block of the deque holds (32 KiB).
const blockLen = 512

type block [blockLen]entry

// deque is a double-ended queue of ready tasks in fixed-size blocks: O(1)
// push at both ends and pop at the front, no copying of the tasks as it
// grows, and memory returned block by block as it drains.
type deque struct {
	ring   []*block // ring buffer of blocks; len is 0 or a power of two
	first  int      // ring index of the first block
	blocks int      // blocks in use
	head   int      // index of the front entry in the first block
	n      int      // entries
	spare  *block   // one emptied block kept, so a queue hovering at a block edge does not allocate

	lastMeta *entryMeta // the meta of the last push, shared when the next one matches
}

func (d *deque) len() int { return d.n }

func (d *deque) slot(i int) *entry {
	pos := d.head + i
	return &d.ring[(d.first+pos/blockLen)&(len(d.ring)-1)][pos%blockLen]
}

// get returns the i-th task from the front; 0 <= i < d.n.
func (d *deque) get(i int) Task { return d.slot(i).task() }

// enqueued returns when the i-th task from the front was put.
func (d *deque) enqueued(i int) time.Time { return unixTime(d.slot(i).enqueued) }

func (d *deque) pushBack(t Task) {
	if d.head+d.n == d.blocks*blockLen {
		d.addBlock(false)
	}
	*d.slot(d.n) = d.entry(&t)
	d.n++
}

func (d *deque) pushFront(t Task) {
	if d.head == 0 {
		if d.n > 0 || d.blocks == 0 {
			d.addBlock(true)
		} // else the one block is empty: start again from its end
		d.head = blockLen
	}
	d.head--
	d.n++
	*d.slot(0) = d.entry(&t)
}

// popFront moves the front task into *dst; d.n must be > 0.
func (d *deque) popFront(dst *Task) {
	e := d.slot(0)
	*dst = e.task()
	*e = entry{} // drop the payload reference
	d.head++
	d.n--
	if d.head == blockLen {
		d.head = 0
		d.dropFirstBlock()
	}
	if d.n == 0 {
		d.head = 0 // keep the empty block, if any, for the next push
	}
}

// removeIf takes out the tasks whose ID take accepts, in order, and keeps
// the others in theirs.
func (d *deque) removeIf(take func(id uint64) bool) []Task {
	var out []Task
	kept := 0
	for i := range d.n {
		e := d.slot(i)
		if take(e.id) {
			out = append(out, e.task())
			continue
		}
		if kept != i {
			*d.slot(kept) = *e
		}
		kept++
	}
	for i := kept; i < d.n; i++ {
		*d.slot(i) = entry{} // drop the payload references
	}
	d.n = kept
	// Drop the blocks now empty at the back.
	need := (d.head + d.n + blockLen - 1) / blockLen
	for d.blocks > max(need, 1) {
		last := (d.first + d.blocks - 1) & (len(d.ring) - 1)
		d.ring[last] = nil
		d.blocks--
	}
	if d.n == 0 {
		d.head = 0
	}
	return out
}

func (d *deque) addBlock(front bool) {
	if d.blocks == len(d.ring) {
		ring := make([]*block, max(4, 2*len(d.ring)))
		for i := range d.blocks {
			ring[i] = d.ring[(d.first+i)&(len(d.ring)-1)]
		}
		d.ring, d.first = ring, 0
	}
	b := d.spare
	d.spare = nil
	if b == nil {
		b = new(block)
	}
	mask := len(d.ring) - 1
	if front {
		d.first = (d.first - 1) & mask
		d.ring[d.first] = b
	} else {
		d.ring[(d.first+d.blocks)&mask] = b
	}
	d.blocks++
}

func (d *deque) dropFirstBlock() {
	b := d.ring[d.first]
	d.ring[d.first] = nil
	d.first = (d.first + 1) & (len(d.ring) - 1)
	d.blocks--
	if d.spare == nil {
		d.spare = b // clean: popFront cleared each entry
	}
	if d.blocks == 0 && len(d.ring) > 64 {
		d.ring, d.first = nil, 0 // a drained big queue gives its ring back
	}
}

// entry packs t, sharing the previous push's meta when it is the same.
func (d *deque) entry(t *Task) entry { return packEntry(t, &d.lastMeta) }

// packEntry packs t, sharing *last, the meta of the previous entry packed
// for the same container, when it is the same; else *last becomes t's.
func packEntry(t *Task, last **entryMeta) entry {
	e := entry{payload: t.Payload, id: t.ID, seq: t.seq, attempts: int32(t.Attempts), priority: uint8(t.Priority)}
	if !t.Enqueued.IsZero() {
		e.enqueued = t.Enqueued.UnixNano()
	}
	if t.ReplyTo != "" || t.LastError != "" {
		if m := *last; m != nil && m.replyTo == t.ReplyTo && m.lastError == t.LastError {
			e.meta = m
		} else {
			e.meta = &entryMeta{replyTo: t.ReplyTo, lastError: t.LastError}
			*last = e.meta
		}
	}
	return e
}

func (e *entry) task() Task {
	t := Task{ID: e.id, Payload: e.payload, Attempts: int(e.attempts), Priority: int(e.priority), Enqueued: unixTime(e.enqueued), seq: e.seq}
	if e.meta != nil {
		t.ReplyTo, t.LastError = e.meta.replyTo, e.meta.lastError
	}
	return t
}

func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
