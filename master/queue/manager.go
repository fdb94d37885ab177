package queue

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/store"
)

// Manager owns a set of named queues. It starts no goroutines.
type Manager struct {
	cfg   Config
	now   func() time.Time
	epoch time.Time // lease deadlines are kept as nanoseconds since epoch

	queues sync.Map // name → *queue; lock-free lookups on the hot path
	nextID atomic.Uint64

	store store.Store  // nil: in memory only
	seq   atomic.Int64 // the last Seq given at the back of a queue

	closed    atomic.Bool
	closeOnce sync.Once
	closedCh  chan struct{}
	leaseCh   chan struct{}
}

// testHookWoken, if set, runs in a blocked Get or Put woken by its ctx or
// by Close, before it takes the queue lock: tests use it to hand over
// tasks or room in exactly that window.
var testHookWoken func()

// New returns a Manager with no queues, or with the tasks of cfg.Store:
// every stored task comes back ready (a leased one with the attempts its
// deliveries used), each queue in its stored order.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := &Manager{
		cfg:      cfg,
		now:      cfg.Now,
		epoch:    cfg.Now(),
		closedCh: make(chan struct{}),
		leaseCh:  make(chan struct{}, 1),
		store:    cfg.Store,
	}
	if m.store != nil {
		if err := m.load(); err != nil {
			return nil, err
		}
		m.store.SetDumper(m.dump)
	}
	return m, nil
}

// load rebuilds the queues from the store.
func (m *Manager) load() error {
	meta, tasks, err := m.store.Load()
	if err != nil {
		return err
	}
	// Order by queue, then Seq, through an index: cheaper to move than
	// Tasks, and nearly sorted already in the common case.
	order := make([]int32, len(tasks))
	count := make(map[string]int)
	for i := range tasks {
		order[i] = int32(i)
		count[tasks[i].Queue]++
	}
	slices.SortFunc(order, func(a, b int32) int {
		ta, tb := &tasks[a], &tasks[b]
		if c := strings.Compare(ta.Queue, tb.Queue); c != 0 {
			return c
		}
		return cmp.Compare(ta.Seq, tb.Seq)
	})
	var q *queue
	for _, i := range order {
		t := &tasks[i]
		if q == nil || q.name != t.Queue {
			q = m.create(t.Queue)
			q.ready.reserve(count[t.Queue])
			q.frontSeq = min(0, t.Seq)
		}
		q.ready.pushBack(Task{
			ID: t.ID, Payload: t.Payload, ReplyTo: t.ReplyTo, Attempts: t.Attempts,
			LastError: t.LastError, Enqueued: t.Enqueued, seq: t.Seq,
		})
		*t = store.Task{} // let the payloads go with the deques only
	}
	m.nextID.Store(meta.MaxID)
	m.seq.Store(max(meta.MaxSeq, 0))
	return nil
}

