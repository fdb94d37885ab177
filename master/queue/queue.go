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
	Priority  int       // 0 to MaxPriority, higher first
	// Due is when a delayed task becomes ready (PeekDelayed); zero for a
	// ready or leased task.
	Due time.Time
	// Key is the idempotency key it was put with; set only on its way to
	// the store.
	Key string
	// Token names the delivery, for queues kept by an engine that lets
	// another server complete it (wire.Task.Token); these queues set none.
	Token string

	seq int64 // order key in the store
}

// Item is one task to Put: its payload and the queue for its result, and
// optionally when it may run, its priority and its idempotency key.
type Item struct {
	Payload []byte
	ReplyTo string
	// Due delays the task until then: it is invisible to gets until
	// that time, then joins the back of its queue. A zero or past time
	// means now.
	Due time.Time
	// Priority is 0 (the default) to MaxPriority; higher ones are handed
	// out first, in order within each priority.
	Priority int
	// Key, if not empty, makes the put idempotent: a put with the same
	// key in the same queue within the dedup window adds nothing and
	// returns the first task's ID. At most MaxKeyLen bytes.
	Key string
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
	sig     bool // a lease or a due time became the earliest of this queue: signal LeaseChanged
	maxLen  int
	ready   readySet
	// delayed holds the tasks not yet due: delayed puts and failed tasks
	// waiting out their backoff (retrying of them).
	delayed  delayHeap
	retrying int
	policy   Policy   // as set for this queue; Manager.effective fills it in
	keys     keyTable // idempotency keys within the dedup window
	leases   map[uint64]*lease
	order    leaseOrder
	owners   map[uint64]*ownerHead
	// idleOwners counts owners entries with no lease.
	idleOwners int
	free       []*lease
	getters    getterList
	putters    putterList
	// frontSeq is the lowest Seq given in this queue: a task pushed to the
	// front gets one below it.
	frontSeq int64
	// log records the queue's changes for the store (persist.go).
	log journal

	done, puts, gets, acks, nacks, expired, disconnected uint64
}

func newQueue(m *Manager, name string) *queue {
	return &queue{
		m:      m,
		name:   name,
		isDead: IsDeadLetterName(name),
		maxLen: m.cfg.MaxLen,
		policy: m.policyOf(name),
		leases: make(map[uint64]*lease),
		owners: make(map[uint64]*ownerHead),
		log:    m.newJournal(name),
	}
}

// length is what MaxLen bounds: ready, delayed and leased tasks.
func (q *queue) length() int { return q.ready.len() + q.delayed.len() + len(q.leases) }

func (q *queue) fits(n int) bool { return q.maxLen == 0 || q.length()+n <= q.maxLen }

// adds is how many tasks a put of items would add: an item whose key is
// remembered adds none, so a retried put never waits for room it does
// not take. Called with q.mu held.
func (q *queue) adds(items []Item) int {
	if q.keys.len() == 0 {
		return len(items)
	}
	if k := items[0].Key; isRequestKey(k) {
		if _, ok := q.keys.lookup(k); ok {
			return 0 // the whole put is a repeat
		}
		return len(items)
	}
	n := 0
	for i := range items {
		if k := items[i].Key; k == "" {
			n++
		} else if _, ok := q.keys.lookup(k); !ok {
			n++ // a key twice in one batch counts twice: an upper bound
		}
	}
	return n
}

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

