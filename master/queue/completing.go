package queue

import "slices"

// A completion takes its tasks out of memory (Ack) before their acks are
// appended with their results (Put, through AckRequest.Publish). A
// snapshot taken meanwhile must still hold them: it replaces the log
// written before it, where they are live, and the append that ends them
// may be lost in a crash. So each Ack's tasks are kept here until then,
// and dumped as live after every queue. A task dumped twice (from its
// queue, then from here) is one task in the snapshot.
//
// A task leaves completing before its delete is appended, under the lock
// of the queue whose journal appends it: a dump that misses it runs after
// that point, so the delete lands in the segment after the snapshot,
// which replays it, or before, when the task is gone from the snapshot
// anyway.

// completingBatch is the tasks of one Ack being completed.
type completingBatch struct {
	queue string
	// tasks are the Ack's (its caller's buffer until Ack returns, a copy
	// after if they stay).
	tasks []Task
	// ended are the tasks whose deletes are appended, when they are not
	// all appended at once (results put to several queues).
	ended map[uint64]bool
}

// startCompleting notes that ts, just acked in the named queue, are
// completing, and returns their batch. Called with that queue's lock
// held, with a store.
func (m *Manager) startCompleting(queue string, ts []Task) *completingBatch {
	if len(ts) == 0 {
		return nil
	}
	b := &completingBatch{queue: queue, tasks: ts}
	m.completingMu.Lock()
	defer m.completingMu.Unlock()
	if m.completing == nil {
		m.completing = make(map[*Task]*completingBatch)
	}
	m.completing[&ts[0]] = b
	return b
}

// endCompleting notes that the deletes of ts, all of one batch or some
// of them, are being appended.
func (m *Manager) endCompleting(ts []Task) {
	if len(ts) == 0 || m.store == nil {
		return
	}
	m.completingMu.Lock()
	defer m.completingMu.Unlock()
	if b := m.completing[&ts[0]]; b != nil && len(b.tasks) == len(ts) {
		delete(m.completing, &ts[0]) // the whole batch: nearly always
		return
	}
	for _, t := range ts {
		for k, b := range m.completing {
			if slices.ContainsFunc(b.tasks, func(bt Task) bool { return bt.ID == t.ID }) {
				if b.ended == nil {
					b.ended = make(map[uint64]bool)
				}
				b.ended[t.ID] = true
				if len(b.ended) == len(b.tasks) {
					delete(m.completing, k)
				}
				break
			}
		}
	}
}

// endBatch ends what is left of batch b: its other tasks' deletes are
// being appended. If keep, they are not: the batch stays, its tasks
// copied from the caller's buffer, so that snapshots keep them live
// until a restart runs them again.
func (m *Manager) endBatch(b *completingBatch, keep bool) {
	if b == nil {
		return
	}
	m.completingMu.Lock()
	defer m.completingMu.Unlock()
	k := &b.tasks[0]
	if m.completing[k] != b {
		return // ended whole
	}
	delete(m.completing, k)
	if keep {
		b.tasks = slices.Clone(b.tasks)
		m.completing[&b.tasks[0]] = b
	}
}

// dumpCompleting emits the tasks completing, as live.
func (m *Manager) dumpCompleting(put func(queue string, t *Task) error) error {
	m.completingMu.Lock()
	defer m.completingMu.Unlock()
	for _, b := range m.completing {
		for i := range b.tasks {
			if b.ended[b.tasks[i].ID] {
				continue
			}
			if err := put(b.queue, &b.tasks[i]); err != nil {
				return err
			}
		}
	}
	return nil
}
