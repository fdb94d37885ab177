package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
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
// waiting get returns as soon as one task comes. Of a packed queue, it
// may instead wait for the tasks other gets' pulls bring (waitHere).
//
// A task that JetStream redelivers after its last attempt (its lease ran
// out through a gateway that died) is moved to the dead-letter queue
// instead of being handed out.
func (q *Queues) Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	ts, err := q.get(ctx, req, dst)
	if len(ts) > 0 && q.sizeSub != nil {
		q.noteHanded(req.Queue, len(ts))
	}
	return ts, err
}

// get is Get.
func (q *Queues) get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	if req.Max < 1 {
		return nil, fmt.Errorf("%w: get max must be >= 1, got %d", queue.ErrBadArgument, req.Max)
	}
	if req.Lease < 0 || req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: lease and max wait must be >= 0", queue.ErrBadArgument)
	}
	if req.Lease == 0 {
		req.Lease = q.cfg.DefaultLease
	}
	// A get with a bounded wait makes its calls to JetStream by the wait's
	// end, or by half the request timeout if that is later: its client
	// allows it the wait and a few seconds more. Calls each bounded by the
	// request timeout alone, one after another, take longer while
	// JetStream is slow to answer (a node down, a leader being elected),
	// and the client gives up on the gateway as dead. (A get with no
	// bound, as a Python client's blocking get, keeps them.)
	var by time.Time
	noWait := ctx.Err() != nil && req.MaxWait == 0 // a get that may not wait (queue.NoWait)
	if req.MaxWait > 0 || ctx.Err() != nil {
		by = time.Now().Add(max(req.MaxWait, q.cfg.RequestTimeout/2))
	}
	if req.MaxWait > 0 {
		// One deadline for the whole get, which may pull more than once.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, req.MaxWait)
		defer cancel()
		req.MaxWait = 0
	}
	s, err := q.openBy(by, req.Queue, true)
	if err != nil {
		return nil, err
	}
	for {
		// Tasks with a priority go first, highest first (priority.go);
		// then tasks of packs this gateway holds, in their order; else
		// wait for JetStream, and for a task held meanwhile (or due).
		levels := s.levelsDesc()
		if len(levels) > 0 {
			ts, err := q.takeLevels(s, levels, req, dst[:0], by)
			if err != nil || len(ts) > 0 {
				return ts, err
			}
		}
		pctx, wake := context.WithCancel(ctx)
		wait := &getWait{wake: wake, want: req.Max}
		ts, again, next, err := q.takeHeldOrWait(s, req, dst[:0], wait)
		if err != nil || len(ts) > 0 || again {
			wake()
			switch {
			case err != nil:
				return nil, err
			case len(ts) > 0:
				return q.topUp(s, req, ts, 1, 1, by) // and what else is there at once
			case ctx.Err() != nil:
				return nil, nil
			}
			continue
		}
		if len(s.levelsDesc()) != len(levels) {
			// A level made since this get looked: look again, at it too.
			q.unwait(s, wait)
			wake()
			continue
		}
		var timer *time.Timer
		if !next.IsZero() {
			timer = time.AfterFunc(time.Until(next), wake)
		}
		// counted says this get's pull is counted in s.surplus.
		waitHere, counted, surplus := false, false, 0.0
		if len(levels) == 0 && q.cfg.Pack > 1 {
			waitHere, surplus = q.waitHere(s, wait, ctx.Err() == nil)
			counted = !waitHere
		}
		if waitHere {
			// Other gets' pulls bring enough for every get waiting: wait
			// for their tasks, or their end, rather than pull a pack more.
			stop := context.AfterFunc(q.ctx, wake)
			<-pctx.Done()
			stop()
			if timer != nil {
				timer.Stop()
			}
			q.unwait(s, wait)
			woken := ctx.Err() == nil
			wake()
			switch {
			case q.closed.Load():
				return nil, queue.ErrClosed
			case !woken:
				return nil, nil // the wait is over
			}
			continue
		}
		preq := req
		preq.Max = q.msgsFor(s, req.Max)
		// With levels, it waits on level 0 a slice at a time, and looks
		// at the other levels in between (priority.go): a task put on
		// another level through another gateway gives it no sign.
		var slice time.Duration
		if len(levels) > 0 {
			slice = levelSlice
		}
		msgs, err := q.pull(pctx, s, preq, slice, by)
		if timer != nil {
			timer.Stop()
		}
		if counted && len(msgs) == 0 {
			q.pulled(s, surplus)
		}
		q.unwait(s, wait)
		woken := pctx.Err() != nil && ctx.Err() == nil
		wake()
		if err != nil {
			q.forget(req.Queue) // deleted through another gateway, maybe: open it anew next time
			if isGone(err) {
				return nil, nil // deleted meanwhile: as a get of a deleted queue
			}
			return nil, err
		}
		if len(msgs) == 0 && !woken {
			if len(levels) > 0 && waitLeft(ctx) {
				continue // a slice is over: look at every level again
			}
			if noWait {
				q.sayWanted(s) // another gateway may hold some (wanted.go)
			}
			return nil, nil // the wait is over
		}
		if len(msgs) > 0 {
			ts, err := q.deliver(s, req, msgs, dst[:0], by)
			if counted {
				q.pulled(s, surplus) // after its tasks are held, for the gets waiting here
			}
			if err != nil {
				return ts, err
			}
			if len(ts) > 0 {
				return q.topUp(s, req, ts, preq.Max, len(msgs), by)
			}
			// None to hand out: redeliveries being completed through
			// another gateway, or dead-lettered. Wait on for the rest
			// of the get's time.
			if ctx.Err() != nil {
				return nil, nil
			}
		}
		// Woken: a task was held while this get waited.
	}
}

