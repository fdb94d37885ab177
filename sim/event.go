package sim

import (
	"container/heap"
	"time"
)

// event is one thing that happens at a time; seq breaks ties in the order
// the events were scheduled, so that a run is deterministic.
type event struct {
	at  time.Duration
	seq uint64
	fn  func()
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// clock is the simulated time and the events still to come.
type clock struct {
	now    time.Duration
	seq    uint64
	events eventHeap
}

// after schedules fn to run d from now.
func (c *clock) after(d time.Duration, fn func()) {
	c.seq++
	heap.Push(&c.events, event{at: c.now + d, seq: c.seq, fn: fn})
}

// runUntil runs events in time order until none is left before end.
func (c *clock) runUntil(end time.Duration) {
	for len(c.events) > 0 && c.events[0].at <= end {
		e := heap.Pop(&c.events).(event)
		c.now = e.at
		e.fn()
	}
	c.now = end
}