// dump is the store's Dumper: every live task, ready and leased, each
// emitted under its queue's lock.
func (m *Manager) dump(emit func(*store.Task) error) error {
	var st store.Task
	put := func(q *queue, t *Task) error {
		st = store.Task{
			ID: t.ID, Queue: q.name, Seq: t.seq, Payload: t.Payload, ReplyTo: t.ReplyTo,
			Attempts: t.Attempts, LastError: t.LastError, Enqueued: t.Enqueued,
		}
		return emit(&st)
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
				if err := put(q, &t); err != nil {
					return err
				}
			}
			for _, l := range q.leases {
				if err := put(q, &l.task); err != nil {
					return err
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

// durable waits for t, ignoring the error: the change is made in memory
// and the store keeps retrying to write it (see Store.Writable).
func (m *Manager) durable(t store.Ticket) {
	if m.store != nil && t != 0 {
		_ = m.store.Wait(t)
	}
}

// lookup returns the named queue, or nil.
func (m *Manager) lookup(name string) *queue {
	if v, ok := m.queues.Load(name); ok {
		return v.(*queue)
	}
	return nil
}

// lookupOrCreate returns the named queue, creating it if needed.
func (m *Manager) lookupOrCreate(name string) (*queue, error) {
	if q := m.lookup(name); q != nil {
		return q, nil
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	return m.create(name), nil
}

// create returns the named queue, creating it without checking the name.
func (m *Manager) create(name string) *queue {
	v, _ := m.queues.LoadOrStore(name, newQueue(m, name))
	return v.(*queue)
}

// lockLive returns the named queue locked, or ErrUnknownQueue.
func (m *Manager) lockLive(name string) (*queue, error) {
	q := m.lookup(name)
	if q == nil {
		return nil, ErrUnknownQueue
	}
	q.mu.Lock()
	if q.deleted {
		q.mu.Unlock()
		return nil, ErrUnknownQueue
	}
	return q, nil
}

// unlock releases q.mu, then signals LeaseChanged if q got a new earliest
// lease.
func (m *Manager) unlock(q *queue) {
	sig := q.sig
	q.sig = false
	q.mu.Unlock()
	if sig {
		m.signalLease()
	}
}

func (m *Manager) signalLease() {
	if len(m.leaseCh) > 0 {
		return // already pending; skip the channel lock
	}
	select {
	case m.leaseCh <- struct{}{}:
	default:
	}
}

// snapshot returns the live queues, unordered.
func (m *Manager) snapshot() []*queue {
	var qs []*queue
	m.queues.Range(func(_, v any) bool {
		qs = append(qs, v.(*queue))
		return true
	})
	return qs
}

func (m *Manager) sortedSnapshot() []*queue {
	qs := m.snapshot()
	slices.SortFunc(qs, func(a, b *queue) int { return strings.Compare(a.name, b.name) })
	return qs
}

// Put appends items to the named queue, creating it on first use, and
// returns their new ids: unique across all queues of the Manager, and
// increasing.
//
// If the queue has a max length and the batch does not fit, Put waits, in
// FIFO order with other waiting Puts, until it fits or ctx is done; then it
// returns ErrQueueFull and nothing of the batch is added. A batch larger
// than the max length fails at once with ErrQueueFull. force=true ignores
// the max length (used to publish results, so that a result is never
// dropped).
//
// With a store, Put returns once the batch is written. If the write fails
// (a full disk), the error says so, and Put takes back the tasks that no
// get took meanwhile and returns the ids of those a get did (see
// withdraw); a forced put's tasks stay queued, to be written once the
// store can.
//
// Put keeps the Payload slices; the caller must not modify them afterwards.
func (m *Manager) Put(ctx context.Context, name string, items []Item, force bool) ([]uint64, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	if len(items) == 0 {
		if _, err := m.lookupOrCreate(name); err != nil {
			return nil, err
		}
		return []uint64{}, nil
	}
	if m.store != nil {
		if err := m.store.Writable(); err != nil {
			return nil, err
		}
	}
	c := clock{m: m, t: m.now(), ok: true}
	for {
		q, err := m.lookupOrCreate(name)
		if err != nil {
			return nil, err
		}
		q.mu.Lock()
		if q.deleted {
			q.mu.Unlock()
			continue
		}
		if force || q.maxLen == 0 || q.putters.head == nil && q.fits(len(items)) {
			ids, ticket := q.push(items, &c)
			q.settle(&c)
			m.unlock(q)
			if m.store != nil {
				// Getters may have the tasks already: see docs/STORAGE.md.
				if err := m.store.Wait(ticket); err != nil {
					if force { // results: the log writes them once it can
						return nil, err
					}
					return m.withdraw(name, ids, err)
				}
			}
			return ids, nil
		}
		if len(items) > q.maxLen || ctx.Err() != nil {
			q.mu.Unlock()
			return nil, ErrQueueFull
		}
		p := &putter{items: items, ch: make(chan putResult, 1)}
		q.putters.pushBack(p)
		q.mu.Unlock()

		var (
			r   putResult
			got bool
		)
		select {
		case r = <-p.ch:
			got = true
		case <-ctx.Done():
		case <-m.closedCh:
		}
		if !got {
			if testHookWoken != nil {
				testHookWoken()
			}
			q.mu.Lock()
			if p.served {
				r, got = <-p.ch, true // sent before we took the lock
				q.mu.Unlock()
			} else {
				q.putters.remove(p)
				q.settle(&clock{m: m}) // p may have held back smaller batches behind it
				m.unlock(q)
			}
		}
		switch {
		case got && !r.retry:
			if m.store != nil {
				if err := m.store.Wait(r.ticket); err != nil {
					return m.withdraw(name, r.ids, err)
				}
			}
			return r.ids, nil
		case m.closed.Load():
			return nil, ErrClosed
		case got: // the queue was deleted: start over on a new one
			c = clock{m: m, t: m.now(), ok: true}
			continue
		}
		return nil, ErrQueueFull
	}
}

// withdraw takes back what it can of a put whose write to the log failed
// (err), so that a refused put leaves nothing behind: its tasks still
// ready leave the queue, and their deletes follow their adds in the log's
// buffer, to be written with them or not at all. Tasks a get took already
// stay: they run, and are written once the log can write again. withdraw
// returns their ids, and an error that says which of the two happened.
func (m *Manager) withdraw(name string, ids []uint64, err error) ([]uint64, error) {
	q, lerr := m.lockLive(name)
	if lerr != nil { // deleted meanwhile, and the put with it
		return nil, fmt.Errorf("%w; nothing of this put was queued", err)
	}
	back, out := q.remove(ids)
	for i := range back {
		q.logOp(store.Delete, back[i].ID, 0)
	}
	q.flushOps()
	q.puts -= uint64(len(back))
	q.settle(&clock{m: m}) // room for waiting puts
	m.unlock(q)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w; nothing of this put was queued", err)
	}
	return out, fmt.Errorf("%w; %d of this put's %d tasks were handed out before the write failed: they run, and are stored once the log can write again; the rest were taken back",
		err, len(out), len(ids))
}

// Get takes up to max (>= 1) ready tasks from the front of the named
// queue, creating it on first use. If none is ready it blocks until one
// is, or ctx is done; then it returns nil, nil: an empty result is not an
// error, and the caller puts its timeout in ctx. With a done ctx Get still
// returns the tasks that are ready at once.
//
// Tasks are leased to owner for lease (0 means Config.DefaultLease),
// unless noAck: then they are removed for good (counted as done). The
// returned Tasks are copies with Attempts already raised.
//
// Blocked Gets are served in FIFO order. If ctx is done at the moment tasks
// are handed to a blocked Get, they go back to the front (or to the next
// waiting Get) with Attempts untouched. A Get blocked when the queue is
// deleted returns nil, nil; when the Manager is closed, nil, ErrClosed.
func (m *Manager) Get(ctx context.Context, name string, max int, lease time.Duration, owner uint64, noAck bool) ([]Task, error) {
	return m.GetInto(ctx, nil, name, max, lease, owner, noAck, -1)
}

// GetInto is Get that returns the tasks in dst's array when it is large
// enough, and that waits at most wait as well as until ctx is done: 0 does
// not wait, a negative wait waits for ctx alone. A caller serving one get
// after another passes a long-lived ctx and each get's timeout, and reuses
// one buffer: no context, timer or task slice is made per get.
func (m *Manager) GetInto(ctx context.Context, dst []Task, name string, max int, lease time.Duration, owner uint64, noAck bool, wait time.Duration) ([]Task, error) {
	if max < 1 {
		return nil, fmt.Errorf("%w: get max must be >= 1, got %d", ErrBadArgument, max)
	}
	if lease < 0 {
		return nil, fmt.Errorf("%w: lease must be >= 0, got %v", ErrBadArgument, lease)
	}
	if lease == 0 {
		lease = m.cfg.DefaultLease
	}
	if m.closed.Load() {
		return nil, ErrClosed
	}
	c := clock{m: m, t: m.now(), ok: true}
	var (
		q   *queue
		err error
	)
	for {
		if q, err = m.lookupOrCreate(name); err != nil {
			return nil, err
		}
		q.mu.Lock()
		if !q.deleted {
			break
		}
		q.mu.Unlock()
	}
	if q.ready.len() > 0 && !q.paused {
		ts := q.take(dst, max, lease, owner, noAck, &c)
		if noAck && q.putters.head != nil {
			q.settle(&c)
		}
		m.unlock(q)
		return ts, nil
	}
	if wait == 0 || ctx.Err() != nil {
		q.mu.Unlock()
		return nil, nil
	}
	g := getterPool.Get().(*getter)
	g.max, g.lease, g.owner, g.noAck, g.served, g.dst = max, lease, owner, noAck, false, dst
	q.getters.pushBack(g)
	q.mu.Unlock()
	var timedOut <-chan time.Time
	if wait > 0 {
		timedOut = g.startTimer(wait)
	}

	var (
		ts         []Task
		got        bool
		cancelled  bool
		closedWait bool
	)
	select {
	case ts = <-g.ch:
		got = true
	case <-ctx.Done():
		cancelled = true
	case <-timedOut:
		cancelled = true
	case <-m.closedCh:
		closedWait = true
	}
	if timedOut != nil {
		g.timer.Stop()
	}
	if !got {
		if testHookWoken != nil {
			testHookWoken()
		}
		q.mu.Lock()
		switch {
		case g.served && cancelled:
			// Tasks were handed over as ctx ended: give them back.
			if ts = <-g.ch; len(ts) > 0 && !q.deleted {
				q.unget(ts, owner, noAck)
				q.settle(&clock{m: m})
			}
			ts = nil
		case g.served:
			ts = <-g.ch
		default:
			q.getters.remove(g)
		}
		m.unlock(q)
	}
	g.dst = nil
	getterPool.Put(g)
	if ts == nil && closedWait {
		return nil, ErrClosed
	}
	return ts, nil
}

// Ack removes leased tasks for good (counted as done). Each id must be
// leased by owner in the named queue; for each id that is not, the joined
// error holds a *TaskError wrapping ErrNotLeased, and the other ids still
// succeed. Ack returns copies of the acked Tasks (to publish results).
func (m *Manager) Ack(name string, owner uint64, ids []uint64) ([]Task, error) {
	return m.AckThen(name, owner, ids, nil)
}

// AckThen is Ack that first calls publish (if not nil) with the tasks
// acked, outside every lock, before their acks are logged. publish puts
// their results; so the results reach the store ahead of the acks, and a
// crash in between leaves a task that runs again (its result may then
// come twice), never an acked task whose result is lost. The tasks, given
// to publish and returned, are in the order of ids.
func (m *Manager) AckThen(name string, owner uint64, ids []uint64, publish func([]Task)) ([]Task, error) {
	return m.AckThenInto(nil, name, owner, ids, publish)
}

// AckThenInto is AckThen that returns the acked tasks in dst's array when
// it is large enough, so that a caller acking one batch after another
// reuses one buffer.
func (m *Manager) AckThenInto(dst []Task, name string, owner uint64, ids []uint64, publish func([]Task)) ([]Task, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	q, err := m.lockLive(name)
	if err != nil {
		return nil, err
	}
	ts := dst[:0]
	if cap(ts) < len(ids) {
		ts = make([]Task, 0, len(ids))
	}
	var bad []uint64
	for _, id := range ids {
		l := q.leases[id]
		if l == nil || l.owner != owner {
			bad = append(bad, id)
			continue
		}
		ts = append(ts, q.unlease(l))
	}
	q.acks += uint64(len(ts))
	q.done += uint64(len(ts))
	if len(ts) > 0 && q.putters.head != nil {
		q.settle(&clock{m: m})
	}
	var ticket store.Ticket
	if m.store != nil && publish == nil {
		for i := range ts {
			q.logOp(store.Delete, ts[i].ID, 0)
		}
		ticket = q.flushOps()
	}
	m.unlock(q)
	if publish != nil {
		if len(ts) > 0 {
			publish(ts)
		}
		if m.store != nil && len(ts) > 0 {
			// The tasks are gone from memory, so no other op names them:
			// their deletes may be logged outside the queue's lock.
			ops := make([]store.Op, len(ts))
			for i := range ts {
				ops[i] = store.Op{Kind: store.Delete, Task: store.Task{ID: ts[i].ID}}
			}
			ticket = m.store.Append(ops...)
		}
	}
	m.durable(ticket)
	return ts, notLeased(bad)
}

// Nack ends a failed attempt of a task leased by owner: it goes back to
// the front of its queue with LastError set to errText or, if its Attempts
// have reached MaxAttempts, to the dead-letter queue (then OnDead is
// called). A *TaskError wrapping ErrNotLeased if owner does not hold it.
func (m *Manager) Nack(name string, owner uint64, id uint64, errText string) error {
	if m.closed.Load() {
		return ErrClosed
	}
	q, err := m.lockLive(name)
	if err != nil {
		return err
	}
	l := q.leases[id]
	if l == nil || l.owner != owner {
		q.mu.Unlock()
		return &TaskError{ID: id, Err: ErrNotLeased}
	}
	ts := [1]Task{q.unlease(l)}
	q.nacks++
	dead := q.requeueFailed(ts[:], errText, m.cfg.MaxAttempts)
	q.settle(&clock{m: m})
	m.unlock(q)
	m.deadLetter(q.name, dead)
	return nil
}

// Extend sets the lease deadline of each id held by owner to now+lease
// (0 means Config.DefaultLease). Errors are as for Ack.
func (m *Manager) Extend(name string, owner uint64, ids []uint64, lease time.Duration) error {
	if lease < 0 {
		return fmt.Errorf("%w: lease must be >= 0, got %v", ErrBadArgument, lease)
	}
	if lease == 0 {
		lease = m.cfg.DefaultLease
	}
	if m.closed.Load() {
		return ErrClosed
	}
	q, err := m.lockLive(name)
	if err != nil {
		return err
	}
	c := clock{m: m}
	deadline := c.deadline(lease)
	var bad []uint64
	for _, id := range ids {
		l := q.leases[id]
		if l == nil || l.owner != owner {
			bad = append(bad, id)
			continue
		}
		q.setDeadline(l, deadline)
	}
	m.unlock(q)
	return notLeased(bad)
}

// Release returns every task leased by owner, in any queue, as if its
// lease had expired with LastError "worker disconnected": back to the
// front of its queue with Attempts as raised by the Get, or to the
// dead-letter queue if Attempts >= MaxAttempts. Used when a client's
// connection drops. It returns how many tasks it released.
func (m *Manager) Release(owner uint64) int {
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
		n += len(ts)
		dead := q.requeueFailed(ts, "worker disconnected", m.cfg.MaxAttempts)
		q.settle(&clock{m: m})
		m.unlock(q)
		m.deadLetter(q.name, dead)
	}
	return n
}

// Unget returns tasks just handed to owner by Get that could not be
// delivered (the reply could not be written): back to the front of the
// queue in their given order, Attempts lowered by one, never dead-lettered.
// Ids not leased by owner are ignored. For tasks taken with noAck, use
// UngetNoAck.
func (m *Manager) Unget(name string, owner uint64, ids []uint64) {
	if m.closed.Load() {
		return
	}
	q, err := m.lockLive(name)
	if err != nil {
		return
	}
	for i := len(ids) - 1; i >= 0; i-- {
		l := q.leases[ids[i]]
		if l == nil || l.owner != owner {
			continue
		}
		t := q.unlease(l)
		if t.Attempts > 0 {
			t.Attempts--
		}
		if q.gets > 0 {
			q.gets--
		}
		if m.store != nil {
			q.pushFrontStored(t, store.Requeue)
			continue
		}
		q.ready.pushFront(t)
	}
	if m.store != nil {
		q.flushOps()
	}
	q.settle(&clock{m: m})
	m.unlock(q)
}

// UngetNoAck is Unget for tasks taken with noAck, which hold no lease: it
// puts the given Tasks, as returned by Get, back at the front of the queue
// in their order, with Attempts lowered by one. If the queue has been
// deleted meanwhile, they are dropped.
func (m *Manager) UngetNoAck(name string, ts []Task) {
	if m.closed.Load() || len(ts) == 0 {
		return
	}
	q, err := m.lockLive(name)
	if err != nil {
		return
	}
	q.unget(ts, 0, true)
	q.settle(&clock{m: m})
	m.unlock(q)
}

// ExpireLeases handles every lease whose deadline is <= now as a Nack with
// LastError "lease expired", and returns how many expired.
func (m *Manager) ExpireLeases(now time.Time) int {
	if m.closed.Load() {
		return 0
	}
	cut := int64(now.Sub(m.epoch))
	n := 0
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if len(q.heap) == 0 || q.heap[0].deadline > cut {
			q.mu.Unlock()
			continue
		}
		var ts []Task
		for len(q.heap) > 0 && q.heap[0].deadline <= cut {
			ts = append(ts, q.unlease(q.heap[0]))
		}
		n += len(ts)
		q.expired += uint64(len(ts))
		dead := q.requeueFailed(ts, "lease expired", m.cfg.MaxAttempts)
		q.settle(&clock{m: m, t: now, ok: true})
		m.unlock(q)
		m.deadLetter(q.name, dead)
	}
	return n
}

// NextDeadline returns the earliest lease deadline over all queues;
// ok is false if no task is leased.
func (m *Manager) NextDeadline() (t time.Time, ok bool) {
	if m.closed.Load() {
		return time.Time{}, false
	}
	var best int64
	for _, q := range m.snapshot() {
		q.mu.Lock()
		if len(q.heap) > 0 && (!ok || q.heap[0].deadline < best) {
			best, ok = q.heap[0].deadline, true
		}
		q.mu.Unlock()
	}
	if !ok {
		return time.Time{}, false
	}
	return m.epoch.Add(time.Duration(best)), true
}

// LeaseChanged returns a channel that receives (a non-blocking send,
// buffer 1) whenever a lease deadline earlier than the previous earliest
// may exist, so the reaper goroutine can re-arm its timer from
// NextDeadline. The channel is never closed.
func (m *Manager) LeaseChanged() <-chan struct{} { return m.leaseCh }

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
	name := DeadLetterName(src)
	for {
		q := m.lookup(name)
		if q == nil {
			q = m.create(name) // a valid name: src was checked, and CheckName allows the suffix
		}
		q.mu.Lock()
		if q.deleted {
			q.mu.Unlock()
			continue
		}
		q.ready.reserve(len(ts))
		for _, t := range ts {
			if m.store != nil {
				t.seq = m.seq.Add(1)
				q.logTask(store.Move, &t)
			}
			q.ready.pushBack(t)
		}
		if m.store != nil {
			q.flushOps()
		}
		q.puts += uint64(len(ts))
		q.settle(&clock{m: m})
		m.unlock(q)
		break
	}
	if f := m.cfg.OnDead; f != nil {
		for _, t := range ts {
			f(src, t)
		}
	}
}

// Close makes every blocked Get and Put return ErrClosed at once, and
// every later call that returns an error return ErrClosed. It is
// idempotent. Tasks are not kept.
func (m *Manager) Close() {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		close(m.closedCh)
	})
}