// unwait takes wait off the gets waiting on s, if a wake has not.
func (q *Queues) unwait(s *stream, wait *getWait) {
	q.mu.Lock()
	delete(s.waiting, wait)
	q.mu.Unlock()
}

// waitHere says whether the get of wait, registered as waiting on s, a
// packed queue, is to wait here rather than pull; if it is to pull, it
// returns how many tasks beyond its own its pull is expected to bring (a
// get of fewer tasks than a message carried lately pulls one, a whole
// pack), counted in s.surplus until the caller passes it to pulled. A
// get waits here if it may wait (one that
// must not takes what JetStream has at once) and the pulls other gets of
// this gateway have out are expected to bring enough beyond their own for
// it and every other get waiting here, at the tasks a message carried
// lately: it is woken by the tasks those pulls hold, or by their end.
// Without this, every get of one task that found none held pulled a pack
// of its own: with many single-task workers a gateway held hundreds of
// tasks for over a second, and moved them to the end of the queue
// (moveOverdue).
func (q *Queues) waitHere(s *stream, wait *getWait, mayWait bool) (here bool, surplus float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := s.waiting[wait]; ok && mayWait && s.surplus > 0 {
		want := wait.want
		for w := range s.waiting {
			if w.here {
				want += w.want
			}
		}
		if float64(want) <= s.surplus {
			wait.here = true
			return true, 0
		}
	}
	per := s.perMsg
	if per < 1 {
		per = float64(q.cfg.Pack)
	}
	if w := float64(wait.want); w < per {
		surplus = per - w // one message, a pack with more than it takes
	}
	s.surplus += surplus
	return false, surplus
}

// pulled ends a pull counted by waitHere, once what it brought is
// held: the gets waiting here look again, and pull if none is left to
// bring their tasks.
func (q *Queues) pulled(s *stream, surplus float64) {
	q.mu.Lock()
	s.surplus -= surplus
	if s.surplus < 0.5 {
		s.surplus = 0 // no float residue
	}
	s.wakeHere()
	q.mu.Unlock()
}

