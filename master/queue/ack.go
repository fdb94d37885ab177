package queue

import (
	"errors"
	"fmt"
	"time"

	"github.com/qm-dev/qm/store"
)

// AckRequest names leased tasks that succeeded.
type AckRequest struct {
	// Queue is the queue the tasks were taken from.
	Queue string
	// Owner must hold the leases of IDs.
	Owner uint64
	// IDs are the tasks to ack.
	IDs []uint64
	// Tokens, if not nil, are the tokens of the deliveries of IDs, in the
	// same order ("" for none): queues kept by an engine ack through them
	// deliveries that another server handed out (Task.Token). These
	// queues ignore them: a lease is the owner's, on this master.
	Tokens []string
	// Publish, if not nil, is called with the tasks acked, outside every
	// lock, before their acks are stored. It puts their results, each put
	// naming the tasks whose results it carries (PutRequest.ResultsOf):
	// a Manager stores those tasks' acks in the same append as the
	// results, so that a crash keeps both or neither, never an acked
	// task whose result is lost nor a result whose task runs again. It
	// returns the acked tasks whose results it put nowhere (no one waits
	// for them): Ack stores their acks. If it fails, Ack returns its
	// error, and the acks of the tasks whose results were not put are
	// not stored (they run again after a restart, or, in queues kept by
	// an engine, at once).
	Publish func(acked []Task) (unpublished []Task, err error)
}

// Ack removes leased tasks for good (counted as done). Each id must be
// leased by req.Owner in the named queue; for each id that is not, the
// joined error holds a *TaskError wrapping ErrNotLeased, and the other ids
// still succeed. Ack returns copies of the acked Tasks, in the order of
// req.IDs, in dst's array when it is large enough (dst may be nil), so
// that a caller acking one batch after another reuses one buffer. With a
// store, the acks are durable when Ack returns.
func (m *Manager) Ack(req AckRequest, dst []Task) ([]Task, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	q, err := m.lockLive(req.Queue)
	if err != nil {
		return nil, err
	}
	ts := dst[:0]
	if cap(ts) < len(req.IDs) {
		ts = make([]Task, 0, len(req.IDs))
	}
	var bad []uint64
	for _, id := range req.IDs {
		l := q.leases[id]
		if l == nil || l.owner != req.Owner {
			bad = append(bad, id)
			continue
		}
		ts = append(ts, q.unlease(l))
	}
	q.acks += uint64(len(ts))
	q.done += uint64(len(ts))
	var completing *completingBatch
	if req.Publish != nil && m.store != nil {
		completing = m.startCompleting(q.name, ts)
	}
	if len(ts) > 0 && q.putters.head != nil {
		q.settle(&clock{m: m})
	}
	var ticket store.Ticket
	if req.Publish == nil {
		q.recordDeletes(ts)
		ticket = q.log.commit()
	}
	log := q.log
	m.unlock(q)
	if req.Publish != nil && len(ts) > 0 {
		unpublished, err := req.Publish(ts)
		if err != nil {
			// The acks of the tasks whose results were not put are not
			// stored: the tasks stay completing, live in the snapshots,
			// to run again after a restart.
			m.endBatch(completing, true, nil)
			return ts, errors.Join(err, notLeased(bad))
		}
		// The tasks are gone from memory, so no other change names them:
		// their deletes may be stored outside the queue's lock (once out
		// of completing: see completing.go).
		m.endBatch(completing, false, func() { ticket = log.forget(unpublished) })
	}
	m.durable(ticket)
	return ts, notLeased(bad)
}

// NackRequest names a leased task whose attempt failed.
type NackRequest struct {
	Queue string
	Owner uint64 // must hold the lease
	ID    uint64
	Error string // why the attempt failed: the task's LastError
	// RetryAfter, if > 0, is how long the task waits before its next
	// delivery, instead of its queue's backoff.
	RetryAfter time.Duration
	// NoRetry sends the task to the dead-letter queue now, whatever
	// attempts it has left: the attempt would fail however often it ran.
	NoRetry bool
	// Token is the delivery's token, if it had one (see AckRequest.Tokens).
	Token string
}

// Nack ends a failed attempt of a task leased by req.Owner: it goes back
// to the front of its queue with LastError set to req.Error, after its
// retry backoff (or req.RetryAfter) if there is one, or, if its Attempts
// have reached its queue's max attempts or req.NoRetry is set, to the
// dead-letter queue (then OnDead is called). A *TaskError wrapping ErrNotLeased if the owner does
// not hold it.
func (m *Manager) Nack(req NackRequest) error {
	if req.RetryAfter < 0 || req.RetryAfter > MaxBackoff {
		return fmt.Errorf("%w: retry after must be 0 to %v, got %v", ErrBadArgument, MaxBackoff, req.RetryAfter)
	}
	if m.closed.Load() {
		return ErrClosed
	}
	q, err := m.lockLive(req.Queue)
	if err != nil {
		return err
	}
	l := q.leases[req.ID]
	if l == nil || l.owner != req.Owner {
		q.mu.Unlock()
		return &TaskError{ID: req.ID, Err: ErrNotLeased}
	}
	ts := [1]Task{q.unlease(l)}
	q.nacks++
	c := clock{m: m}
	dead := q.requeueFailed(ts[:], req.Error, req.RetryAfter, req.NoRetry, &c)
	q.settle(&c)
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
		q.setDeadline(l, deadline, int64(lease))
	}
	m.unlock(q)
	return notLeased(bad)
}
