package queue

import (
	"container/heap"
	"errors"
	"fmt"
	"time"

	"github.com/qm-dev/qm/store"
)

// Stats describes one queue.
type Stats struct {
	Queue       string
	Ready       int
	Leased      int
	Done        uint64        // acked or taken with noAck
	Dead        int           // tasks now in this queue's dead-letter queue (ready, delayed and leased)
	Consumers   int           // Gets currently blocked waiting on this queue
	Producers   int           // Puts currently blocked waiting for room in this queue
	OldestReady time.Duration // age (now - Enqueued) of the task at the front; 0 if none
	MaxLen      int           // 0 = unlimited
	Paused      bool          // hands out no task (Pause)
	// Delayed counts the tasks not yet due: delayed puts and, of them,
	// Retrying, failed tasks waiting out their backoff. NextDue is when
	// the first is due; zero if none.
	Delayed, Retrying int
	NextDue           time.Time
	// Policy is the queue's retry policy in effect, defaults filled in.
	Policy Policy
	// Totals since the queue was created, counted in tasks. Gets counts
	// deliveries (less those undone by Unget). Nacks, Expired and
	// Disconnected count failed attempts: a worker's failure, a lease
	// that ran out, a lease whose worker disconnected (Release).
	Puts, Gets, Acks, Nacks, Expired, Disconnected uint64
	// Unread says the queue's figures could not be read in time (a
	// gateway whose JetStream is slow to answer): only Queue is set.
	Unread bool
}

// stats fills everything but Dead. Called with q.mu held.
func (q *queue) stats(now time.Time) Stats {
	s := Stats{
		Queue:     q.name,
		Ready:     q.ready.len(),
		Delayed:   q.delayed.len(),
		Retrying:  q.retrying,
		Policy:    q.m.effective(q.policy),
		Leased:    len(q.leases),
		Done:      q.done,
		Consumers: q.getters.n,
		Producers: q.putters.n,
		MaxLen:    q.maxLen,
		Paused:    q.paused,
		Puts:      q.puts,
		Gets:      q.gets,
		Acks:      q.acks,
		Nacks:     q.nacks,
		Expired:   q.expired,

		Disconnected: q.disconnected,
	}
	if q.ready.len() > 0 {
		s.OldestReady = max(0, now.Sub(q.ready.oldest()))
	}
	if due, ok := q.nextDue(); ok {
		s.NextDue = time.Unix(0, due)
	}
	return s
}

// Stats returns the named queue's figures, or ErrUnknownQueue.
func (m *Manager) Stats(name string) (Stats, error) {
	if m.closed.Load() {
		return Stats{}, ErrClosed
	}
	now := m.now()
	q, err := m.lockLive(name)
	var s Stats
	switch p := m.policyOf(name); {
	case errors.Is(err, ErrUnknownQueue) && p != (Policy{}):
		// Its policy outlives it (a restart drops empty queues, a delete
		// the queue): the figures of an empty queue under it, so that
		// the policy shows (qmaster config QUEUE). Not made again: a
		// read must not bring back a deleted queue.
		s = Stats{Queue: name, Policy: m.effective(p), MaxLen: m.cfg.MaxLen}
	case err != nil:
		return Stats{}, err
	default:
		s = q.stats(now)
		q.mu.Unlock()
	}
	if !IsDeadLetterName(name) {
		if dq := m.lookup(DeadLetterName(name)); dq != nil {
			dq.mu.Lock()
			if !dq.deleted {
				s.Dead = dq.length()
			}
			dq.mu.Unlock()
		}
	}
	return s, nil
}

// AllStats returns the figures of every queue, sorted by queue name. It
// never fails (the error is a cluster's, in master.Queues).
func (m *Manager) AllStats() ([]Stats, error) {
	now := m.now()
	qs := m.sortedSnapshot()
	all := make([]Stats, 0, len(qs))
	length := make(map[string]int, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		if !q.deleted {
			all = append(all, q.stats(now))
			length[q.name] = q.length()
		}
		q.mu.Unlock()
	}
	for i := range all {
		if !IsDeadLetterName(all[i].Queue) {
			all[i].Dead = length[DeadLetterName(all[i].Queue)]
		}
	}
	return all, nil
}

// Queues returns the names of every queue, sorted. It never fails.
func (m *Manager) Queues() ([]string, error) {
	qs := m.sortedSnapshot()
	names := make([]string, len(qs))
	for i, q := range qs {
		names[i] = q.name
	}
	return names, nil
}

// candidates is a heap of positions in a delayHeap, for PeekDelayed.
type candidates struct {
	h   *delayHeap
	pos []int
}

func (c *candidates) Len() int           { return len(c.pos) }
func (c *candidates) Less(i, j int) bool { return c.h.less(c.pos[i], c.pos[j]) }
func (c *candidates) Swap(i, j int)      { c.pos[i], c.pos[j] = c.pos[j], c.pos[i] }
func (c *candidates) Push(x any)         { c.pos = append(c.pos, x.(int)) }
func (c *candidates) Pop() any {
	x := c.pos[len(c.pos)-1]
	c.pos = c.pos[:len(c.pos)-1]
	return x
}

// lockForPeek checks a peek of n tasks and returns the named queue
// locked.
func (m *Manager) lockForPeek(name string, n int) (*queue, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: peek count must be >= 0, got %d", ErrBadArgument, n)
	}
	if m.closed.Load() {
		return nil, ErrClosed
	}
	return m.lockLive(name)
}

// Peek returns copies of the first n ready tasks of the named queue,
// without removing them.
func (m *Manager) Peek(name string, n int) ([]Task, error) {
	q, err := m.lockForPeek(name, n)
	if err != nil {
		return nil, err
	}
	ts := make([]Task, min(n, q.ready.len()))
	for i := range ts {
		ts[i] = q.ready.get(i)
	}
	q.mu.Unlock()
	return ts, nil
}