// push appends items at the back (a delayed one to the delay heap) with
// fresh ids, and returns the ticket to wait on for their durability. An
// item whose key is remembered adds nothing and gets its first task's id,
// which is below first, the lowest id this push gives. The deletes of
// acked, tasks whose results the items are, are stored with them, in one
// append. An error is the store's, refusing to reserve the IDs of tasks
// (results are pushed all the same): nothing is pushed. Called with q.mu
// held; the caller must settle.
func (q *queue) push(items []Item, acked []Task, results bool, c *clock) (ids []uint64, first uint64, ticket store.Ticket, err error) {
	n := len(items)
	if n == 0 {
		return []uint64{}, 0, 0, nil
	}
	// Taken under q.mu, so ids and seqs increase along each queue.
	first = q.m.nextID.Add(uint64(n)) - uint64(n) + 1
	if q.m.ids != nil {
		// Before any get can see them (see idReservation). Refused, the
		// IDs are skipped.
		if err := q.m.ids.cover(first + uint64(n) - 1); err != nil && !results {
			return nil, 0, 0, err
		}
	}
	ids = make([]uint64, n)
	seq := q.m.seq.Add(int64(n)) - int64(n) + 1
	now := c.now()
	if q.keys.len() > 0 {
		q.keys.expire(now.Add(-q.m.cfg.DedupWindow).UnixNano())
	}
	if k := items[0].Key; isRequestKey(k) {
		// A put with a request ID: its first item's key stands for it
		// all, and its tasks' IDs follow the first one's.
		if id, ok := q.keys.lookup(k); ok {
			for i := range ids {
				ids[i] = id + uint64(i)
			}
			return ids, first, q.keys.ticket(k), nil
		}
	}
	added := 0
	var seen store.Ticket // the latest ticket of a put whose key an item repeats
	var keyed []string    // the keys this push adds
	for i := range items {
		it := &items[i]
		if it.Key != "" {
			if id, ok := q.keys.lookup(it.Key); ok {
				ids[i] = id
				seen = max(seen, q.keys.ticket(it.Key))
				continue
			}
		}
		t := Task{ID: first + uint64(i), Payload: it.Payload, ReplyTo: it.ReplyTo, Enqueued: now, Priority: it.Priority, Key: it.Key, seq: seq + int64(i)}
		ids[i] = t.ID
		added++
		if it.Key != "" {
			q.keys.add(it.Key, t.ID, now.UnixNano())
			keyed = append(keyed, it.Key)
		}
		if it.Due.After(now) {
			t.Due = it.Due
			q.log.record(store.Add, t)
			q.delay(&t, it.Due)
			continue
		}
		q.ready.pushBack(t)
		q.log.record(store.Add, t)
	}
	q.puts += uint64(added)
	if len(acked) > 0 {
		// Out of completing and appended at once, for a snapshot
		// (completing.go).
		q.m.completingMu.Lock()
		q.m.endCompleting(acked)
		q.recordDeletes(acked)
		ticket = q.log.commit()
		q.m.completingMu.Unlock()
	} else {
		ticket = q.log.commit()
	}
	// A repeat is answered once the put it repeats is durable, not
	// before: else a crash could lose a task both calls said was stored.
	for _, k := range keyed {
		q.keys.setTicket(k, ticket)
	}
	return ids, first, max(ticket, seen), nil
}

// pushFront puts t back at the front with a Seq below the head's, recorded
// as kind (Requeue, or Add for a task its take had deleted). Called with
// q.mu held; the caller commits and settles.
func (q *queue) pushFront(t Task, kind store.Kind) {
	q.frontSeq--
	t.seq = q.frontSeq
	q.ready.pushFront(t)
	q.log.record(kind, t)
}

// pushBackMoved appends tasks that come from another queue (dead-lettered,
// or requeued from a dead-letter queue) at the back, whole, under their
// ids, and returns the ticket to wait on for the move. Called with q.mu
// held; the caller must settle.
func (q *queue) pushBackMoved(ts []Task) store.Ticket {
	for i := range ts {
		t := &ts[i]
		t.seq = q.m.seq.Add(1)
		q.ready.pushBack(*t)
		q.log.record(store.Move, *t)
	}
	q.puts += uint64(len(ts))
	return q.log.commit()
}

// recordDeletes records that ts are gone for good. Called with q.mu held;
// the caller commits.
func (q *queue) recordDeletes(ts []Task) {
	for i := range ts {
		q.log.record(store.Delete, ts[i])
	}
}

