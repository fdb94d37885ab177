package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/queue"
)

// errExpired is the last error of a task whose lease ran out where this
// gateway could not see it: through another gateway, or one that died.
const errExpired = "lease expired"

// Get takes up to req.Max tasks, as queue.Manager.Get does. When none is
// ready it waits for one with a single pull request (until ctx is done
// or req.MaxWait has passed), then takes what else is ready at once, so a
// waiting get returns as soon as one task comes.
//
// A task that JetStream redelivers after its last attempt (its lease ran
// out through a gateway that died) is moved to the dead-letter queue
// instead of being handed out.
func (q *Queues) Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	if req.Max < 1 {
		return nil, fmt.Errorf("%w: get max must be >= 1, got %d", queue.ErrBadArgument, req.Max)
	}
	if req.Lease < 0 || req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: lease and max wait must be >= 0", queue.ErrBadArgument)
	}
	if req.Lease == 0 {
		req.Lease = q.cfg.DefaultLease
	}
	s, err := q.open(req.Queue, true)
	if err != nil {
		return nil, err
	}
	msgs, err := q.pull(ctx, s, req)
	if err != nil {
		q.forget(req.Queue) // deleted through another gateway, maybe: open it anew next time
		if isGone(err) {
			return nil, nil // deleted meanwhile: as a get of a deleted queue
		}
		return nil, err
	}
	return q.deliver(s, req, msgs, dst[:0])
}

