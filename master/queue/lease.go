package queue

import "container/heap"

// lease is one leased task. It sits in three indexes of its queue: the
// id map, the deadline heap and its owner's list.
type lease struct {
	task     Task
	owner    uint64
	deadline int64 // nanoseconds since Manager.epoch
	start    int64 // when it was leased, in nanoseconds since Manager.epoch
	index    int   // position in leaseHeap

	prev, next *lease // owner's list
}

// leaseHeap is a min-heap of leases by deadline (then ID), for container/heap.
type leaseHeap []*lease

func (h leaseHeap) Len() int { return len(h) }

func (h leaseHeap) Less(i, j int) bool {
	a, b := h[i], h[j]
	if a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.task.ID < b.task.ID
}

func (h leaseHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *leaseHeap) Push(x any) {
	l := x.(*lease)
	l.index = len(*h)
	*h = append(*h, l)
}

func (h *leaseHeap) Pop() any {
	old := *h
	n := len(old) - 1
	l := old[n]
	old[n] = nil
	*h = old[:n]
	l.index = -1
	return l
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

// addLease leases *t to owner from start until deadline. Called with
// q.mu held.
func (q *queue) addLease(t *Task, owner uint64, start, deadline int64) {
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
	heap.Push(&q.heap, l)
	if l.index == 0 {
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
	heap.Remove(&q.heap, l.index)
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

// setDeadline moves l's deadline. Called with q.mu held.
func (q *queue) setDeadline(l *lease, deadline int64) {
	earlier := deadline < l.deadline
	l.deadline = deadline
	heap.Fix(&q.heap, l.index)
	if earlier && l.index == 0 {
		q.sig = true
	}
}
