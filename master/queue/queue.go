package queue

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/qm-dev/qm/store"
)

// Task is one item in a queue. Payload is an opaque msgpack-encoded value
// (never decoded here).
type Task struct {
	ID        uint64
	Payload   []byte
	ReplyTo   string    // queue that receives this task's result; "" = none
	Attempts  int       // deliveries so far; a Get raises it by one before handing the task out
	LastError string    // error text of the last failed attempt (nack or lease expiry)
	Enqueued  time.Time // when it was first put

	seq int64 // order key in the store (with a Config.Store only)
}

// Item is one task to Put: its payload and the queue for its result.
type Item struct {
	Payload []byte
	ReplyTo string
}

// queue is one named queue. Every field below mu is guarded by it.
//
// Invariant, restored by settle before mu is released: no getter waits
// while a task is ready and the queue is not paused, and no putter waits
// while the head putter's batch fits.
type queue struct {
	m      *Manager
	name   string
	isDead bool // a dead-letter queue: failed tasks go back to its front

	mu      sync.Mutex
	deleted bool // removed from the Manager; callers holding q start over
	paused  bool // hands out no task (Pause); not kept by the store
	sig     bool // a lease became the earliest of this queue: signal LeaseChanged
	maxLen  int
	ready   deque
	leases  map[uint64]*lease
	heap    leaseHeap
	owners  map[uint64]*ownerHead
	// idleOwners counts owners entries with no lease.
	idleOwners int
	free       []*lease
	getters    getterList
	putters    putterList
	// frontSeq is the lowest Seq given in this queue: a task pushed to the
	// front gets one below it (with a Config.Store only).
	frontSeq int64
	// ops is scratch space for the store ops of one change.
	ops []store.Op

	done, puts, gets, acks, nacks, expired uint64
}

func newQueue(m *Manager, name string) *queue {
	return &queue{
		m:      m,
		name:   name,
		isDead: IsDeadLetterName(name),
		maxLen: m.cfg.MaxLen,
		leases: make(map[uint64]*lease),
		owners: make(map[uint64]*ownerHead),
	}
}

// length is what MaxLen bounds: ready plus leased tasks.
func (q *queue) length() int { return q.ready.len() + len(q.leases) }

func (q *queue) fits(n int) bool { return q.maxLen == 0 || q.length()+n <= q.maxLen }

// clock reads the Manager's clock at most once per operation.
type clock struct {
	m  *Manager
	t  time.Time
	ok bool
}

func (c *clock) now() time.Time {
	if !c.ok {
		c.t, c.ok = c.m.now(), true
	}
	return c.t
}

// deadline returns now+d in nanoseconds since the Manager's epoch,
// saturating instead of overflowing.
func (c *clock) deadline(d time.Duration) int64 {
	rel := int64(c.now().Sub(c.m.epoch))
	if rel > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return rel + int64(d)
}

// push appends items at the back with fresh ids, and returns the ticket
// to wait on for their durability (0 without a store). Called with q.mu
// held; the caller must settle.
func (q *queue) push(items []Item, c *clock) ([]uint64, store.Ticket) {
	n := len(items)
	if n == 0 {
		return []uint64{}, 0
	}
	ids := make([]uint64, n)
	// Taken under q.mu, so ids increase along each queue.
	first := q.m.nextID.Add(uint64(n)) - uint64(n) + 1
	now := c.now()
	q.ready.reserve(n)
	if q.m.store != nil {
		return ids, q.pushStored(items, ids, first, now)
	}
	for i := range items {
		id := first + uint64(i)
		ids[i] = id
		q.ready.pushBack(Task{ID: id, Payload: items[i].Payload, ReplyTo: items[i].ReplyTo, Enqueued: now})
	}
	q.puts += uint64(n)
	return ids, 0
}

// pushStored is push with a store: each task also gets a Seq and an Add op.
func (q *queue) pushStored(items []Item, ids []uint64, first uint64, now time.Time) store.Ticket {
	n := int64(len(items))
	seq := q.m.seq.Add(n) - n + 1
	for i := range items {
		t := Task{ID: first + uint64(i), Payload: items[i].Payload, ReplyTo: items[i].ReplyTo, Enqueued: now, seq: seq + int64(i)}
		ids[i] = t.ID
		q.ready.pushBack(t)
		q.logTask(store.Add, &t)
	}
	q.puts += uint64(len(items))
	return q.flushOps()
}

// logTask adds an op about t to q.ops. Called with q.mu held.
func (q *queue) logTask(k store.Kind, t *Task) {
	q.ops = append(q.ops, store.Op{Kind: k, Task: store.Task{
		ID: t.ID, Queue: q.name, Seq: t.seq, Payload: t.Payload, ReplyTo: t.ReplyTo,
		Attempts: t.Attempts, LastError: t.LastError, Enqueued: t.Enqueued,
	}})
}

// logOp adds an op that names a task by id to q.ops. Called with q.mu held.
func (q *queue) logOp(k store.Kind, id uint64, attempts int) {
	q.ops = append(q.ops, store.Op{Kind: k, Task: store.Task{ID: id, Attempts: attempts}})
}