// PeekDelayed returns copies of the first n delayed tasks of the named
// queue, by due time (each with its Due), without removing them.
func (m *Manager) PeekDelayed(name string, n int) ([]Task, error) {
	q, err := m.lockForPeek(name, n)
	if err != nil {
		return nil, err
	}
	defer q.mu.Unlock()
	// The first n of a heap, in order, without copying it: a second heap
	// of candidate positions, starting from the root; each one taken
	// offers its children. O(n log n) under the lock.
	h := &q.delayed
	n = min(n, h.len())
	ts := make([]Task, 0, n)
	cand := candidates{h: h, pos: make([]int, 0, n+1)}
	if n > 0 {
		heap.Push(&cand, 0)
	}
	for len(ts) < n {
		at := heap.Pop(&cand).(int)
		t := h.at(at).e.task()
		t.Due = time.Unix(0, h.at(at).due)
		ts = append(ts, t)
		for _, c := range [2]int{2*at + 1, 2*at + 2} {
			if c < h.len() {
				heap.Push(&cand, c)
			}
		}
	}
	return ts, nil
}

// Purge drops the ready and delayed tasks of the named queue (leased ones
// stay) and returns how many it dropped.
func (m *Manager) Purge(name string) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	// Changed in memory alone, a crash would undo it: refused while
	// the data directory cannot take it, as puts are.
	if err := m.writable(); err != nil {
		return 0, err
	}
	q, err := m.lockLive(name)
	if err != nil {
		return 0, err
	}
	n := q.ready.len()
	for i := range n {
		t := q.ready.get(i)
		q.log.record(store.Delete, t)
	}
	n += q.dropDelayed()
	ticket := q.log.commit()
	q.ready.clear()
	q.settle(&clock{m: m})
	m.unlock(q)
	m.durable(ticket)
	return n, nil
}

// isPaused reports whether q is paused.
func (m *Manager) isPaused(q *queue) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.paused
}

// Delete removes the named queue and every task in it, ready or leased
// (its dead-letter queue stays). Gets blocked on it return nil, nil at
// once; Puts blocked on it start over on a new queue of that name. Later
// Acks of its leases fail with ErrUnknownQueue.
func (m *Manager) Delete(name string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	// Refused while the data directory cannot take it (Purge).
	if err := m.writable(); err != nil {
		return err
	}
	m.pauseMu.Lock()
	m.deleting[name]++ // its pause is not forgotten before its deletion is stored
	m.pauseMu.Unlock()
	defer func() {
		m.pauseMu.Lock()
		if m.deleting[name]--; m.deleting[name] == 0 {
			delete(m.deleting, name)
		}
		m.pauseMu.Unlock()
	}()
	v, ok := m.queues.LoadAndDelete(name)
	if !ok {
		m.pauseMu.Lock()
		if m.lookup(name) == nil && m.deleting[name] == 1 { // no other deletion of it under way
			m.forgetPause(name)
		}
		m.pauseMu.Unlock()
		return ErrUnknownQueue
	}
	q := v.(*queue)
	q.mu.Lock()
	q.deleted = true
	for g := q.getters.head; g != nil; g = q.getters.head {
		q.getters.remove(g)
		g.served = true
		g.ch <- nil
	}
	for p := q.putters.head; p != nil; p = q.putters.head {
		q.putters.remove(p)
		p.served = true
		p.ch <- putResult{retry: true}
	}
	for i := range q.ready.len() {
		t := q.ready.get(i)
		q.log.record(store.Delete, t)
	}
	for _, l := range q.leases {
		q.log.record(store.Delete, l.task)
	}
	q.dropDelayed()
	if q.keys.len() > 0 {
		// Else a restart would remember them from the tasks' adds.
		q.log.forgetKeys()
	}
	ticket := q.log.commit()
	q.ready.clear()
	q.keys = keyTable{}
	q.leases = nil
	q.order = leaseOrder{}
	q.owners = nil
	q.free = nil
	q.mu.Unlock()
	m.durable(ticket)
	if k, ok := m.store.(store.PauseKeeper); ok {
		// Once the deletion is stored: a queue made anew by that name,
		// even after a restart, is not paused; one paused meanwhile is.
		m.pauseMu.Lock()
		var err error
		if q := m.lookup(name); q == nil || !m.isPaused(q) {
			err = k.SetPaused(name, false)
		}
		m.pauseMu.Unlock()
		if err != nil {
			return fmt.Errorf("%s is deleted, but the data directory did not record the end of its pause, so a restart would make it again, paused: %w", name, err)
		}
	}
	return nil
}

// dropDelayed records the deletes of every delayed task and empties the
// delay heap. Called with q.mu held; the caller commits.
func (q *queue) dropDelayed() int {
	n := q.delayed.len()
	for i := range n {
		q.log.record(store.Delete, Task{ID: q.delayed.at(i).e.id})
	}
	q.delayed.clear()
	q.retrying = 0
	return n
}

// SetMaxLen sets the max length (ready, delayed and leased) of the named queue,
// creating it if needed; 0 means unlimited. Lowering it below the
// current length drops nothing: Puts wait until the queue drains below it.
func (m *Manager) SetMaxLen(name string, n int) error {
	if n < 0 {
		return fmt.Errorf("%w: max length must be >= 0, got %d", ErrBadArgument, n)
	}
	if m.closed.Load() {
		return ErrClosed
	}
	q, err := m.lockOrCreate(name)
	if err != nil {
		return err
	}
	q.maxLen = n
	q.settle(&clock{m: m})
	m.unlock(q)
	return nil
}
