package queue

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"time"
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
}

// Item is one task to Put: its payload and the queue for its result.
type Item struct {
	Payload []byte
	ReplyTo string
}

// queue is one named queue. Every field below mu is guarded by it.
//
// Invariant, restored by settle before mu is released: no getter waits
// while a task is ready, and no putter waits while the head putter's batch
// fits.
type queue struct {
	m      *Manager
	name   string
	isDead bool // a dead-letter queue: failed tasks go back to its front

	mu      sync.Mutex
	deleted bool // removed from the Manager; callers holding q start over
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

// push appends items at the back with fresh ids. Called with q.mu held;
// the caller must settle.
func (q *queue) push(items []Item, c *clock) []uint64 {
	n := len(items)
	if n == 0 {
		return []uint64{}
	}
	ids := make([]uint64, n)
	// Taken under q.mu, so ids increase along each queue.
	first := q.m.nextID.Add(uint64(n)) - uint64(n) + 1
	now := c.now()
	q.ready.reserve(n)
	for i := range items {
		id := first + uint64(i)
		ids[i] = id
		q.ready.pushBack(Task{ID: id, Payload: items[i].Payload, ReplyTo: items[i].ReplyTo, Enqueued: now})
	}
	q.puts += uint64(n)
	return ids
}

// take hands out up to max ready tasks: leased to owner, or gone for good
// with noAck. Called with q.mu held and at least one task ready.
func (q *queue) take(max int, lease time.Duration, owner uint64, noAck bool, c *clock) []Task {
	ts := make([]Task, min(max, q.ready.len()))
	var deadline int64
	if !noAck {
		deadline = c.deadline(lease)
	}
	for i := range ts {
		t := &ts[i]
		q.ready.popFront(t)
		t.Attempts++
		if !noAck {
			q.addLease(t, owner, deadline)
		}
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
		for q.getters.head != nil && q.ready.len() > 0 {
			g := q.getters.head
			q.getters.remove(g)
			g.served = true
			g.ch <- q.take(g.max, g.lease, g.owner, g.noAck, c)
		}
		served := false
		for p := q.putters.head; p != nil && q.fits(len(p.items)); p = q.putters.head {
			q.putters.remove(p)
			p.served = true
			p.ch <- putResult{ids: q.push(p.items, c)}
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
		q.ready.pushFront(t)
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
		q.ready.pushFront(t)
	}
}
