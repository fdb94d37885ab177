package queue

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/store"
)

// Manager owns a set of named queues. It starts no goroutines.
//
// Its methods live by concern: put.go (Put), get.go (Get, Unget), ack.go
// (Ack, Nack, Extend), reap.go (lease expiry and Release), admin.go and
// operator.go (what operators see and do), persist.go (the store),
// resultqueues.go (the result queues kept for the server).
type Manager struct {
	cfg   Config
	now   func() time.Time
	epoch time.Time // lease deadlines are kept as nanoseconds since epoch

	queues sync.Map // name → *queue; lock-free lookups on the hot path
	nextID atomic.Uint64
	ids    *idReservation // nil: IDs are not kept across a restart (ids.go)
	seq    atomic.Int64   // the last Seq given at the back of a queue

	store store.Store // nil: in memory only; a queue's changes go through persist.go; policy.go and deletions.go append their own records

	policyMu sync.Mutex
	policies map[string]Policy // set by SetPolicy, by queue name

	pauseMu  sync.Mutex     // held by SetPaused, and by Delete to forget a pause
	deleting map[string]int // under pauseMu: Deletes under way, by queue name

	deletionsMu sync.Mutex
	deletions   map[string]Deletion // kept for the store (deletions.go)

	// completing holds, with a store, the tasks an Ack took out of
	// memory whose acks are not appended yet (AckRequest.Publish stores
	// them with their results): a snapshot dumps them as live, as the
	// log has them (persist.go). Locked after a queue's lock, if any.
	completingMu sync.Mutex
	completing   map[*Task]*completingBatch // by the address of its first task

	// resultQueues are the result queues the store kept, until
	// ResultQueues hands them over (resultqueues.go).
	resultQueues atomic.Pointer[map[string]string]

	// deadAtLoad are the tasks load dead-lettered, for ReapLeases to tell
	// OnDead of: New's caller may not be ready for OnDead before it returns.
	deadAtLoad []deadTasks

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
// deliveries used), each queue in its stored order, but for one whose
// attempts are used up: it is dead-lettered, and ReapLeases calls OnDead
// for it.
func New(cfg Config) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := &Manager{
		cfg:       cfg,
		now:       cfg.Now,
		epoch:     cfg.Now(),
		closedCh:  make(chan struct{}),
		leaseCh:   make(chan struct{}, 1),
		store:     cfg.Store,
		policies:  make(map[string]Policy),
		deletions: make(map[string]Deletion),
		deleting:  make(map[string]int),
	}
	if err := m.load(); err != nil {
		return nil, err
	}
	return m, nil
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
	if q := m.lookup(name); q != nil {
		return q
	}
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

// lockOrCreate returns the named queue locked, creating it if needed (a
// queue deleted meanwhile is made anew).
func (m *Manager) lockOrCreate(name string) (*queue, error) {
	for {
		q, err := m.lookupOrCreate(name)
		if err != nil {
			return nil, err
		}
		q.mu.Lock()
		if !q.deleted {
			return q, nil
		}
		q.mu.Unlock()
	}
}

// unlock releases q.mu, then signals LeaseChanged if q got a new earliest
// lease deadline or due time.
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
