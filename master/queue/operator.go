package queue

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/qm-dev/qm/store"
)

// What operators do to queues by hand: pause them, requeue or drop dead
// tasks, and see who holds what.

// SetPaused pauses the named queue, creating it if needed, or resumes
// it. A paused queue hands out no task: Gets wait (or return empty at
// their timeout) as if none were ready; Puts, acks and lease expiry go on.
// Resuming hands the ready tasks to the waiting Gets at once. The pause
// lasts while the queue does: a store that is a store.PauseKeeper keeps
// it over restarts, and a deleted queue comes back unpaused.
func (m *Manager) SetPaused(name string, paused bool) error {
	if m.closed.Load() {
		return ErrClosed
	}
	// One at a time, so that the store's record and the queues agree.
	m.pauseMu.Lock()
	defer m.pauseMu.Unlock()
	for {
		var (
			q   *queue
			err error
		)
		if paused {
			q, err = m.lookupOrCreate(name)
		} else if q = m.lookup(name); q == nil {
			if m.deleting[name] == 0 { // else its deletion forgets it once stored
				m.forgetPause(name)
			}
			err = ErrUnknownQueue
		}
		if err != nil {
			return err
		}
		q.mu.Lock()
		if q.deleted {
			q.mu.Unlock()
			if !paused {
				return ErrUnknownQueue
			}
			continue
		}
		q.paused = paused
		q.settle(&clock{m: m})
		m.unlock(q)
		// Recorded after: a pause is an emergency brake, which a data
		// directory that cannot take it (a full disk) must not hold up.
		// Recorded even if nothing changed here: a record that failed
		// before is made now.
		if k, ok := m.store.(store.PauseKeeper); ok {
			if err := k.SetPaused(name, paused); err != nil {
				if paused {
					return fmt.Errorf("%s is paused, but the data directory did not record it, so a restart would resume it: %w", name, err)
				}
				return fmt.Errorf("%s is resumed, but the data directory did not record it, so a restart would pause it again: %w", name, err)
			}
		}
		return nil
	}
}

// forgetPause drops a record of a pause of the named queue, which does
// not exist: one that a deletion could not drop (a full disk) would
// pause a queue made anew by that name at the next start. Called with
// pauseMu held.
func (m *Manager) forgetPause(name string) {
	if k, ok := m.store.(store.PauseKeeper); ok {
		_ = k.SetPaused(name, false) // best effort: the caller's error stands
	}
}

// Requeue moves the tasks ids (all of them if ids is empty) from the
// ready tasks of the named queue's dead-letter queue to the back of the
// named queue, creating it if needed, ignoring its max length. Each gets
// its attempts anew (Attempts 0) and keeps its LastError. With a store,
// the move is durable when Requeue returns. It returns how many tasks it
// moved; for each id not ready in the dead-letter queue, the joined error
// holds a *TaskError wrapping ErrNoSuchTask, and the other ids still move.
func (m *Manager) Requeue(name string, ids []uint64) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	// Refused while the data directory cannot take it (Purge).
	if err := m.writable(); err != nil {
		return 0, err
	}
	if IsDeadLetterName(name) {
		return 0, fmt.Errorf("%w: requeue names the queue the tasks died in, not its dead-letter queue %q", ErrBadArgument, name)
	}
	if err := CheckName(name); err != nil {
		return 0, err
	}
	dq, err := m.lockLive(DeadLetterName(name))
	if err != nil {
		if len(ids) == 0 && errors.Is(err, ErrUnknownQueue) {
			return 0, nil // no dead-letter queue: nothing to requeue
		}
		return 0, err
	}
	ts, missing := dq.remove(ids)
	dq.settle(&clock{m: m}) // room for waiting Puts
	m.unlock(dq)
	// Between the two locks the tasks are in neither queue in memory, and
	// still in the dead-letter queue in the store until the move below: as
	// in deadLetter, in the other direction.
	for i := range ts {
		ts[i].Attempts = 0
	}
	q, err := m.lockOrCreate(name)
	if err != nil {
		return 0, err // unreachable: the name was checked
	}
	ticket := q.pushBackMoved(ts)
	q.settle(&clock{m: m})
	m.unlock(q)
	m.durable(ticket)
	return len(ts), noSuchTask(missing)
}