// topUp adds to ts, a get's tasks, what else is there at once, while the
// last pull brought all the messages it asked for (asked, got) and the
// tasks fall short of req.Max: the first pulls of a queue guess how many
// tasks its messages carry (msgsFor), and may guess high.
func (q *Queues) topUp(s *stream, req queue.GetRequest, ts []queue.Task, asked, got int, by time.Time) ([]queue.Task, error) {
	for range 4 {
		if len(ts) >= req.Max || got < asked {
			break
		}
		asked = q.msgsFor(s, req.Max-len(ts))
		rctx, cancel := q.callBy(by, pullFloor)
		msgs, _ := q.pulls.pull(rctx, s.next, asked, 0) // at worst none
		cancel()
		got = len(msgs)
		var err error
		if ts, err = q.deliver(s, req, msgs, ts, by); err != nil {
			return ts, err
		}
	}
	return ts, nil
}

// msgsFor is how many messages of s to pull for n tasks. With packing a
// message may carry up to a pack of tasks, and what it brings beyond n is
// held here, waiting, when other gateways' workers may be idle; so pulls
// follow how many tasks the queue's messages carried lately, starting
// from a full pack each.
func (q *Queues) msgsFor(s *stream, n int) int {
	if q.cfg.Pack <= 1 {
		return n
	}
	q.mu.Lock()
	per := s.perMsg
	q.mu.Unlock()
	if per < 1 {
		per = float64(q.cfg.Pack)
	}
	return max(1, int(math.Ceil(float64(n)/per)))
}

// notePerMsg updates s's tasks per message with msgs, a delivery of
// tasks. Called with q.mu held.
func (q *Queues) notePerMsgLocked(s *stream, msgs, tasks int) {
	if q.cfg.Pack <= 1 || msgs == 0 {
		return
	}
	seen := float64(tasks) / float64(msgs)
	if s.perMsg < 1 {
		s.perMsg = seen
		return
	}
	s.perMsg = (3*s.perMsg + seen) / 4
}

// takeHeldOrWait hands out held tasks of s, as many as req takes, and
// dead-letters those past their last attempt. If it hands out none, it
// registers wait, to be woken when a task is held, and returns when the
// first held task not yet due will be (next, zero if none); or, if one is
// due already or some were dead-lettered, again: the caller looks again.
// Taking and registering are one critical section, so that a task held in
// between is not missed.
func (q *Queues) takeHeldOrWait(s *stream, req queue.GetRequest, ts []queue.Task, wait *getWait) (_ []queue.Task, again bool, next time.Time, err error) {
	now := time.Now()
	var dead []*lease
	q.mu.Lock()
	if len(s.held) > 0 {
		if q.closed.Load() {
			q.mu.Unlock()
			return nil, false, next, queue.ErrClosed
		}
		ts, dead = q.takeHeldLocked(s, req, now, ts)
		if len(ts) > 0 && req.NoAck {
			q.wakeReaper()
		}
	}
	if len(ts) == 0 && len(dead) == 0 {
		for _, h := range s.held {
			if s.paused {
				break // resuming wakes the gets
			}
			if !h.due.After(now) {
				again = true
			} else if next.IsZero() || h.due.Before(next) {
				next = h.due
			}
		}
		if !again {
			if s.waiting == nil {
				s.waiting = make(map[*getWait]struct{})
			}
			s.waiting[wait] = struct{}{}
		}
	}
	q.mu.Unlock()
	for _, l := range dead {
		q.deadLetter(l, l.task.LastError)
	}
	return ts, again || len(dead) > 0, next, nil
}

