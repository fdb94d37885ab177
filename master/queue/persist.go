package queue

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/qm-dev/qm/store"
)

// This file is where the queues meet their store: a put becomes durable
// when the ticket its journal's commit returned is waited for (Put, through
// Manager.wait), and a restart rebuilds the queues in load.

// journal records one queue's changes for the Manager's store, so that each
// operation has one path whether or not the queues persist: a Manager
// without a store gives every queue memJournal, which does nothing.
//
// record and commit are called with the queue's lock held, so that the
// store sees each queue's changes in their order. Every change that
// moves, adds or removes a task is recorded; a commit does not wait for
// the disk (Manager.wait does, with no lock held).
type journal interface {
	// record buffers one change of t for commit. The store.Kind says
	// which of t's fields count: Add, Requeue and Move keep the whole
	// task (with t.seq as its order), Delete its ID, Attempts its ID and
	// Attempts.
	record(k store.Kind, t Task)
	// commit appends what was recorded, in order, and returns the ticket
	// to wait on for it; 0 if there was nothing to store.
	commit() store.Ticket
	// forget appends deletes of tasks that are gone from every queue in
	// memory, with no lock held: no other change can name them any more.
	forget(ts []Task) store.Ticket
	// forgetKeys buffers, for commit, that the queue's idempotency keys
	// are gone (it was deleted).
	forgetKeys()
}

// memJournal is the journal of a Manager without a store.
type memJournal struct{}

func (memJournal) record(store.Kind, Task)    {}
func (memJournal) commit() store.Ticket       { return 0 }
func (memJournal) forget([]Task) store.Ticket { return 0 }
func (memJournal) forgetKeys()                {}

// storeJournal is one queue's journal into a store.Store. ops is guarded
// by the queue's lock.
type storeJournal struct {
	st    store.Store
	queue string
	ops   []store.Op
}

func (j *storeJournal) record(k store.Kind, t Task) {
	op := store.Op{Kind: k, Task: store.Task{ID: t.ID, Attempts: t.Attempts}}
	if k != store.Delete && k != store.Attempts {
		op.Task = j.storeTask(&t)
	}
	j.ops = append(j.ops, op)
}

func (j *storeJournal) storeTask(t *Task) store.Task {
	return store.Task{
		ID: t.ID, Queue: j.queue, Seq: t.seq, Payload: t.Payload, ReplyTo: t.ReplyTo,
		Attempts: t.Attempts, LastError: t.LastError, Enqueued: t.Enqueued,
		Due: t.Due, Priority: t.Priority, Key: t.Key,
	}
}

func (j *storeJournal) forgetKeys() {
	j.ops = append(j.ops, store.Op{Kind: store.ForgetKeys, Task: store.Task{Queue: j.queue}})
}

func (j *storeJournal) commit() store.Ticket {
	if len(j.ops) == 0 {
		return 0
	}
	t := j.st.Append(j.ops...)
	clear(j.ops) // drop the payload references
	j.ops = j.ops[:0]
	return t
}

func (j *storeJournal) forget(ts []Task) store.Ticket {
	if len(ts) == 0 {
		return 0
	}
	ops := make([]store.Op, len(ts))
	for i := range ts {
		ops[i] = store.Op{Kind: store.Delete, Task: store.Task{ID: ts[i].ID}}
	}
	return j.st.Append(ops...)
}

// newJournal returns the journal of the named queue.
func (m *Manager) newJournal(name string) journal {
	if m.store == nil {
		return memJournal{}
	}
	return &storeJournal{st: m.store, queue: name}
}

// writable reports why a put would not be stored now (a full disk), or
// nil. Puts are refused meanwhile; other changes are stored once it can.
func (m *Manager) writable() error {
	if m.store == nil {
		return nil
	}
	return m.store.Writable()
}

// wait returns once the changes up to t are durable, or the error that
// keeps them from being so for now. A zero ticket, which every memJournal
// commit returns, is durable at once.
func (m *Manager) wait(t store.Ticket) error {
	if t == 0 {
		return nil
	}
	return m.store.Wait(t)
}

// durable is wait for a change made in memory whatever the store says:
// the store keeps retrying to write it (see store.Store.Writable).
func (m *Manager) durable(t store.Ticket) { _ = m.wait(t) }

