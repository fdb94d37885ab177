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
// A task leaves completing in the same hold of completingMu as its
// delete is appended. A dump that still finds it here puts it in the
// snapshot, and the delete, appended after the segment the snapshot
// replaces, is replayed over it. A dump that does not find it runs after
// the append, which the store then writes before the snapshot replaces
// the segments before it (seglog waits for what was appended when its
// dump ended): the delete is in a segment kept or in one replaced, where
// the task is gone from the snapshot anyway.

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
// of them, are appended now. Called with completingMu held.
func (m *Manager) endCompleting(ts []Task) {
	if b := m.completing[&ts[0]]; b != nil && len(b.tasks) == len(ts) {
		delete(m.completing, &ts[0]) // the whole batch: nearly always
		return
	}
	// Some of a batch (its results put to several queues, or some with
	// none): one pass over what is completing.
	ids := make(map[uint64]bool, len(ts))
	for _, t := range ts {
		ids[t.ID] = true
	}
	for k, b := range m.completing {
		for _, t := range b.tasks {
			if ids[t.ID] {
				if b.ended == nil {
					b.ended = make(map[uint64]bool)
				}
				b.ended[t.ID] = true
			}
		}
		if len(b.ended) == len(b.tasks) {
			delete(m.completing, k)
		}
	}
}

// endBatch ends what is left of batch b. Unless keep, it calls forget,
// which appends the deletes of its other tasks, in the same hold of
// completingMu. If keep, their deletes are not appended: the batch
// stays, its tasks copied from the caller's buffer, so that snapshots
// keep them live until a restart runs them again.
func (m *Manager) endBatch(b *completingBatch, keep bool, forget func()) {
	if b == nil {
		if !keep {
			forget()
		}
		return
	}
	m.completingMu.Lock()
	defer m.completingMu.Unlock()
	if k := &b.tasks[0]; m.completing[k] == b {
		delete(m.completing, k)
		if keep {
			b.tasks = slices.Clone(b.tasks)
			m.completing[&b.tasks[0]] = b
		}
	}
	if !keep {
		forget()
	}
}

// dumpCompleting emits the tasks completing, as live. They are copied
// under the lock and emitted after it: emitting may write to the disk.
func (m *Manager) dumpCompleting(put func(queue string, t *Task) error) error {
	var live []completingTask
	m.completingMu.Lock()
	for _, b := range m.completing {
		for i := range b.tasks {
			if !b.ended[b.tasks[i].ID] {
				live = append(live, completingTask{queue: b.queue, task: b.tasks[i]})
			}
		}
	}
	m.completingMu.Unlock()
	for i := range live {
		if err := put(live[i].queue, &live[i].task); err != nil {
			return err
		}
	}
	return nil
}

// completingTask is a task dumpCompleting emits, and its queue.
type completingTask struct {
	queue string
	task  Task
}