// pull takes up to req.Max messages: what is there at once, or else the
// first that comes within the wait (within slice, if over 0), and what
// else is there then. Its requests expire before the wait (or the slice)
// ends, so that JetStream ends them: a request given up could lose a task
// in flight to it until AckWait.
func (q *Queues) pull(ctx context.Context, s *stream, req queue.GetRequest, slice time.Duration, by time.Time) ([]*nats.Msg, error) {
	var msgs []*nats.Msg
	rctx, cancel := q.callBy(by, pullFloor)
	err := retryingTransient(rctx, func() error {
		got, err := q.pulls.pull(rctx, s.next, req.Max, 0)
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
	if slice > 0 {
		wait, cancel = context.WithTimeout(wait, slice)
		defer cancel()
	}
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
		msgs, err = q.pulls.pull(wait, s.next, 1, expires)
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
		rctx, cancel := q.callBy(by, pullFloor)
		more, _ := q.pulls.pull(rctx, s.next, req.Max-1, 0) // at worst none
		cancel()
		msgs = append(msgs, more...)
	}
	return msgs, nil
}

// pullFloor is the least time a get's pull of what is there at once is
// given, however late in the get's wait it is sent: a pull given up after
// its request went out costs the tasks JetStream then sends it a delivery
// (pulls.dispatch naks them).
const pullFloor = 250 * time.Millisecond

// giveBack hands delivered messages back to JetStream at once, without
// waiting for its confirmation: they are delivered again ahead of newer
// ones.
func (q *Queues) giveBack(msgs []*nats.Msg) {
	for _, m := range msgs {
		_ = q.cfg.Conn.Publish(m.Reply, nakPayload)
	}
}

// answerAll sends payload (a nak, an ack) for each of msgs, and waits
// until JetStream has taken each, or for attemptTimeout: what Close sends,
// as its connection and the node in its process go down right after,
// where one sent without waiting could be lost with them, and its message
// wait for AckWait. Each request has a timeout of its own, so that every
// one is sent however slow JetStream is. One answered that nobody takes
// it is sent again: a consumer's new leader, just handed the leadership
// by this node (Node.HandOver), takes acks only once its interest has
// reached this node.
func (q *Queues) answerAll(msgs []*nats.Msg, payload []byte) {
	if len(msgs) == 0 {
		return
	}
	n, err := eachAtOnce(len(msgs), answersAtOnce, func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), attemptTimeout)
		defer cancel()
		return q.answer(ctx, msgs[i].Reply, payload)
	})
	if n > 0 {
		q.log.Warn("deliveries not confirmed handed back or acked as the gateway closed; JetStream may deliver them again after AckWait",
			"deliveries", n, "of", len(msgs), "err", err)
	}
}

