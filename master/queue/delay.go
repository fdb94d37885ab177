package queue

import (
	"math/rand/v2"
	"time"

	"github.com/qm-dev/qm/store"
)

// A delayed task waits in its queue's delay heap, invisible to gets,
// until it is due: a task put with a delay, or a failed one waiting out
// its retry backoff. One heap per queue and the Manager's one timer
// (ReapLeases) serve them all: no goroutine or timer per task.

// delayed is a task in the delay heap: 80 bytes, so that a million fit in
// a small master.
type delayed struct {
	due int64 // unix nanoseconds
	e   entry
}

// retry reports whether the task is waiting out a backoff after a failed
// attempt (it goes back to the front of its queue when due), not a
// delayed put (it joins the back). A failed task has had a delivery; a
// delayed put has not.
func (d *delayed) retry() bool { return d.e.attempts > 0 }

// delayHeap is a min-heap by due time, then Seq, kept in fixed-size
// blocks: growing it adds a block instead of copying the heap into an
// array a quarter larger, which with a million tasks left several
// hundred MB of old arrays for the GC.
type delayHeap struct {
	blocks []*delayBlock
	n      int
	meta   *entryMeta // the meta of the last push, shared when the next one matches
}

// delayBlockLen is how many tasks one block holds (40 KiB).
const delayBlockLen = 512

type delayBlock [delayBlockLen]delayed

func (h *delayHeap) len() int { return h.n }

// at returns the i-th element of the heap's array; 0 <= i < h.n.
func (h *delayHeap) at(i int) *delayed { return &h.blocks[i/delayBlockLen][i%delayBlockLen] }

func (h *delayHeap) less(i, j int) bool {
	a, b := h.at(i), h.at(j)
	if a.due != b.due {
		return a.due < b.due
	}
	return a.e.seq < b.e.seq
}

func (h *delayHeap) swap(i, j int) {
	a, b := h.at(i), h.at(j)
	*a, *b = *b, *a
}

func (h *delayHeap) push(d delayed) {
	if h.n == len(h.blocks)*delayBlockLen {
		h.blocks = append(h.blocks, new(delayBlock))
	}
	*h.at(h.n) = d
	h.n++
	h.up(h.n - 1)
}

func (h *delayHeap) up(i int) {
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(i, parent) {
			return
		}
		h.swap(i, parent)
		i = parent
	}
}

// pop removes and returns the earliest; the heap must not be empty.
func (h *delayHeap) pop() delayed {
	d := *h.at(0)
	h.n--
	*h.at(0) = *h.at(h.n)
	*h.at(h.n) = delayed{} // drop the payload reference
	h.shrink()
	h.down(0)
	return d
}

// shrink drops the blocks past the end but one, so that a heap that
// drained gives its memory back.
func (h *delayHeap) shrink() {
	need := (h.n + delayBlockLen - 1) / delayBlockLen
	for len(h.blocks) > need+1 {
		h.blocks[len(h.blocks)-1] = nil
		h.blocks = h.blocks[:len(h.blocks)-1]
	}
	if h.n == 0 {
		h.meta = nil
	}
}

func (h *delayHeap) down(i int) {
	for {
		l := 2*i + 1
		if l >= h.n {
			return
		}
		m := l
		if r := l + 1; r < h.n && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h.swap(i, m)
		i = m
	}
}

// removeIf moves the tasks take accepts (all if take is nil) to *out and
// keeps the heap order of the others.
func (h *delayHeap) removeIf(take func(d *delayed) bool, out *[]delayed) {
	kept := 0
	for i := range h.n {
		d := h.at(i)
		if take == nil || take(d) {
			*out = append(*out, *d)
			continue
		}
		if kept != i {
			*h.at(kept) = *d
		}
		kept++
	}
	for i := kept; i < h.n; i++ {
		*h.at(i) = delayed{}
	}
	h.n = kept
	h.shrink()
	for i := kept/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// clear drops every task and releases the blocks.
func (h *delayHeap) clear() { *h = delayHeap{} }

// delay puts t in the delay heap until due. Called with q.mu held; the
// caller records the change.
func (q *queue) delay(t *Task, due time.Time) {
	d := delayed{due: due.UnixNano(), e: packEntry(t, &q.delayed.meta)}
	if d.retry() {
		q.retrying++
	}
	if q.delayed.len() == 0 || d.due < q.delayed.at(0).due {
		q.sig = true // the reaper's timer may have to fire sooner
	}
	q.delayed.push(d)
}

// promote makes ready every delayed task due at or before now (unix
// nanoseconds): a retry goes back to the front of its queue, a delayed put
// joins the back, each as it would have without its delay. Called with
// q.mu held; the caller must settle.
func (q *queue) promote(now int64) int {
	n := 0
	for q.delayed.len() > 0 && q.delayed.at(0).due <= now {
		d := q.delayed.pop()
		q.makeReady(&d)
		n++
	}
	if n > 0 {
		// Not waited for: after a crash the task is found delayed with a
		// due time that has passed, and is made ready again.
		q.log.commit()
	}
	return n
}

// makeReady moves d, out of the heap already, to the ready tasks: a retry
// to the front, a delayed put to the back. Called with q.mu held; the
// caller commits and settles.
func (q *queue) makeReady(d *delayed) {
	t := d.e.task()
	if d.retry() {
		q.retrying--
		q.pushFront(t, store.Requeue)
		return
	}
	t.seq = q.m.seq.Add(1)
	q.ready.pushBack(t)
	q.log.record(store.Requeue, t)
}

// nextDue is the due time of the earliest delayed task, in unix
// nanoseconds; ok is false if none is delayed. Called with q.mu held.
func (q *queue) nextDue() (due int64, ok bool) {
	if q.delayed.len() == 0 {
		return 0, false
	}
	return q.delayed.at(0).due, true
}

// Backoff is how long a task that failed its attempt-th delivery waits
// before the next under policy p: none without a backoff; else BackoffMin after
// the first failure, doubling with each to at most BackoffMax, and then
// drawn at random from its upper half, so that tasks that failed together
// do not all come back at once.
func Backoff(p Policy, attempt int) time.Duration {
	if p.BackoffMin <= 0 {
		return 0
	}
	d := p.BackoffMin
	for i := 1; i < attempt && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, max(p.BackoffMax, p.BackoffMin))
	half := d / 2
	return d - half + rand.N(half+1)
}

// removeDelayed takes the delayed puts ids (never handed out: a task
// waiting out its backoff has run, and stays) out of the heap, appending
// them to *ts, and returns the ids it did not find. Called with q.mu
// held.
func (q *queue) removeDelayed(ids []uint64, ts *[]Task) (missing []uint64) {
	want := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var out []delayed
	q.delayed.removeIf(func(d *delayed) bool { return want[d.e.id] && !d.retry() }, &out)
	for i := range out {
		delete(want, out[i].e.id)
		*ts = append(*ts, out[i].e.task())
	}
	for _, id := range ids {
		if want[id] {
			missing = append(missing, id)
		}
	}
	return missing
}
