package queue

import (
	"slices"
	"time"
)

// ReapLeases is the Manager's one timer, until done is closed: it expires
// leases as they run out (as ExpireLeases says) and makes delayed tasks
// ready as they fall due (ReleaseDue). It sleeps until the next deadline
// or due time, or until an earlier one is made, rather than polling.
// onExpired, if not nil, is told how many leases of each queue each pass
// expired. It first calls OnDead for the tasks New dead-lettered. The
// caller runs it in a goroutine it owns, once.
func (m *Manager) ReapLeases(done <-chan struct{}, onExpired func(queue string, n int)) {
	for _, d := range m.deadAtLoad {
		m.tellDead(d.queue, d.tasks)
	}
	m.deadAtLoad = nil
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := m.now()
		m.ReleaseDue(now)
		m.expireLeases(now, onExpired)
		wait := time.Hour
		if next, ok := m.NextDeadline(); ok {
			wait = max(next.Sub(m.now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-done:
			return
		case <-timer.C:
		case <-m.leaseCh:
		}
	}
}

// ExpireLeases handles every lease whose deadline is <= now as a Nack with
// LastError "lease expired", and returns how many expired.
func (m *Manager) ExpireLeases(now time.Time) int { return m.expireLeases(now, nil) }

// expireLeases is ExpireLeases, telling each, if not nil, how many leases
// of each queue expired.
func (m *Manager) expireLeases(now time.Time, each func(queue string, n int)) int {
	if m.closed.Load() {
		return 0
	}
	cut := int64(now.Sub(m.epoch))
	n := 0
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if f := q.order.first(); f == nil || f.deadline > cut {
			q.mu.Unlock()
			continue
		}
		var ts []Task
		for f := q.order.first(); f != nil && f.deadline <= cut; f = q.order.first() {
			ts = append(ts, q.unlease(f))
		}
		n += len(ts)
		q.expired += uint64(len(ts))
		c := clock{m: m, t: now, ok: true}
		dead := q.requeueFailed(ts, "lease expired", 0, false, &c)
		q.settle(&c)
		m.unlock(q)
		m.deadLetter(q.name, dead)
		if each != nil {
			each(q.name, len(ts))
		}
	}
	return n
}

// ReleaseDue makes ready every delayed task due at or before now, and
// forgets the idempotency keys older than the dedup window. It returns how
// many tasks it made ready.
func (m *Manager) ReleaseDue(now time.Time) int {
	if m.closed.Load() {
		return 0
	}
	cut := now.UnixNano()
	keyCut := now.Add(-m.cfg.DedupWindow).UnixNano()
	n := 0
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if q.keys.len() > 0 {
			q.keys.expire(keyCut)
		}
		if due, ok := q.nextDue(); !ok || due > cut || q.deleted {
			q.mu.Unlock()
			continue
		}
		n += q.promote(cut)
		q.settle(&clock{m: m, t: now, ok: true})
		m.unlock(q)
	}
	return n
}

// NextDeadline returns the earliest lease deadline or due time of a
// delayed task over all queues; ok is false if there is neither.
func (m *Manager) NextDeadline() (t time.Time, ok bool) {
	if m.closed.Load() {
		return time.Time{}, false
	}
	var lease, due int64
	var leased, delayed bool
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if f := q.order.first(); f != nil && (!leased || f.deadline < lease) {
			lease, leased = f.deadline, true
		}
		if d, ok := q.nextDue(); ok && (!delayed || d < due) {
			due, delayed = d, true
		}
		q.mu.Unlock()
	}
	if leased {
		t, ok = m.epoch.Add(time.Duration(lease)), true
	}
	if delayed && (!ok || time.Unix(0, due).Before(t)) {
		t, ok = time.Unix(0, due), true
	}
	return t, ok
}

// LeaseChanged returns a channel that receives (a non-blocking send,
// buffer 1) whenever a lease deadline or a delayed task's due time earlier
// than the previous earliest may exist, so that a reaper can re-arm its timer from NextDeadline. The
// channel is never closed.
func (m *Manager) LeaseChanged() <-chan struct{} { return m.leaseCh }

