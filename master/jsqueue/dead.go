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
	// A packed task handed out before in this delivery is marked done in
	// its pack first (packhandover.go): it may have been completed through
	// another gateway meanwhile, and then it is done, not dead.
	var taken map[*pack]uint64
	var err error
	if l.pack != nil {
		q.mu.Lock()
		reissued := l.pack.reissued[l.index]
		q.mu.Unlock()
		if reissued {
			var doneAlready []bool
			doneAlready, taken, err = q.takeRefs([]taskRef{{l.pack, l.index}})
			if err == nil && doneAlready[0] {
				q.settleDone(l)
				return nil
			}
		}
	}
	var dq *stream
	if err == nil {
		dq, err = q.open(queue.DeadLetterName(l.key.queue), true)
	}
	if err == nil {
		ctx, cancel := q.call()
		_, err = q.publish(ctx, []*nats.Msg{movedMsg(dq.subject, t, t.Attempts)})
		cancel()
	}
	if err != nil {
		q.untakeRefs(taken)
		// Delivered again, it comes back here, after a while: not at once
		// to a get that would try it again and again.
		if l.pack != nil {
			q.mu.Lock()
			q.requeueLocked(l, true, errText, time.Now().Add(deadLetterRetry))
			q.mu.Unlock()
		} else {
			q.markFailed(l.msg.Reply, l.key.queue, l.key.id) // so that its redelivery is dead-lettered, not run
			_ = q.cfg.Conn.Publish(l.msg.Reply, nakBody(deadLetterRetry))
		}
		return err
	}
	q.recordDone([]*lease{l})
	q.settleDone(l)
	q.countGone(l.key.queue, 1)
	q.mu.Lock()
	delete(q.lastErr, l.key)
	q.mu.Unlock()
	if f := q.cfg.OnDead; f != nil {
		f(l.key.queue, t)
	}
	return nil
}

// deadLetterRetry is how long a task whose move to the dead-letter queue
// failed waits before it is tried again.
const deadLetterRetry = time.Second

// putBack stores again, at the end of s's queue, tasks taken for good that
// never reached their client.
func (q *Queues) putBack(s *stream, ts []queue.Task) {
	msgs := make([]*nats.Msg, len(ts))
	for i, t := range ts {
		msgs[i] = movedMsg(taskSubject(s, t), t, t.Attempts-1)
	}
	ctx, cancel := q.call()
	defer cancel()
	ids, err := q.publish(ctx, msgs)
	if err != nil {
		q.log.Error("could not put back tasks a client never received", "queue", s.queue, "tasks", len(ts), "err", err)
		return
	}
	s.notePuts(msgs, ids)
}

// settleDone counts the task of l done (settleLocked), and acks its
// delivery, or its pack's if that was its last task.
func (q *Queues) settleDone(l *lease) {
	q.mu.Lock()
	m := q.settleLocked(l)
	q.mu.Unlock()
	if m != nil {
		if err := q.ack(m); err != nil {
			q.log.Warn("a done task not acked in its queue; it may be done twice", "queue", l.key.queue, "task", l.task.ID, "err", err)
		}
	}
}