// load rebuilds the queues from the store, if any, and gives the store
// its dumper. A task stored with a due time still ahead waits in its
// queue's delay heap; one whose time has passed is ready in its place.
func (m *Manager) load() error {
	if m.store == nil {
		return nil
	}
	meta, tasks, err := m.store.Load()
	if err != nil {
		return err
	}
	for name, p := range meta.Policies {
		m.policies[name] = p
	}
	for name, d := range meta.Deletions {
		m.deletions[name] = d // Deletions drops the old ones
	}
	// Order by queue, then Seq, through an index: cheaper to move than
	// Tasks, and nearly sorted already in the common case.
	order := make([]int32, len(tasks))
	for i := range tasks {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		ta, tb := &tasks[a], &tasks[b]
		if c := strings.Compare(ta.Queue, tb.Queue); c != 0 {
			return c
		}
		return cmp.Compare(ta.Seq, tb.Seq)
	})
	now := m.now()
	var (
		q        *queue
		attempts int // q's MaxAttempts; 0 in a dead-letter queue
		spent    []Task
	)
	for _, i := range order {
		t := &tasks[i]
		if q == nil || q.name != t.Queue {
			if len(spent) > 0 {
				m.deadAtLoad = append(m.deadAtLoad, deadTasks{q.name, spent})
				spent = nil
			}
			q = m.create(t.Queue)
			q.frontSeq = min(0, t.Seq)
			attempts = 0
			if !q.isDead {
				attempts = m.effective(q.policy).MaxAttempts
			}
		}
		task := Task{
			ID: t.ID, Payload: t.Payload, ReplyTo: t.ReplyTo, Attempts: t.Attempts,
			LastError: t.LastError, Enqueued: t.Enqueued, Priority: min(max(t.Priority, 0), MaxPriority), seq: t.Seq,
		}
		switch {
		case attempts > 0 && task.Attempts >= attempts:
			// Its last delivery was out when the master stopped (or it
			// failed and its move to the dead-letter queue was not
			// stored yet): handing it out again would run it once more
			// than MaxAttempts allows.
			task.LastError = lastAttemptCutOff
			spent = append(spent, task)
		case t.Due.After(now):
			q.delay(&task, t.Due)
		default:
			q.ready.pushBack(task)
		}
		*t = store.Task{} // let the payloads go with the deques only
	}
	if len(spent) > 0 {
		m.deadAtLoad = append(m.deadAtLoad, deadTasks{q.name, spent})
	}
	for _, name := range meta.Paused {
		if CheckName(name) == nil {
			m.create(name).paused = true
		}
	}
	m.loadResultQueues(meta.ResultQueues)
	m.loadKeys(meta.Keys, now)
	m.nextID.Store(meta.MaxID)
	if r, ok := m.store.(store.IDReserver); ok {
		// A block ahead before any put: so results, taken on a full
		// disk, have room below the bound.
		m.ids = &idReservation{st: r, block: idBlock}
		m.ids.limit.Store(meta.MaxID)
		if err := m.ids.reserve(meta.MaxID); err != nil {
			return fmt.Errorf("%w: free some space and start again (nothing was lost)", err)
		}
	}
	m.seq.Store(max(meta.MaxSeq, 0))
	m.store.SetDumper(m.dump)
	// Moved now, so that no get takes them; OnDead is told by ReapLeases,
	// once the caller of New can take their error results.
	for _, d := range m.deadAtLoad {
		m.moveToDead(d.queue, d.tasks)
	}
	return nil
}

// lastAttemptCutOff is the LastError of a task found at start-up with
// its attempts used up.
const lastAttemptCutOff = "its attempts were used up when the master started: the master stopped during its last attempt (or the queue's max attempts were lowered)"

// deadTasks are tasks of a queue dead-lettered at start-up.
type deadTasks struct {
	queue string
	tasks []Task
}

// loadKeys remembers again the stored idempotency keys still within the
// dedup window, oldest first, as keyTable expects.
func (m *Manager) loadKeys(keys []store.Task, now time.Time) {
	cut := now.Add(-m.cfg.DedupWindow)
	slices.SortFunc(keys, func(a, b store.Task) int { return a.Enqueued.Compare(b.Enqueued) })
	for i := range keys {
		k := &keys[i]
		if !k.Enqueued.After(cut) || CheckName(k.Queue) != nil {
			continue
		}
		q := m.create(k.Queue)
		q.keys.add(k.Key, k.ID, k.Enqueued.UnixNano())
	}
}

// dump is the store's Dumper: every live task, ready, delayed and leased,
// and every remembered key, each queue's under its lock; then the
// policies.
func (m *Manager) dump(emit func(*store.Op) error) error {
	op := store.Op{Kind: store.Add}
	put := func(queue string, t *Task) error {
		op.Task = store.Task{
			ID: t.ID, Queue: queue, Seq: t.seq, Payload: t.Payload, ReplyTo: t.ReplyTo,
			Attempts: t.Attempts, LastError: t.LastError, Enqueued: t.Enqueued,
			Due: t.Due, Priority: t.Priority,
		}
		return emit(&op)
	}
	for _, q := range m.snapshot() {
		err := func() error {
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.deleted {
				return nil
			}
			for i := range q.ready.len() {
				t := q.ready.get(i)
				if err := put(q.name, &t); err != nil {
					return err
				}
			}
			for i := range q.delayed.len() {
				d := q.delayed.at(i)
				t := d.e.task()
				t.Due = time.Unix(0, d.due)
				if err := put(q.name, &t); err != nil {
					return err
				}
			}
			for _, l := range q.leases {
				if err := put(q.name, &l.task); err != nil {
					return err
				}
			}
			return q.keys.dump(q.name, emit)
		}()
		if err != nil {
			return err
		}
	}
	// After every queue: a task taken out of its queue after the dump
	// passed it is completing, until its ack is appended.
	if err := m.dumpCompleting(put); err != nil {
		return err
	}
	m.policyMu.Lock()
	defer m.policyMu.Unlock()
	for name, p := range m.policies {
		op := store.Op{Kind: store.SetPolicy, Task: store.Task{Queue: name}, Policy: p}
		if err := emit(&op); err != nil {
			return err
		}
	}
	return m.dumpDeletions(emit)
}