// pull takes up to req.Max messages: what is there at once, or else the
// first that comes within the wait, and what else is there then.
func (q *Queues) pull(ctx context.Context, s *stream, req queue.GetRequest) ([]*nats.Msg, error) {
	var msgs []*nats.Msg
	rctx, cancel := q.call()
	err := retryingTransient(rctx, func() error {
		got, err := q.pulls.pull(rctx, s, req.Max, 0)
		msgs = append(msgs, got...)
		if len(msgs) > 0 {
			return nil // delivered, whatever came after: hand them out
		}
		return err
	})
	cancel()
	if err != nil || len(msgs) > 0 || ctx.Err() != nil {
		if q.closed.Load() {
			q.giveBack(msgs)
			return nil, queue.ErrClosed
		}
		return msgs, q.pullErr(err)
	}
	wait, cancel := context.WithCancel(ctx)
	defer cancel()
	if req.MaxWait > 0 {
		wait, cancel = context.WithTimeout(wait, req.MaxWait)
		defer cancel()
	}
	stop := context.AfterFunc(q.ctx, cancel)
	defer stop()
	for sent := 0; ; {
		// A pull request at the server needs an expiry: a get with no
		// bound sends one request a minute until ctx ends. The request
		// expires a little before the get's wait does, so that JetStream
		// ends it (and the get keeps its inbox) and does not deliver a
		// task just as the get gives up.
		expires := time.Minute
		if deadline, ok := wait.Deadline(); ok {
			left := time.Until(deadline)
			if left < 5*time.Millisecond || sent > 0 && left < 20*time.Millisecond {
				// Too short for another pull request: the get would
				// likely give up before JetStream ends it.
				break
			}
			expires = min(expires, left-min(left/10, 50*time.Millisecond))
		}
		sent++
		msgs, err = q.pulls.pull(wait, s, 1, expires)
		if len(msgs) > 0 || wait.Err() != nil {
			err = nil // a task came, or the wait is over: an empty get is no error
			break
		}
		if err == nil {
			continue // the request expired: send another
		}
		if transient(err) { // no leader for a moment: wait for one
			select {
			case <-wait.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		break
	}
	if q.closed.Load() {
		q.giveBack(msgs)
		return nil, queue.ErrClosed
	}
	if err != nil || len(msgs) == 0 {
		return nil, q.pullErr(err)
	}
	if req.Max > 1 {
		rctx, cancel := q.call()
		more, _ := q.pulls.pull(rctx, s, req.Max-1, 0) // at worst none
		cancel()
		msgs = append(msgs, more...)
	}
	return msgs, nil
}

// giveBack hands delivered messages back to JetStream at once, without
// waiting for its confirmation: they are delivered again ahead of newer
// ones.
func (q *Queues) giveBack(msgs []*nats.Msg) {
	for _, m := range msgs {
		_ = q.cfg.Conn.Publish(m.Reply, nakPayload)
	}
}

func (q *Queues) pullErr(err error) error {
	switch {
	case err == nil, errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled) && !q.closed.Load():
		return nil
	case isGone(err):
		return err
	}
	return q.engineErr("get", err)
}

// deliver turns pulled messages into tasks: leased to req.Owner, or, with
// NoAck, held unacked until the server says whether their reply was
// written (Delivered, Unget). Tasks that used up their attempts go to the
// dead-letter queue instead.
func (q *Queues) deliver(s *stream, req queue.GetRequest, msgs []*nats.Msg, ts []queue.Task) ([]queue.Task, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	mds := make([]*nats.MsgMetadata, len(msgs)) // nil where a message has none
	for i, m := range msgs {
		mds[i], _ = m.Metadata()
	}
	msgs, mds = q.claimRedeliveries(s, msgs, mds)
	now := time.Now()
	var dead []*lease
	q.mu.Lock()
	if q.closed.Load() { // Close gave back the leases it found; give these back too
		q.mu.Unlock()
		q.giveBack(msgs)
		return nil, queue.ErrClosed
	}
	for i, m := range msgs {
		md := mds[i]
		if md == nil {
			q.log.Warn("jetstream message without metadata; left to redeliver", "queue", s.queue)
			continue
		}
		t := taskOf(md.Sequence.Stream, md.Timestamp, m.Header, m.Data, md.NumDelivered)
		if !req.NoAck {
			t.Token = m.Reply
		}
		key := leaseKey{s.queue, t.ID}
		if md.NumDelivered > 1 {
			if e, ok := q.lastErr[key]; ok {
				t.LastError = e
				delete(q.lastErr, key)
			} else {
				t.LastError = errExpired
			}
		}
		l := &lease{key: key, s: s, msg: m, task: t, owner: req.Owner, since: now, touched: now, confirmed: now, deadline: now.Add(req.Lease)}
		if t.Attempts > q.cfg.MaxAttempts && !queue.IsDeadLetterName(s.queue) {
			// Its last delivery's lease ran out unseen: it failed that one too.
			l.task.Attempts--
			dead = append(dead, l)
			continue
		}
		if req.NoAck {
			q.unconfirmed[key] = l
			q.wakeReaper()
		} else {
			q.addLease(l)
		}
		ts = append(ts, t)
	}
	q.mu.Unlock()
	for _, l := range dead {
		q.deadLetter(l, l.task.LastError)
	}
	return ts, nil
}

// claimRedeliveries records the redeliveries among msgs (handover.go) and
// returns msgs and their metadata mds less those not to hand out: tasks
// being completed through another gateway. The records are written
// concurrently, a few at a time: a dead worker's prefetched tasks come
// back together. A get with no redelivery costs nothing here.
func (q *Queues) claimRedeliveries(s *stream, msgs []*nats.Msg, mds []*nats.MsgMetadata) ([]*nats.Msg, []*nats.MsgMetadata) {
	redelivered := func(md *nats.MsgMetadata) bool { return md != nil && md.NumDelivered > 1 }
	if !slices.ContainsFunc(mds, redelivered) {
		return msgs, mds
	}
	hold := make([]bool, len(msgs))
	sem := make(chan struct{}, maxConcurrentClaims)
	var wg sync.WaitGroup
	for i, md := range mds {
		if !redelivered(md) {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			hold[i] = !q.claimRedelivery(s, md.Sequence.Stream, md.NumDelivered)
		})
	}
	wg.Wait()
	keptMsgs, keptMds := msgs[:0], mds[:0]
	for i := range msgs {
		if !hold[i] {
			keptMsgs, keptMds = append(keptMsgs, msgs[i]), append(keptMds, mds[i])
		}
	}
	return keptMsgs, keptMds
}

// maxConcurrentClaims bounds the redelivery records one get writes at once.
const maxConcurrentClaims = 16