// flushOps appends q.ops to the store and empties it. Called with q.mu
// held, so that the store sees each queue's changes in their order.
func (q *queue) flushOps() store.Ticket {
	if len(q.ops) == 0 {
		return 0
	}
	t := q.m.store.Append(q.ops...)
	clear(q.ops) // drop the payload references
	q.ops = q.ops[:0]
	return t
}

// pushFrontStored pushes t to the front with a Seq below the head's and
// logs it as kind (Requeue, or Add for a task its take had deleted).
// Called with q.mu held, with a store only.
func (q *queue) pushFrontStored(t Task, k store.Kind) {
	q.frontSeq--
	t.seq = q.frontSeq
	q.ready.pushFront(t)
	q.logTask(k, &t)
}

// take hands out up to max ready tasks: leased to owner, or gone for good
// with noAck. Called with q.mu held and at least one task ready.
func (q *queue) take(dst []Task, max int, lease time.Duration, owner uint64, noAck bool, c *clock) []Task {
	n := min(max, q.ready.len())
	ts := dst[:0]
	if cap(ts) < n {
		ts = make([]Task, n)
	}
	ts = ts[:n]
	var start, deadline int64
	if !noAck {
		deadline = c.deadline(lease)
		start = int64(c.now().Sub(q.m.epoch))
	}
	for i := range ts {
		t := &ts[i]
		q.ready.popFront(t)
		t.Attempts++
		if !noAck {
			q.addLease(t, owner, start, deadline)
		}
	}
	if q.m.store != nil {
		// Not waited for: a delivery lost in a crash is only a lower
		// attempt count (or, with noAck, a task delivered again).
		for i := range ts {
			if noAck {
				q.logOp(store.Delete, ts[i].ID, 0)
			} else {
				q.logOp(store.Attempts, ts[i].ID, ts[i].Attempts)
			}
		}
		q.flushOps()
	}
	q.gets += uint64(len(ts))
	if noAck {
		q.done += uint64(len(ts))
	}
	return ts
}

// settle restores the queue invariant: serve waiting getters while tasks
// are ready, and waiting putters while their batches fit. Called with q.mu
// held after any change that adds ready tasks or frees room.
func (q *queue) settle(c *clock) {
	for {
		for q.getters.head != nil && q.ready.len() > 0 && !q.paused {
			g := q.getters.head
			q.getters.remove(g)
			g.served = true
			g.ch <- q.take(g.dst, g.max, g.lease, g.owner, g.noAck, c)
		}
		served := false
		for p := q.putters.head; p != nil && q.fits(len(p.items)); p = q.putters.head {
			q.putters.remove(p)
			p.served = true
			ids, ticket := q.push(p.items, c)
			p.ch <- putResult{ids: ids, ticket: ticket}
			served = true
		}
		if !served {
			return
		}
	}
}

// requeueFailed ends failed attempts of tasks already unleased: each goes
// back to the front, in id order, with LastError set, or is returned to be
// dead-lettered if it has used up its attempts. Called with q.mu held; the
// caller must settle.
func (q *queue) requeueFailed(ts []Task, errText string, maxAttempts int) (dead []Task) {
	if len(ts) > 1 {
		slices.SortFunc(ts, func(a, b Task) int { return cmp.Compare(a.ID, b.ID) })
	}
	for i := len(ts) - 1; i >= 0; i-- {
		t := ts[i]
		t.LastError = errText
		if !q.isDead && t.Attempts >= maxAttempts {
			dead = append(dead, t)
			continue
		}
		if q.m.store != nil {
			q.pushFrontStored(t, store.Requeue)
			continue
		}
		q.ready.pushFront(t)
	}
	if q.m.store != nil {
		// Dead tasks are logged by deadLetter, as a Move into the
		// dead-letter queue; until then they stay in this one on disk.
		q.flushOps()
	}
	slices.Reverse(dead)
	return dead
}

// unget puts back tasks handed out by take that never reached the client:
// to the front in their order, Attempts lowered again, counters restored.
// A task whose lease is gone already (expired or released meanwhile) is
// skipped: it has been requeued. Called with q.mu held; the caller must
// settle.
func (q *queue) unget(ts []Task, owner uint64, noAck bool) {
	for i := len(ts) - 1; i >= 0; i-- {
		t := ts[i]
		if noAck {
			if _, leased := q.leases[t.ID]; leased {
				continue // not ours: a misuse, leave the lease be
			}
			if q.done > 0 {
				q.done--
			}
		} else {
			l := q.leases[t.ID]
			if l == nil || l.owner != owner || l.task.Attempts != t.Attempts {
				continue
			}
			t = q.unlease(l)
		}
		if t.Attempts > 0 {
			t.Attempts--
		}
		if q.gets > 0 {
			q.gets--
		}
		if q.m.store != nil {
			k := store.Requeue
			if noAck {
				k = store.Add // its take deleted it
			}
			q.pushFrontStored(t, k)
			continue
		}
		q.ready.pushFront(t)
	}
	if q.m.store != nil {
		q.flushOps()
	}
}
