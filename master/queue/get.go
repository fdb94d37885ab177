package queue

import (
	"context"
	"fmt"
	"time"
)

// GetRequest says what a Get takes and how. Durations follow one rule:
// zero means the default.
type GetRequest struct {
	// Queue is the queue's name; Get creates the queue on first use.
	Queue string
	// Max is how many tasks to take at most; it must be >= 1.
	Max int
	// Lease is how long the tasks are leased; 0 means Config.DefaultLease.
	// Ignored with NoAck.
	Lease time.Duration
	// Owner holds the leases: only Owner may Ack, Nack or Extend them,
	// and Release(Owner) gives them back.
	Owner uint64
	// NoAck takes the tasks for good, with no lease (counted as done), as
	// a Python client's get does.
	NoAck bool
	// MaxWait bounds how long a Get waits for a task when none is ready,
	// as well as ctx does; 0 means ctx alone. A caller serving one get
	// after another passes a long-lived ctx and each get's timeout, so
	// that no context or timer is made per get. (A get that must not wait
	// passes NoWait as its ctx.)
	MaxWait time.Duration
}

// Get takes up to req.Max ready tasks from the front of the named queue,
// creating it on first use. If none is ready it blocks until one is, or
// ctx is done, or req.MaxWait has passed; then it returns nil, nil: an
// empty result is not an error. With a done ctx Get still returns the
// tasks that are ready at once.
//
// The tasks are returned in dst's array when it is large enough (dst may
// be nil), so that a caller getting one batch after another reuses one
// buffer. They are copies with Attempts already raised.
//
// Blocked Gets are served in FIFO order. If ctx is done at the moment tasks
// are handed to a blocked Get, they go back to the front (or to the next
// waiting Get) with Attempts untouched. A Get blocked when the queue is
// deleted returns nil, nil; when the Manager is closed, nil, ErrClosed.
func (m *Manager) Get(ctx context.Context, req GetRequest, dst []Task) ([]Task, error) {
	if req.Max < 1 {
		return nil, fmt.Errorf("%w: get max must be >= 1, got %d", ErrBadArgument, req.Max)
	}
	if req.Lease < 0 {
		return nil, fmt.Errorf("%w: lease must be >= 0, got %v", ErrBadArgument, req.Lease)
	}
	if req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: max wait must be >= 0, got %v", ErrBadArgument, req.MaxWait)
	}
	if req.Lease == 0 {
		req.Lease = m.cfg.DefaultLease
	}
	if m.closed.Load() {
		return nil, ErrClosed
	}
	c := clock{m: m, t: m.now(), ok: true}
	q, err := m.lockOrCreate(req.Queue)
	if err != nil {
		return nil, err
	}
	if q.ready.len() > 0 && !q.paused {
		ts := q.take(dst, &req, &c)
		if req.NoAck && q.putters.head != nil {
			q.settle(&c)
		}
		m.unlock(q)
		return ts, nil
	}
	if ctx.Err() != nil {
		q.mu.Unlock()
		return nil, nil
	}
	g := getterPool.Get().(*getter)
	g.req, g.served, g.dst = req, false, dst
	q.getters.pushBack(g)
	q.mu.Unlock()
	var timedOut <-chan time.Time
	if req.MaxWait > 0 {
		timedOut = g.startTimer(req.MaxWait)
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
				q.unget(ts, &req)
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

// Unget puts back tasks that a Get for req handed out but that never
// reached the client (its reply could not be written): to the front of
// the queue in their given order, Attempts lowered by one, never
// dead-lettered. A leased task is put back only while req.Owner holds it
// for the same delivery; one whose lease is gone (expired or released
// meanwhile) has been requeued already. Tasks taken with NoAck are put
// back whole from ts; if the queue has been deleted meanwhile, they are
// dropped.
func (m *Manager) Unget(req GetRequest, ts []Task) {
	if m.closed.Load() || len(ts) == 0 {
		return
	}
	q, err := m.lockLive(req.Queue)
	if err != nil {
		return
	}
	q.unget(ts, &req)
	q.settle(&clock{m: m})
	m.unlock(q)
}