// take hands out up to req.Max ready tasks: leased to req.Owner, or gone
// for good with req.NoAck. Called with q.mu held and at least one task
// ready.
func (q *queue) take(dst []Task, req *GetRequest, c *clock) []Task {
	n := min(req.Max, q.ready.len())
	ts := dst[:0]
	if cap(ts) < n {
		ts = make([]Task, n)
	}
	ts = ts[:n]
	var start, deadline int64
	if !req.NoAck {
		deadline = c.deadline(req.Lease)
		start = int64(c.now().Sub(q.m.epoch))
	}
	kind := store.Attempts
	if req.NoAck {
		kind = store.Delete
	}
	for i := range ts {
		t := &ts[i]
		q.ready.popFront(t)
		t.Attempts++
		if !req.NoAck {
			q.addLease(t, req.Owner, start, deadline, int64(req.Lease))
		}
		q.log.record(kind, *t)
	}
	// Not waited for: a delivery lost in a crash is only a lower attempt
	// count (or, with NoAck, a task delivered again).
	q.log.commit()
	q.gets += uint64(len(ts))
	if req.NoAck {
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
			g.ch <- q.take(g.dst, &g.req, c)
		}
		served := false
		for p := q.putters.head; p != nil && q.fits(q.adds(p.items)); p = q.putters.head {
			q.putters.remove(p)
			p.served = true
			ids, first, ticket, err := q.push(p.items, nil, false, c)
			p.ch <- putResult{ids: ids, first: first, ticket: ticket, err: err}
			served = true
		}
		if !served {
			return
		}
	}
}

// requeueFailed ends failed attempts of tasks already unleased: each goes
// back to the front, in id order, with LastError set, or is returned to be
// dead-lettered if it has used up its attempts or noRetry is set (tasks of
// a dead-letter queue are never dead-lettered). One that must wait first,
// retryAfter if it is > 0 or else its queue's backoff, waits in the delay
// heap. Called with q.mu held; the caller must settle.
func (q *queue) requeueFailed(ts []Task, errText string, retryAfter time.Duration, noRetry bool, c *clock) (dead []Task) {
	if len(ts) > 1 {
		slices.SortFunc(ts, func(a, b Task) int { return cmp.Compare(a.ID, b.ID) })
	}
	p := q.m.effective(q.policy)
	for i := len(ts) - 1; i >= 0; i-- {
		t := ts[i]
		t.LastError = errText
		if q.isDead {
			q.pushFront(t, store.Requeue)
			continue
		}
		if t.Attempts >= p.MaxAttempts || noRetry {
			dead = append(dead, t)
			continue
		}
		wait := retryAfter
		if wait <= 0 {
			wait = Backoff(p, t.Attempts)
		}
		if wait <= 0 {
			q.pushFront(t, store.Requeue)
			continue
		}
		t.Due = c.now().Add(wait)
		q.log.record(store.Requeue, t)
		q.delay(&t, t.Due)
	}
	// Dead tasks are recorded by deadLetter, as a Move into the
	// dead-letter queue; until then they stay in this one in the store.
	q.log.commit()
	slices.Reverse(dead)
	return dead
}

// unget puts back tasks that a take for req handed out but that never
// reached the client: to the front in their order, Attempts lowered
// again, counters restored. A leased task is put back only while
// req.Owner holds it for the same delivery; one whose lease is gone
// (expired or released meanwhile) has been requeued already. Called with
// q.mu held; the caller must settle.
func (q *queue) unget(ts []Task, req *GetRequest) {
	kind := store.Requeue
	if req.NoAck {
		kind = store.Add // its take deleted it
	}
	for i := len(ts) - 1; i >= 0; i-- {
		t := ts[i]
		if req.NoAck {
			if _, leased := q.leases[t.ID]; leased {
				continue // not ours: a misuse, leave the lease be
			}
			if q.done > 0 {
				q.done--
			}
		} else {
			l := q.leases[t.ID]
			if l == nil || l.owner != req.Owner || l.task.Attempts != t.Attempts {
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
		q.pushFront(t, kind)
	}
	q.log.commit()
}
