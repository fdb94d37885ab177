package jsqueue

import (
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/queue"
)

// deadLetter moves the task of a failed last delivery l to its queue's
// dead-letter queue: stored there first, then acked here, so that a crash
// in between leaves it in both (and a second error result at worst), never
// in neither. Then OnDead is called.
func (q *Queues) deadLetter(l *lease, errText string) error {
	t := l.task
	t.LastError = errText
	dq, err := q.open(queue.DeadLetterName(l.key.queue), true)
	if err == nil {
		ctx, cancel := q.call()
		_, err = q.publish(ctx, []*nats.Msg{movedMsg(dq.subject, t, t.Attempts)})
		cancel()
	}
	if err != nil {
		// Delivered again, it comes back here: a packed task after a
		// while, not at once to a get that would try it again and again.
		if l.pack != nil {
			q.mu.Lock()
			q.requeueLocked(l, true, errText, time.Now().Add(deadLetterRetry))
			q.mu.Unlock()
		} else {
			q.giveBack([]*nats.Msg{l.msg})
		}
		return err
	}
	q.recordDone([]*lease{l})
	q.mu.Lock()
	m := q.settleLocked(l)
	q.mu.Unlock()
	if m != nil {
		if err := q.ack(m); err != nil {
			q.log.Warn("dead-lettered task not acked in its queue; it may be dead-lettered twice", "queue", l.key.queue, "task", t.ID, "err", err)
		}
	}
	q.mu.Lock()
	delete(q.lastErr, l.key)
	q.mu.Unlock()
	if f := q.cfg.OnDead; f != nil {
		f(l.key.queue, t)
	}
	return nil
}

// deadLetterRetry is how long a packed task whose move to the dead-letter
// queue failed waits before it is tried again.
const deadLetterRetry = time.Second

// putBack stores again, at the end of s's queue, tasks taken for good that
// never reached their client.
func (q *Queues) putBack(s *stream, ts []queue.Task) {
	msgs := make([]*nats.Msg, len(ts))
	for i, t := range ts {
		msgs[i] = movedMsg(s.subject, t, t.Attempts-1)
	}
	ctx, cancel := q.call()
	defer cancel()
	if _, err := q.publish(ctx, msgs); err != nil {
		q.log.Error("could not put back tasks a client never received", "queue", s.queue, "tasks", len(ts), "err", err)
	}
}
