package queue

import (
	"sync"
	"time"

	"github.com/qm-dev/qm/store"
)

// getter is a Get blocked on an empty queue. Whoever makes tasks ready
// serves it under the queue lock: it leases the tasks for the getter, sets
// served and sends them on ch (buffered, so the send never blocks). A
// getter woken by its ctx or by Close checks served under the lock to know
// whether tasks are on their way.
type getter struct {
	req    GetRequest // Lease already defaulted
	served bool
	dst    []Task      // the array to take the tasks into, if large enough
	ch     chan []Task // cap 1; nil tasks mean the queue was deleted
	timer  *time.Timer // for GetRequest.MaxWait; kept with the getter in its pool

	prev, next *getter
}

var getterPool = sync.Pool{New: func() any { return &getter{ch: make(chan []Task, 1)} }}

// startTimer starts g's timer for d and returns its channel. Stopped timers
// deliver no stale tick (Go 1.23 timers), so a pooled getter's timer is
// reused as is.
func (g *getter) startTimer(d time.Duration) <-chan time.Time {
	if g.timer == nil {
		g.timer = time.NewTimer(d)
	} else {
		g.timer.Reset(d)
	}
	return g.timer.C
}

// getterList is a FIFO of blocked getters.
type getterList struct {
	head, tail *getter
	n          int
}

func (l *getterList) pushBack(g *getter) {
	g.prev, g.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = g
	} else {
		l.head = g
	}
	l.tail = g
	l.n++
}

func (l *getterList) remove(g *getter) {
	if g.prev != nil {
		g.prev.next = g.next
	} else {
		l.head = g.next
	}
	if g.next != nil {
		g.next.prev = g.prev
	} else {
		l.tail = g.prev
	}
	g.prev, g.next = nil, nil
	l.n--
}

// putter is a Put waiting for room in a queue with a max length. Whoever
// frees the room adds its items for it under the queue lock and sends the
// result on ch, as for getters.
type putter struct {
	items  []Item
	served bool
	ch     chan putResult // cap 1

	prev, next *putter
}

type putResult struct {
	ids    []uint64
	first  uint64       // the lowest id the put gave (see push)
	ticket store.Ticket // to wait on for durability
	retry  bool         // the queue was deleted: start again on a new one
	err    error        // its IDs could not be reserved (push)
}

// putterList is a FIFO of waiting putters.
type putterList struct {
	head, tail *putter
	n          int
}

func (l *putterList) pushBack(p *putter) {
	p.prev, p.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = p
	} else {
		l.head = p
	}
	l.tail = p
	l.n++
}

func (l *putterList) remove(p *putter) {
	if p.prev != nil {
		p.prev.next = p.next
	} else {
		l.head = p.next
	}
	if p.next != nil {
		p.next.prev = p.prev
	} else {
		l.tail = p.prev
	}
	p.prev, p.next = nil, nil
	l.n--
}
