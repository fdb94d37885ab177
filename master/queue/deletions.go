package queue

import (
	"time"

	"github.com/qm-dev/qm/store"
)

// Deletion is a client's deletion of a queue, as the server remembers it:
// the results of tasks put before At go nowhere, and the tasks put before
// CancelAt that reply to the queue are cancelled.
type Deletion = store.Deletion

// DeletionKept is how long a deletion is remembered: longer than a task
// waits in a queue and runs, for all but the rarest.
const DeletionKept = 24 * time.Hour

// maxDeletionsKept bounds the deletions a Manager keeps for its store;
// past it, the older half go. A variable for tests.
var maxDeletionsKept = 100_000

// KeepDeletion stores the deletion of the queue name, so that Deletions
// returns it after a restart, and returns once it is durable (at once
// without a store). Each of its times only moves forward.
func (m *Manager) KeepDeletion(name string, d Deletion) error {
	if m.store == nil {
		return nil
	}
	m.deletionsMu.Lock()
	if len(m.deletions) >= maxDeletionsKept {
		m.forgetDeletionsLocked()
		if len(m.deletions) >= maxDeletionsKept {
			m.forgetOlderHalfLocked()
		}
	}
	old := m.deletions[name]
	if old.At.After(d.At) {
		d.At = old.At
	}
	if old.CancelAt.After(d.CancelAt) {
		d.CancelAt = old.CancelAt
	}
	m.deletions[name] = d
	// Appended under the lock, so that the store's order is the map's.
	ticket := m.store.Append(store.Op{Kind: store.Deleted, Task: store.Task{Queue: name, Enqueued: d.At, Due: d.CancelAt}})
	m.deletionsMu.Unlock()
	return m.wait(ticket)
}

// Deletions returns the deletions of the last DeletionKept that the store
// held when the Manager was made, and those kept since; none without a
// store.
func (m *Manager) Deletions() (map[string]Deletion, error) {
	m.deletionsMu.Lock()
	defer m.deletionsMu.Unlock()
	m.forgetDeletionsLocked()
	out := make(map[string]Deletion, len(m.deletions))
	for name, d := range m.deletions {
		out[name] = d
	}
	return out, nil
}

// forgetDeletionsLocked drops the deletions older than DeletionKept.
// Called with deletionsMu held.
func (m *Manager) forgetDeletionsLocked() {
	cut := m.now().Add(-DeletionKept)
	for name, d := range m.deletions {
		if d.At.Before(cut) {
			delete(m.deletions, name)
		}
	}
}

// forgetOlderHalfLocked drops the deletions older than their mean age,
// about half. Called with deletionsMu held.
func (m *Manager) forgetOlderHalfLocked() {
	now := m.now()
	var sum time.Duration
	for _, d := range m.deletions {
		sum += now.Sub(d.At) / time.Duration(len(m.deletions))
	}
	cut := now.Add(-sum)
	for name, d := range m.deletions {
		if d.At.Before(cut) {
			delete(m.deletions, name)
		}
	}
	for name := range m.deletions { // all of an age: any half
		if len(m.deletions) <= maxDeletionsKept/2 {
			break
		}
		delete(m.deletions, name)
	}
}

// dumpDeletions emits the deletions still remembered, for a snapshot.
func (m *Manager) dumpDeletions(emit func(*store.Op) error) error {
	m.deletionsMu.Lock()
	defer m.deletionsMu.Unlock()
	m.forgetDeletionsLocked()
	for name, d := range m.deletions {
		op := store.Op{Kind: store.Deleted, Task: store.Task{Queue: name, Enqueued: d.At, Due: d.CancelAt}}
		if err := emit(&op); err != nil {
			return err
		}
	}
	return nil
}
