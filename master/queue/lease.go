package queue

import "container/heap"

// lease is one leased task. It sits in three indexes of its queue: the
// id map, the deadline order and its owner's list.
type lease struct {
	task     Task
	owner    uint64
	deadline int64 // nanoseconds since Manager.epoch
	start    int64 // when it was leased, in nanoseconds since Manager.epoch

	prev, next    *lease     // owner's list
	before, after *lease     // its deadline list, earlier and later
	list          *leaseList // the deadline list it is in, or nil: in spill
	index         int        // its place in leaseOrder.spill, if there
}

// earlier reports whether a expires before b (by deadline, then ID).
func earlier(a, b *lease) bool {
	if a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.task.ID < b.task.ID
}

// leaseOrder keeps a queue's leases in order of deadline. Leases of one
// length (a deadline is the queue's clock plus the length asked for)
// arrive in order of deadline, so each length has a list that takes them
// at its tail, and any lease leaves its list in O(1); the earliest
// deadline is the earliest of the lists' heads. A heap costs O(log n) a
// lease, which at 256 tasks a get was a tenth of the master's time.
type leaseOrder struct {
	lists []*leaseList
	// spill is a heap of the leases whose length found no list: all
	// lists were taken by other lengths still held.
	spill spillHeap
	n     int
}

// spillHeap is a min-heap of leases by deadline (then ID), for
// container/heap.
type spillHeap []*lease

func (h spillHeap) Len() int           { return len(h) }
func (h spillHeap) Less(i, j int) bool { return earlier(h[i], h[j]) }
func (h spillHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *spillHeap) Push(x any) {
	l := x.(*lease)
	l.index = len(*h)
	*h = append(*h, l)
}
func (h *spillHeap) Pop() any {
	old := *h
	l := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return l
}

// leaseList is the leases of one length, in order of deadline.
type leaseList struct {
	length      int64
	first, last *lease
}

// maxLeaseLists bounds the lists. A list no lease is in any more takes
// the next new length; past the bound, leases of further lengths go to a
// heap (a list shared by lengths would have to be walked).
const maxLeaseLists = 16

func (o *leaseOrder) len() int { return o.n }

// add puts l, leased for length, in order.
func (o *leaseOrder) add(l *lease, length int64) {
	var ll, empty *leaseList
	for _, c := range o.lists {
		if c.length == length {
			ll = c
			break
		}
		if empty == nil && c.first == nil {
			empty = c
		}
	}
	switch {
	case ll != nil:
	case empty != nil: // a length no lease has any more
		ll = empty
		ll.length = length
	case len(o.lists) < maxLeaseLists:
		ll = &leaseList{length: length}
		o.lists = append(o.lists, ll)
	default:
		heap.Push(&o.spill, l)
		o.n++
		return
	}
	// Walk back past the leases that expire after l: none, but for a
	// clock read before another caller took the lock.
	p := ll.last
	for p != nil && earlier(l, p) {
		p = p.before
	}
	l.list = ll
	l.before = p
	if p == nil {
		l.after = ll.first
		ll.first = l
	} else {
		l.after = p.after
		p.after = l
	}
	if l.after == nil {
		ll.last = l
	} else {
		l.after.before = l
	}
	o.n++
}

// remove takes l out of the order.
func (o *leaseOrder) remove(l *lease) {
	o.n--
	ll := l.list
	if ll == nil {
		heap.Remove(&o.spill, l.index)
		return
	}
	if l.before == nil {
		ll.first = l.after
	} else {
		l.before.after = l.after
	}
	if l.after == nil {
		ll.last = l.before
	} else {
		l.after.before = l.before
	}
	l.before, l.after, l.list = nil, nil, nil
}

// first returns the lease that expires first, or nil.
func (o *leaseOrder) first() *lease {
	var f *lease
	if len(o.spill) > 0 {
		f = o.spill[0]
	}
	for _, ll := range o.lists {
		if h := ll.first; h != nil && (f == nil || earlier(h, f)) {
			f = h
		}
	}
	return f
}

// ownerHead is the list of one owner's leases in one queue. It stays in
// queue.owners while the owner holds nothing, so a worker taking one task
// at a time does not re-insert it on every Get; sweepOwners drops idle ones.
type ownerHead struct {
	first *lease
	n     int
}

// maxFreeLeases bounds the per-queue free list of lease structs.
const maxFreeLeases = 1024

// addLease leases *t to owner from start until deadline, a lease of
// length. Called with q.mu held.
func (q *queue) addLease(t *Task, owner uint64, start, deadline, length int64) {
	var l *lease
	if n := len(q.free); n > 0 {
		l = q.free[n-1]
		q.free[n-1] = nil
		q.free = q.free[:n-1]
	} else {
		l = new(lease)
	}
	l.task = *t
	l.owner = owner
	l.deadline = deadline
	l.start = start
	q.leases[t.ID] = l
	q.order.add(l, length)
	if l.before == nil && q.order.first() == l {
		q.sig = true // a new earliest deadline in this queue
	}
	h := q.owners[owner]
	if h == nil {
		h = new(ownerHead)
		q.owners[owner] = h
	} else if h.n == 0 {
		q.idleOwners--
	}
	l.next = h.first
	if h.first != nil {
		h.first.prev = l
	}
	h.first = l
	h.n++
}

// unlease removes l from every index, recycles it and returns its task.
// Called with q.mu held.
func (q *queue) unlease(l *lease) Task {
	t := l.task
	delete(q.leases, t.ID)
	q.order.remove(l)
	h := q.owners[l.owner]
	if l.prev != nil {
		l.prev.next = l.next
	} else {
		h.first = l.next
	}
	if l.next != nil {
		l.next.prev = l.prev
	}
	if h.n--; h.n == 0 {
		q.idleOwners++
		if q.idleOwners > maxIdleOwners && q.idleOwners > len(q.owners)/2 {
			q.sweepOwners()
		}
	}
	*l = lease{}
	if len(q.free) < maxFreeLeases {
		q.free = append(q.free, l)
	}
	return t
}

// maxIdleOwners is how many owners holding nothing a queue remembers
// before it sweeps them out (when they are also half of all its owners).
const maxIdleOwners = 256

// sweepOwners forgets every owner that holds no lease; amortized O(1) per
// unlease. Called with q.mu held.
func (q *queue) sweepOwners() {
	for o, h := range q.owners {
		if h.n == 0 {
			delete(q.owners, o)
		}
	}
	q.idleOwners = 0
}

// setDeadline moves l's deadline, that of a lease of length from now.
// Called with q.mu held.
func (q *queue) setDeadline(l *lease, deadline, length int64) {
	sooner := deadline < l.deadline
	q.order.remove(l)
	l.deadline = deadline
	q.order.add(l, length)
	if sooner && q.order.first() == l {
		q.sig = true
	}
}