// RunNow makes the delayed tasks ids of the named queue (all of them if
// ids is empty) ready at once, as if they had fallen due: a retrying one
// to the front, a delayed put to the back. It returns how many it moved;
// for each id not delayed there, the joined error holds a *TaskError
// wrapping ErrNoSuchTask. With a store, the move is durable when RunNow
// returns.
func (m *Manager) RunNow(name string, ids []uint64) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	// Refused while the data directory cannot take it (Purge).
	if err := m.writable(); err != nil {
		return 0, err
	}
	q, err := m.lockLive(name)
	if err != nil {
		return 0, err
	}
	var take func(*delayed) bool
	want := make(map[uint64]bool, len(ids))
	if len(ids) > 0 {
		for _, id := range ids {
			want[id] = true
		}
		take = func(d *delayed) bool {
			if want[d.e.id] {
				delete(want, d.e.id)
				return true
			}
			return false
		}
	}
	var moved []delayed
	q.delayed.removeIf(take, &moved)
	slices.SortFunc(moved, func(a, b delayed) int { return cmp.Compare(a.e.seq, b.e.seq) })
	// Retries go to the front in reverse, so that they end up in order.
	for i := len(moved) - 1; i >= 0; i-- {
		if moved[i].retry() {
			q.makeReady(&moved[i])
		}
	}
	for i := range moved {
		if !moved[i].retry() {
			q.makeReady(&moved[i])
		}
	}
	ticket := q.log.commit()
	q.settle(&clock{m: m})
	m.unlock(q)
	m.durable(ticket)
	var missing []uint64
	for _, id := range ids {
		if want[id] {
			missing = append(missing, id)
			delete(want, id)
		}
	}
	return len(moved), noSuchTask(missing)
}

// Drop removes the ready tasks ids of the named queue for good (counted
// neither as done nor as failed), and returns how many it removed; for
// each id not ready there, the joined error holds a *TaskError wrapping
// ErrNoSuchTask. With a store, the removal is durable when Drop returns.
func (m *Manager) Drop(name string, ids []uint64) (int, error) {
	if m.closed.Load() {
		return 0, ErrClosed
	}
	// Refused while the data directory cannot take it (Purge).
	if err := m.writable(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, nil
	}
	q, err := m.lockLive(name)
	if err != nil {
		return 0, err
	}
	ts, missing := q.remove(ids)
	q.recordDeletes(ts)
	ticket := q.log.commit()
	q.settle(&clock{m: m}) // room for waiting Puts
	m.unlock(q)
	m.durable(ticket)
	return len(ts), noSuchTask(missing)
}

// remove takes the ready tasks ids (every ready task if ids is empty) out
// of q, in queue order, and returns them and the ids it did not find.
// Called with q.mu held; the caller must settle.
func (q *queue) remove(ids []uint64) (ts []Task, missing []uint64) {
	if len(ids) == 0 {
		ts = make([]Task, q.ready.len())
		for i := range ts {
			q.ready.popFront(&ts[i])
		}
		return ts, nil
	}
	want := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	ts = q.ready.removeIf(func(id uint64) bool {
		if want[id] {
			delete(want, id)
			return true
		}
		return false
	})
	for _, id := range ids {
		if want[id] {
			missing = append(missing, id)
			delete(want, id) // an id given twice is reported once
		}
	}
	return ts, missing
}

func noSuchTask(ids []uint64) error { return TaskErrors(ErrNoSuchTask, ids) }

// LeaseInfo describes a leased task.
type LeaseInfo struct {
	Queue    string
	ID       uint64
	Attempts int       // counting this delivery
	Since    time.Time // when it was handed out
	Deadline time.Time // when the lease runs out unless extended
}

// Leases returns the leased tasks of every owner, each owner's in the
// order they were handed out.
func (m *Manager) Leases() map[uint64][]LeaseInfo {
	out := make(map[uint64][]LeaseInfo)
	if m.closed.Load() {
		return out
	}
	for _, q := range m.snapshot() {
		q.mu.Lock()
		for owner, h := range q.owners {
			from := len(out[owner])
			for l := h.first; l != nil; l = l.next {
				out[owner] = append(out[owner], LeaseInfo{
					Queue: q.name, ID: l.task.ID, Attempts: l.task.Attempts,
					Since:    m.epoch.Add(time.Duration(l.start)),
					Deadline: m.epoch.Add(time.Duration(l.deadline)),
				})
			}
			slices.Reverse(out[owner][from:]) // the list is newest first
		}
		q.mu.Unlock()
	}
	for _, ls := range out {
		// Stable: the tasks of one get share their time.
		slices.SortStableFunc(ls, func(a, b LeaseInfo) int { return a.Since.Compare(b.Since) })
	}
	return out
}