// Release returns every task leased by owner, in any queue, as if its
// lease had expired with LastError "worker disconnected": back to the
// front of its queue with Attempts as raised by the Get, or to the
// dead-letter queue if Attempts >= MaxAttempts. Used when a client's
// connection drops. It returns how many tasks it released.
func (m *Manager) Release(owner uint64) int {
	return m.forOwner(owner, func(q *queue, h *ownerHead) int {
		ts := make([]Task, 0, h.n)
		for l := h.first; l != nil; {
			next := l.next
			ts = append(ts, q.unlease(l))
			l = next
		}
		if q.owners[owner] != nil { // not swept by unlease
			delete(q.owners, owner) // the owner is gone: forget it
			q.idleOwners--
		}
		q.disconnected += uint64(len(ts))
		c := clock{m: m}
		dead := q.requeueFailed(ts, "worker disconnected", 0, false, &c)
		q.settle(&c)
		m.unlock(q)
		m.deadLetter(q.name, dead)
		return len(ts)
	})
}

// GiveBack returns every task leased by owner, in any queue, as if its
// get had never delivered it (Unget): to the front of its queue, in the
// order they were handed out, the attempt of that delivery unused. The
// master uses it for its clients' tasks when it stops: it, not they,
// ended their leases. It returns how many tasks it gave back.
func (m *Manager) GiveBack(owner uint64) int {
	return m.forOwner(owner, func(q *queue, h *ownerHead) int {
		ts := make([]Task, 0, h.n)
		for l := h.first; l != nil; l = l.next {
			ts = append(ts, Task{ID: l.task.ID, Attempts: l.task.Attempts})
		}
		slices.Reverse(ts) // the list is newest first
		q.unget(ts, &GetRequest{Queue: q.name, Owner: owner})
		q.settle(&clock{m: m})
		m.unlock(q)
		return len(ts)
	})
}

// forOwner calls f on each live queue where owner holds leases, with its
// lock held, which f releases (m.unlock), and returns the sum of what f
// returns; 0 once the Manager is closed.
func (m *Manager) forOwner(owner uint64, f func(q *queue, h *ownerHead) int) int {
	if m.closed.Load() {
		return 0
	}
	n := 0
	for _, q := range m.snapshot() {
		q.mu.Lock()
		h := q.owners[owner]
		if h == nil || q.deleted {
			q.mu.Unlock()
			continue
		}
		n += f(q, h)
	}
	return n
}

// LeasedBy returns how many tasks owner holds now, over all queues.
func (m *Manager) LeasedBy(owner uint64) int {
	n := 0
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if h := q.owners[owner]; h != nil {
			n += h.n
		}
		q.mu.Unlock()
	}
	return n
}

// deadLetter appends tasks that used up their attempts to the back of
// src's dead-letter queue, ignoring its max length, then calls OnDead for
// each. Called with no lock held.
func (m *Manager) deadLetter(src string, ts []Task) {
	if len(ts) == 0 {
		return
	}
	m.moveToDead(src, ts)
	m.tellDead(src, ts)
}

// tellDead calls OnDead for each of ts, dead-lettered from src.
func (m *Manager) tellDead(src string, ts []Task) {
	if f := m.cfg.OnDead; f != nil {
		for _, t := range ts {
			f(src, t)
		}
	}
}

// moveToDead appends ts to the back of src's dead-letter queue, ignoring
// its max length.
func (m *Manager) moveToDead(src string, ts []Task) {
	name := DeadLetterName(src)
	for {
		q := m.create(name) // a valid name: src was checked, and CheckName allows the suffix
		q.mu.Lock()
		if q.deleted {
			q.mu.Unlock()
			continue
		}
		// Not waited for: until the move is stored, a restart finds the
		// tasks back in src with their attempts used up.
		q.pushBackMoved(ts)
		q.settle(&clock{m: m})
		m.unlock(q)
		return
	}
}
