package queue

import "github.com/qm-dev/qm/store"

// The result queue of each task queue, as its workers last named it: the
// caller (the server) owns the map, and a store that is a
// store.ResultQueueKeeper keeps it over restarts, so that the error
// result of a task dead-lettered at start-up, with no reply queue, goes
// there at once.

// ResultQueues hands over the result queues, by task queue, that the
// store kept when the Manager was made: a second call returns none. Call
// it before ReapLeases, which tells OnDead of the tasks dead-lettered at
// start-up. None without a store that keeps them.
func (m *Manager) ResultQueues() map[string]string {
	if p := m.resultQueues.Swap(nil); p != nil {
		return *p
	}
	return nil
}

// KeepsResultQueues reports whether the store keeps result queues
// across a restart: without one, KeepResultQueue need not be called.
func (m *Manager) KeepsResultQueues() bool {
	_, ok := m.store.(store.ResultQueueKeeper)
	return ok
}

// KeepResultQueue stores that the workers of the named queue name
// resultQueue as their result queue; "" forgets it (the queue was
// deleted). It returns once that is durable, or the error that kept it
// from being so (the store keeps trying with its next change); at once
// without a store that keeps them. It is for changes: the caller calls
// it only when its map changes, serialising the calls so that the store
// ends with its map.
func (m *Manager) KeepResultQueue(name, resultQueue string) error {
	k, ok := m.store.(store.ResultQueueKeeper)
	if !ok {
		return nil
	}
	return k.SetResultQueue(name, resultQueue)
}

// loadResultQueues keeps the result queues the store found, but for
// names no queue can have (an edit by hand).
func (m *Manager) loadResultQueues(rqs map[string]string) {
	kept := make(map[string]string, len(rqs))
	for q, rq := range rqs {
		if CheckName(q) == nil && CheckName(rq) == nil {
			kept[q] = rq
		}
	}
	if len(kept) > 0 {
		m.resultQueues.Store(&kept)
	}
}
