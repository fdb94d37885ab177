package queue

import (
	"math/bits"
	"time"
)

// Priorities run from 0 to MaxPriority; a higher one is handed out first.
const MaxPriority = 9

// readySet is a queue's ready tasks: one deque per priority, handed out
// highest priority first and in order within each. Index i counts in that
// order too (get, id), so peek shows what gets would take.
type readySet struct {
	lv   [MaxPriority + 1]deque
	mask uint16 // bit p set while lv[p] holds a task
	n    int
}

func (r *readySet) len() int { return r.n }

// top is the highest priority that holds a task; r.n must be > 0.
func (r *readySet) top() int { return bits.Len16(r.mask) - 1 }

func (r *readySet) pushBack(t Task) {
	p := t.Priority
	r.lv[p].pushBack(t)
	r.mask |= 1 << p
	r.n++
}

func (r *readySet) pushFront(t Task) {
	p := t.Priority
	r.lv[p].pushFront(t)
	r.mask |= 1 << p
	r.n++
}

// popFront moves the next task to hand out into *dst; r.n must be > 0.
func (r *readySet) popFront(dst *Task) {
	p := r.top()
	d := &r.lv[p]
	d.popFront(dst)
	if d.len() == 0 {
		r.mask &^= 1 << p
	}
	r.n--
}

// at finds the i-th task in hand-out order: its deque and index there.
func (r *readySet) at(i int) (*deque, int) {
	for p := MaxPriority; p >= 0; p-- {
		d := &r.lv[p]
		if i < d.len() {
			return d, i
		}
		i -= d.len()
	}
	panic("queue: ready index out of range")
}

// get returns the i-th task in hand-out order; 0 <= i < r.n.
func (r *readySet) get(i int) Task {
	d, j := r.at(i)
	return d.get(j)
}

// oldest returns when the longest-waiting ready task was put: the
// earliest of the fronts of the priorities. r.n must be > 0.
func (r *readySet) oldest() time.Time {
	var t time.Time
	for m := r.mask; m != 0; m &= m - 1 {
		e := r.lv[bits.TrailingZeros16(m)].enqueued(0)
		if t.IsZero() || e.Before(t) {
			t = e
		}
	}
	return t
}

// removeIf takes out the tasks whose ID take accepts, in hand-out order,
// and keeps the others in theirs.
func (r *readySet) removeIf(take func(id uint64) bool) []Task {
	var out []Task
	for p := MaxPriority; p >= 0; p-- {
		d := &r.lv[p]
		if d.len() == 0 {
			continue
		}
		ts := d.removeIf(take)
		out = append(out, ts...)
		r.n -= len(ts)
		if d.len() == 0 {
			r.mask &^= 1 << p
		}
	}
	return out
}

// clear drops every task and releases the blocks.
func (r *readySet) clear() { *r = readySet{} }