// answersAtOnce bounds the answers answerAll has in flight.
const answersAtOnce = 64

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
func (q *Queues) deliver(s *stream, req queue.GetRequest, msgs []*nats.Msg, ts []queue.Task, by time.Time) ([]queue.Task, error) {
	if len(msgs) == 0 {
		return ts, nil
	}
	mds := make([]*nats.MsgMetadata, len(msgs)) // nil where a message has none
	for i, m := range msgs {
		mds[i], _ = m.Metadata()
	}
	// Claims of redeliveries end by the get's end, or a quarter of the
	// request timeout from now if that is later: the get still answers
	// in time, and a claim made at the end of a long wait has time to go
	// through (one that does not hands its task out all the same).
	claimBy := by
	if !by.IsZero() && slices.ContainsFunc(mds, redelivered) {
		if least := time.Now().Add(q.cfg.RequestTimeout / 4); by.Before(least) {
			claimBy = least
		}
	}
	msgs, mds, failedBefore := q.claimRedeliveries(s, msgs, mds, claimBy)
	// A redelivered pack is recorded as this gateway's, and the record
	// says which of its tasks are done.
	type claim struct {
		rec     recordState
		claimed bool
	}
	var claims map[int]claim
	for i, m := range msgs {
		if md := mds[i]; md != nil && md.NumDelivered > 1 && m.Header.Get(hdrPack) != "" {
			if claims == nil {
				claims = make(map[int]claim)
			}
			rec, claimed := q.claimPack(s, md.Sequence.Stream, md.NumDelivered, md.Timestamp, claimBy)
			claims[i] = claim{rec, claimed}
		}
	}
	now := time.Now()
	maxAttempts := 0 // the queue's policy, looked up for the first task delivered before
	var dead []*lease
	var doneAlready []*nats.Msg
	q.mu.Lock()
	if q.closed.Load() { // Close gave back the leases it found; give these back too
		q.mu.Unlock()
		q.giveBack(msgs)
		return nil, queue.ErrClosed
	}
	// singlesLeft counts the tasks stored alone among the messages not yet
	// taken below: each is leased as it is taken, so goes out with this
	// get, and a pack before it hands out its tasks first, leaving them
	// room.
	singlesLeft := 0
	for i, m := range msgs {
		if mds[i] != nil && m.Header.Get(hdrPack) == "" {
			singlesLeft++
		}
	}
	packed, tasks, fired := false, 0, 0
	for i, m := range msgs {
		md := mds[i]
		if md == nil {
			q.log.Warn("jetstream message without metadata; left to redeliver", "queue", s.queue)
			continue
		}
		if md.Consumer == consumerName && md.Sequence.Consumer > s.lastDelivered {
			s.lastDelivered = md.Sequence.Consumer
		}
		if m.Header.Get(hdrPack) != "" {
			// Its tasks are held, and handed out from there, in order:
			// as many now as leave room for the tasks stored alone after
			// it, so that those do not go out ahead of them in this get.
			// The rest wait for the next gets, behind the tasks stored
			// alone after the pack.
			n, ack, err := q.unpackLocked(s, m, md, now, claims[i].rec, md.NumDelivered > 1 && !claims[i].claimed)
			if err != nil {
				q.log.Warn("malformed pack; left to redeliver", "queue", s.queue, "seq", md.Sequence.Stream, "err", err)
			}
			if ack != nil {
				doneAlready = append(doneAlready, ack)
			}
			packed, tasks = true, tasks+n
			if room := req.Max - len(ts) - singlesLeft; room > 0 {
				upTo := req
				upTo.Max = len(ts) + room
				var heldDead []*lease
				ts, heldDead = q.takeHeldLocked(s, upTo, now, ts)
				dead = append(dead, heldDead...)
			}
			continue
		}
		singlesLeft--
		tasks++
		if md.NumDelivered == 1 && m.Header.Get(hdrScheduler) != "" {
			fired++ // a delayed task come due: stored twice (figures)
		}
		delivered := q.handedBack.attempts(md)
		t := taskOf(md.Sequence.Stream, md.Timestamp, m.Header, m.Data, delivered)
		if !req.NoAck {
			t.Token = m.Reply
		}
		key := leaseKey{s.queue, t.ID}
		if md.NumDelivered > 1 {
			if e, ok := q.lastErr[key]; ok {
				t.LastError = e
				delete(q.lastErr, key)
			} else if delivered > 1 {
				t.LastError = errExpired
			}
			delete(q.retrying[s.queue], t.ID)
			delete(s.givenBack, md.Sequence.Stream)
		}
		past := false
		if t.Attempts > 1 {
			if maxAttempts == 0 {
				maxAttempts = q.policy(s.queue).MaxAttempts
			}
			past = pastLastAttempt(t, s, req, maxAttempts)
		}
		if past && !failedBefore[md.Sequence.Stream] && t.Attempts <= lostDeliveries*maxAttempts {
			// Its last attempt did not fail (a gateway that sees it fail
			// dead-letters it, or marks it failed as it gives it back):
			// the deliveries past it were lost, with a gateway or a
			// consumer's leader, or naked unseen by another gateway. It
			// runs once more, as its last, rather than be dead-lettered
			// unrun; past lostDeliveries times the attempts allowed,
			// every delivery counts, as for a pack.
			t.Attempts, past = maxAttempts, false
		}
		l := &lease{key: key, s: s, msg: m, task: t, owner: req.Owner, since: now, touched: now, confirmed: now, deadline: now.Add(req.Lease)}
		if past {
			// Its delivery before failed, given back to be dead-lettered
			// here; or it was delivered too often: the task may be what
			// brings down each gateway that holds it.
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
	q.notePerMsgLocked(s, len(msgs), tasks)
	if packed {
		var heldDead []*lease
		ts, heldDead = q.takeHeldLocked(s, req, now, ts)
		dead = append(dead, heldDead...)
		q.wakeReaper()
		s.wakeGets(len(s.held)) // gets waiting meanwhile take the rest
	}
	q.mu.Unlock()
	if fired > 0 {
		q.countPacked(s, -fired)
	}
	for _, l := range dead {
		q.deadLetter(l, l.task.LastError)
	}
	if err := q.ackAll(doneAlready); err != nil {
		q.log.Warn("packs whose tasks were all recorded done not acked; JetStream delivers them again after AckWait", "queue", s.queue, "err", err)
	}
	return ts, nil
}

// pastLastAttempt reports whether t, delivered again for req, is past its
// last attempt, to be dead-lettered rather than handed out. A get that
// takes tasks for good (NoAck: map's results, qmaster get) takes it
// whatever its count: only a lease can fail, and JetStream counts as a
// delivery each one whose ack it did not see, as when a consumer's leader
// is cut off with the acks of a results queue's deliveries.
func pastLastAttempt(t queue.Task, s *stream, req queue.GetRequest, maxAttempts int) bool {
	return !req.NoAck && t.Attempts > maxAttempts && !queue.IsDeadLetterName(s.queue)
}

// redelivered reports whether a message was delivered before.
func redelivered(md *nats.MsgMetadata) bool { return md != nil && md.NumDelivered > 1 }

// claimRedeliveries records the redeliveries among msgs (handover.go) and
// returns msgs and their metadata mds less those not to hand out: tasks
// being completed through another gateway. failed holds the stream
// sequences of those whose previous delivery failed and was given back
// (failedMark). The records are written concurrently, a few at a time: a
// dead worker's prefetched tasks come back together. A get with no
// redelivery costs nothing here.
func (q *Queues) claimRedeliveries(s *stream, msgs []*nats.Msg, mds []*nats.MsgMetadata, by time.Time) (_ []*nats.Msg, _ []*nats.MsgMetadata, failed map[uint64]bool) {
	// A pack's redelivery is recorded in its own record (claimPack).
	if !slices.ContainsFunc(mds, redelivered) {
		return msgs, mds, nil
	}
	var claims []int
	for i, md := range mds {
		if redelivered(md) && msgs[i].Header.Get(hdrPack) == "" {
			claims = append(claims, i)
		}
	}
	hand, marked := make([]bool, len(msgs)), make([]bool, len(msgs))
	for i := range hand {
		hand[i] = true
	}
	eachAtOnce(len(claims), maxConcurrentClaims, func(k int) error {
		i := claims[k]
		hand[i], marked[i] = q.claimRedelivery(s, mds[i].Sequence.Stream, mds[i].NumDelivered, mds[i].Timestamp.UnixNano(), by)
		return nil
	})
	keptMsgs, keptMds := msgs[:0], mds[:0]
	for i := range msgs {
		if !hand[i] {
			continue
		}
		keptMsgs, keptMds = append(keptMsgs, msgs[i]), append(keptMds, mds[i])
		if marked[i] {
			if failed == nil {
				failed = make(map[uint64]bool)
			}
			failed[mds[i].Sequence.Stream] = true
		}
	}
	return keptMsgs, keptMds, failed
}

// maxConcurrentClaims bounds the redelivery records one get writes at once.
const maxConcurrentClaims = 16
