package jsqueue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/queue"
)

// leaseKey names a task: IDs are unique within a queue.
type leaseKey struct {
	queue string
	id    uint64
}

// lease is one delivery this gateway handed out. Every field but msg and
// s is guarded by Queues.mu.
type lease struct {
	key      leaseKey
	s        *stream
	msg      *nats.Msg
	task     queue.Task // as handed out, Attempts counting this delivery
	owner    uint64
	since    time.Time
	deadline time.Time // when the client's lease runs out
	touched  time.Time // when a renewal of JetStream's ack timer was last sent
	// confirmed is when the last renewal that JetStream confirmed was
	// sent (at first, when the task was delivered). Once AckWait has
	// passed since, JetStream may have handed the task to someone else,
	// and an ack or nak of this delivery would apply to theirs (JetStream
	// tells deliveries apart only by stream sequence): the lease is lost.
	confirmed time.Time
	// acking is set while Ack stores the task's results and ack: the
	// lease is still renewed but no longer expires, is released or acked
	// twice.
	acking bool
	// lost is set when the lease is dropped for want of confirmed
	// renewals: an Ack under way must not ack the delivery. (A NoAck
	// delivery stays in Queues.unconfirmed, marked, until its Delivered or
	// Unget, which then neither ack nor give it back.)
	lost bool
	// pack, for a packed task (pack.go), is the pack it is task index of;
	// msg is then nil, and the pack's delivery is renewed and acked, not
	// this lease's.
	pack  *pack
	index int
}

// addLease records l. Called with q.mu held.
func (q *Queues) addLease(l *lease) {
	q.leases[l.key] = l
	q.wakeReaper()
	byOwner := q.owners[l.owner]
	if byOwner == nil {
		byOwner = make(map[leaseKey]*lease)
		q.owners[l.owner] = byOwner
	}
	byOwner[l.key] = l
}

// takeLease removes and returns the lease of key if owner holds it.
// Called with q.mu held.
func (q *Queues) takeLease(key leaseKey, owner uint64) *lease {
	l := q.leases[key]
	if l == nil || l.owner != owner || l.acking {
		return nil
	}
	q.dropLease(l)
	return l
}

func (q *Queues) dropLease(l *lease) {
	delete(q.leases, l.key)
	if byOwner := q.owners[l.owner]; byOwner != nil {
		delete(byOwner, l.key)
		if len(byOwner) == 0 {
			delete(q.owners, l.owner)
		}
	}
}

func notLeased(bad []uint64) error { return queue.TaskErrors(queue.ErrNotLeased, bad) }

// Ack ends the leases of tasks that succeeded: req.Publish puts their
// results first, then the acks are stored in JetStream. Until then the
// leases stay, marked acking: renewed, so that JetStream does not hand the
// task to another worker while the results wait for their queue, and no
// longer expirable or releasable. If Publish fails, the tasks are given
// back (they run again) and Ack returns its error.
func (q *Queues) Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error) {
	if q.closed.Load() {
		return nil, queue.ErrClosed
	}
	ts := dst[:0]
	ls := make([]*lease, 0, len(req.IDs))
	var (
		bad       []uint64
		orphans   []int     // indexes in req.IDs of deliveries another gateway handed out
		reissued  []taskRef // packed tasks handed out before in their pack's delivery
		reissuedL []*lease
	)
	q.mu.Lock()
	for i, id := range req.IDs {
		l := q.leases[leaseKey{req.Queue, id}]
		if l == nil && i < len(req.Tokens) && req.Tokens[i] != "" {
			orphans = append(orphans, i)
			continue
		}
		if l == nil || l.owner != req.Owner || l.acking {
			bad = append(bad, id)
			continue
		}
		l.acking = true
		if l.pack != nil && l.pack.reissued[l.index] {
			reissued, reissuedL = append(reissued, taskRef{l.pack, l.index}), append(reissuedL, l)
		}
		ts = append(ts, l.task)
		ls = append(ls, l)
	}
	q.mu.Unlock()
	var taken map[*pack]uint64
	if len(reissued) > 0 {
		var err error
		if ls, ts, bad, taken, err = q.takeReissued(ls, ts, bad, reissued, reissuedL); err != nil {
			q.releaseAcking(ls)
			return nil, err
		}
	}
	var adopted []orphan
	if len(orphans) > 0 {
		var err error
		adopted, bad, err = q.adoptOrphans(req, orphans, bad)
		if err != nil {
			q.untakeRefs(taken)
			q.releaseAcking(ls)
			return nil, err
		}
		ts = mergeInOrder(ts, req.IDs, adopted)
	}
	var err error
	if len(ts) > 0 && req.Publish != nil {
		stop := q.renewAdopted(req.Queue, adopted)
		_, err = req.Publish(ts) // a JetStream ack is not stored with the results: every task is acked below
		stop()
	}
	if err == nil {
		q.recordDone(ls) // packs these tasks leave with tasks to do
		if q.testHookSettling != nil {
			q.testHookSettling()
		}
	}
	var orphanErr error // their results are stored: the others are acked all the same
	if err != nil {
		q.untakeRefs(taken) // before their tasks are handed out again
		q.disownAll(req.Queue, adopted, true)
	} else {
		for _, o := range adopted {
			if o.packed != nil {
				orphanErr = errors.Join(orphanErr, q.settlePacked(o))
			} else {
				orphanErr = errors.Join(orphanErr, q.ack(o.msg))
			}
		}
	}
	msgs := make([]*nats.Msg, 0, len(ls))
	var lastFailed []*lease // their results not stored on their last attempt
	maxAttempts := 0        // looked up only if the results failed
	if err != nil {
		maxAttempts = q.policy(req.Queue).MaxAttempts
	}
	q.mu.Lock()
	for _, l := range ls {
		switch {
		case err != nil && l.pack != nil:
			if q.leases[l.key] == l {
				q.dropLease(l) // before another get takes the task again
			}
			q.requeueLocked(l, true, "results not stored", time.Time{})
		case err != nil:
			if !l.lost { // else JetStream may have handed it to another worker
				msgs = append(msgs, l.msg)
				if l.task.Attempts >= maxAttempts && !queue.IsDeadLetterName(req.Queue) {
					lastFailed = append(lastFailed, l)
				}
			}
		default:
			if m := q.settleLocked(l); m != nil {
				msgs = append(msgs, m)
			}
		}
	}
	q.mu.Unlock()
	if err == nil {
		err = q.ackAll(msgs)
	} else {
		// Failed as a packed task's is counted: its redelivery is
		// dead-lettered (failedMark).
		for _, l := range lastFailed {
			q.markFailed(l.msg.Reply, l.key.queue, l.key.id)
		}
		for _, m := range msgs {
			_ = q.nak(m, 0)
		}
	}
	q.mu.Lock()
	for _, l := range ls {
		if q.leases[l.key] == l {
			q.dropLease(l)
		}
	}
	q.mu.Unlock()
	return ts, errors.Join(err, orphanErr, q.notLeased(req.Queue, bad))
}

// takeReissued marks done in their packs' records the tasks of reissued
// (leases rl, among ls, whose tasks ts they are) before their results are
// stored (takeRefs). Those done already, through another gateway, leave
// ls and ts for bad, and are settled here: their completion is refused.
func (q *Queues) takeReissued(ls []*lease, ts []queue.Task, bad []uint64, reissued []taskRef, rl []*lease) ([]*lease, []queue.Task, []uint64, map[*pack]uint64, error) {
	doneAlready, taken, err := q.takeRefs(reissued)
	if err != nil {
		return ls, ts, bad, nil, err
	}
	refused := make(map[*lease]bool)
	for k, l := range rl {
		if doneAlready[k] {
			refused[l] = true
			bad = append(bad, l.key.id)
		}
	}
	if len(refused) == 0 {
		return ls, ts, bad, taken, nil
	}
	keptL, keptT := ls[:0], ts[:0]
	var acks []*nats.Msg
	q.mu.Lock()
	for k, l := range ls {
		if !refused[l] {
			keptL, keptT = append(keptL, l), append(keptT, ts[k])
			continue
		}
		if q.leases[l.key] == l {
			q.dropLease(l)
		}
		if m := q.settleLocked(l); m != nil {
			acks = append(acks, m)
		}
	}
	q.mu.Unlock()
	if err := q.ackAll(acks); err != nil {
		q.log.Warn("packs whose tasks were all done not acked; JetStream delivers them again after AckWait", "packs", len(acks), "err", err)
	}
	return keptL, keptT, bad, taken, nil
}

// adoptOrphans takes the completions at orphans (indexes in req.IDs) of
// deliveries this gateway did not hand out, as far as they are the
// current deliveries of their tasks (adoptOrphan, adoptPacked); the
// others join bad. Packed tasks are taken a pack at a time.
func (q *Queues) adoptOrphans(req queue.AckRequest, orphans []int, bad []uint64) ([]orphan, []uint64, error) {
	s, err := q.open(req.Queue, false)
	if err != nil {
		return nil, bad, err
	}
	var adopted []orphan
	type packDelivery struct{ seq, delivered uint64 }
	packs := make(map[packDelivery][]int) // indexes in req.IDs
	var order []packDelivery
	for _, i := range orphans {
		if isPackToken(req.Tokens[i]) {
			seq, delivered, ok := packDeliveryOf(req.IDs[i], req.Tokens[i])
			if !ok {
				bad = append(bad, req.IDs[i])
				continue
			}
			pd := packDelivery{seq, delivered}
			if packs[pd] == nil {
				order = append(order, pd)
			}
			packs[pd] = append(packs[pd], i)
			continue
		}
		o, ok, err := q.adoptOrphan(s, req.IDs[i], req.Tokens[i])
		if err != nil {
			q.disownAll(req.Queue, adopted, false)
			return nil, bad, err
		}
		if !ok {
			bad = append(bad, req.IDs[i])
			continue
		}
		o.index = i
		adopted = append(adopted, o)
	}
	for _, pd := range order {
		at := packs[pd]
		ids, tokens := make([]uint64, len(at)), make([]string, len(at))
		for k, i := range at {
			ids[k], tokens[k] = req.IDs[i], req.Tokens[i]
		}
		group, err := q.adoptPacked(s, ids, tokens)
		if err != nil {
			q.disownAll(req.Queue, adopted, false)
			return nil, bad, err
		}
		for k, o := range group {
			if o.msg == nil {
				bad = append(bad, ids[k])
				continue
			}
			o.index = at[k]
			adopted = append(adopted, o)
		}
	}
	slices.SortFunc(adopted, func(a, b orphan) int { return cmp.Compare(a.index, b.index) }) // as mergeInOrder needs
	return adopted, bad, nil
}

// disownAll undoes the adoption of each of adopted. A pack one of whose
// tasks could not be stored again is its to do again, so it is not acked
// by the last of them (packDone), which adoptPacked puts after the others.
func (q *Queues) disownAll(name string, adopted []orphan, resultsFailed bool) {
	failed := make(map[string]bool) // keys of packs' records
	for _, o := range adopted {
		if o.packed != nil && failed[o.packed.key()] {
			o.packDone = false
		}
		if !q.disown(name, o, resultsFailed) && o.packed != nil {
			failed[o.packed.key()] = true
		}
	}
}

// renewAdopted keeps JetStream from handing out again the deliveries of
// queue name's tasks adopted (unpacked ones) while their results are
// stored, which may take longer than an ack wait when the results' queue
// is unavailable: it sends each "in progress" every third of the queue's
// AckWait until stop, which waits for it. Such a delivery is recorded done
// for one AckWait only (claim), so that its task runs again if this
// gateway dies before it acks. A packed task's record keeps it done, and
// this gateway's own leases are renewed by the reaper.
func (q *Queues) renewAdopted(name string, adopted []orphan) (stop func()) {
	var subjects []string
	for _, o := range adopted {
		if o.packed == nil {
			subjects = append(subjects, o.msg.Reply)
		}
	}
	if len(subjects) == 0 {
		return func() {}
	}
	every := q.cfg.AckWait / 3
	if s, err := q.open(name, false); err == nil && s.ackWait > 0 {
		every = s.ackWait / 3
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			for _, subj := range subjects {
				_ = q.cfg.Conn.Publish(subj, progressPayload)
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

// mergeInOrder returns held, the tasks of this gateway's leases in the
// order of ids, with the adopted ones in their places among them.
func mergeInOrder(held []queue.Task, ids []uint64, adopted []orphan) []queue.Task {
	if len(adopted) == 0 {
		return held
	}
	out := make([]queue.Task, 0, len(held)+len(adopted))
	h, a := 0, 0
	for i, id := range ids {
		switch {
		case a < len(adopted) && adopted[a].index == i:
			out = append(out, adopted[a].task)
			a++
		case h < len(held) && held[h].ID == id:
			out = append(out, held[h])
			h++
		}
	}
	return out
}

// releaseAcking undoes Ack's marking of ls, for an Ack that stopped
// before it published anything.
func (q *Queues) releaseAcking(ls []*lease) {
	q.mu.Lock()
	for _, l := range ls {
		l.acking = false
	}
	q.mu.Unlock()
}

// notLeased is the error for ids not leased by the caller: ErrNotLeased
// for each, or ErrUnknownQueue if the queue does not exist.
func (q *Queues) notLeased(name string, bad []uint64) error {
	if len(bad) == 0 {
		return nil
	}
	if _, err := q.open(name, false); errors.Is(err, queue.ErrUnknownQueue) {
		return err
	}
	return notLeased(bad)
}

// ackAll acks msgs and waits until JetStream has stored the acks. A
// consumer applies one connection's acks in order, so all but the last
// are sent without a reply and the last is double-acked: its
// confirmation covers the ones before it. That holds only if the consumer
// had a leader all along: if the last ack's first try is not answered
// (plain acks sent meanwhile may have been dropped), every ack is sent
// again, each confirmed (acks are idempotent).
//
// (Confirming the last acks of concurrent calls together, in rounds, was
// tried for issue 15 and gained nothing measurable: see docs/SCALING.md.)
func (q *Queues) ackAll(msgs []*nats.Msg) error {
	switch len(msgs) {
	case 0:
		return nil
	case 1:
		return q.ack(msgs[0])
	}
	last := len(msgs) - 1
	sent := true
	for _, m := range msgs[:last] {
		if q.cfg.Conn.Publish(m.Reply, ackPayload) != nil {
			sent = false
			break
		}
	}
	if sent {
		ctx, cancel := context.WithTimeout(q.ctx, attemptTimeout)
		_, err := q.cfg.Conn.RequestWithContext(ctx, msgs[last].Reply, ackPayload)
		cancel()
		if err == nil {
			q.packsAcked(msgs, true)
			return nil
		}
	}
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() { errs[i] = q.ack(m) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ackPayload is JetStream's ack. Acks are sent as plain messages to the
// delivery's reply subject, rather than through nats.Msg's Ack, which
// refuses to ack a message twice: ackAll may need to.
var ackPayload = []byte("+ACK")

// ack acks m and waits for JetStream to confirm it, trying again while
// its consumer has no leader: an ack is idempotent.
func (q *Queues) ack(m *nats.Msg) error {
	ctx, cancel := q.call()
	defer cancel()
	err := retrying(ctx, func(ctx context.Context) error {
		_, err := q.cfg.Conn.RequestWithContext(ctx, m.Reply, ackPayload)
		return err
	})
	q.packsAcked([]*nats.Msg{m}, err == nil)
	if err != nil {
		return q.engineErr("ack", err)
	}
	return nil
}

// Nack ends a failed attempt: the task is redelivered ahead of newer
// ones, or dead-lettered after its last attempt.
func (q *Queues) Nack(req queue.NackRequest) error {
	name, owner, id, errText := req.Queue, req.Owner, req.ID, req.Error
	if req.RetryAfter < 0 || req.RetryAfter > queue.MaxBackoff {
		return fmt.Errorf("%w: retry after must be 0 to %v, got %v", queue.ErrBadArgument, queue.MaxBackoff, req.RetryAfter)
	}
	if q.closed.Load() {
		return queue.ErrClosed
	}
	q.mu.Lock()
	held := q.leases[leaseKey{name, id}] != nil
	l := q.takeLease(leaseKey{name, id}, owner)
	if l != nil {
		q.counters(name).nacks++
	}
	q.mu.Unlock()
	if l == nil && !held && req.Token != "" {
		return q.nackMoved(req) // handover.go
	}
	if l == nil {
		return q.notLeased(name, []uint64{id})
	}
	return q.fail(l, errText, req.RetryAfter, req.NoRetry)
}

// ExtendDeliveries renews deliveries named by their tokens, which another
// gateway handed out (see handover.go): a worker whose gateway died
// renews through this one the leases of the tasks it still runs.
func (q *Queues) ExtendDeliveries(name string, ids []uint64, tokens []string) error {
	if len(tokens) != len(ids) {
		return fmt.Errorf("%w: %d tokens for %d tasks", queue.ErrBadArgument, len(tokens), len(ids))
	}
	if q.closed.Load() {
		return queue.ErrClosed
	}
	return q.renewMoved(name, ids, tokens)
}

// fail ends a failed delivery l: a nak (delayed by retryAfter if > 0), or
// the dead-letter queue after the last attempt or if noRetry is set.
func (q *Queues) fail(l *lease, errText string, retryAfter time.Duration, noRetry bool) error {
	p := q.policy(l.key.queue)
	if (l.task.Attempts >= p.MaxAttempts || noRetry) && !queue.IsDeadLetterName(l.key.queue) {
		return q.deadLetter(l, errText)
	}
	if retryAfter <= 0 && !queue.IsDeadLetterName(l.key.queue) {
		retryAfter = queue.Backoff(p, l.task.Attempts)
	}
	if l.pack != nil {
		var due time.Time
		if retryAfter > 0 {
			due = time.Now().Add(retryAfter)
		}
		q.mu.Lock()
		q.requeueLocked(l, true, errText, due)
		q.mu.Unlock()
		return nil
	}
	q.noteLastErr(l.key, errText)
	if retryAfter > 0 {
		q.noteRetrying(l.key, time.Now().Add(retryAfter))
	}
	return q.nak(l.msg, retryAfter)
}

// noteRetrying notes that the task of key, stored alone, waits out a
// retry backoff until due (Queues.retrying).
func (q *Queues) noteRetrying(key leaseKey, due time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	m := q.retrying[key.queue]
	if m == nil {
		m = make(map[uint64]time.Time)
		q.retrying[key.queue] = m
	}
	if len(m) >= maxLastErrs {
		clear(m) // counted as leased again rather than grow without bound
	}
	m[key.id] = due
}

// noteLastErr keeps a failed attempt's error for the task's next delivery
// through this gateway.
func (q *Queues) noteLastErr(key leaseKey, errText string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.lastErr) >= maxLastErrs {
		// Tasks redelivered through other gateways leave theirs here:
		// forget them all rather than grow without bound.
		clear(q.lastErr)
	}
	q.lastErr[key] = errText
}

// maxLastErrs bounds the last errors a gateway keeps.
const maxLastErrs = 100_000

// nakBody is JetStream's nak, with a delay before the redelivery if
// delay > 0.
func nakBody(delay time.Duration) []byte {
	if delay <= 0 {
		return nakPayload
	}
	return fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds())
}

// nak hands a delivered message back for redelivery ahead of newer ones
// (after delay, if > 0), and waits until JetStream has done so: a get
// that follows finds it.
func (q *Queues) nak(m *nats.Msg, delay time.Duration) error {
	ctx, cancel := q.call()
	defer cancel()
	undo := func() {}
	if delay <= 0 && m.Header.Get(hdrPack) == "" {
		// Before the nak: JetStream may deliver it again at once, here.
		undo = q.noteGivenBack(m)
	}
	if err := q.answer(ctx, m.Reply, nakBody(delay)); err != nil {
		undo()
		return q.engineErr("nack", err)
	}
	return nil
}

// noteGivenBack notes that m, a task stored alone, is given back with no
// delay (local.givenBack), and returns a func that takes the note back.
func (q *Queues) noteGivenBack(m *nats.Msg) (undo func()) {
	undo = func() {}
	md, err := m.Metadata()
	if err != nil || md.Consumer != consumerName {
		return undo // a priority's consumer counts its deliveries apart
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	name, ok := q.queueOf[md.Stream]
	if !ok {
		return undo
	}
	l := q.locals[name]
	if l == nil {
		return undo
	}
	if l.givenBack == nil || len(l.givenBack) >= maxLastErrs {
		l.givenBack = make(map[uint64]uint64) // counted as leased again rather than grow without bound
	}
	seq := md.Sequence.Stream
	l.givenBack[seq] = l.lastDelivered
	return func() {
		q.mu.Lock()
		delete(l.givenBack, seq)
		q.mu.Unlock()
	}
}

// givenBackWaiting returns how many of the tasks this gateway gave back
// to queue name still wait for their redelivery for sure: the consumer,
// whose deliveries number delivered, has delivered nothing since. The
// others, about which nothing is known any more (delivered again, here or
// through another gateway, or waiting still), are forgotten.
func (q *Queues) givenBackWaiting(name string, delivered uint64) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.locals[name]
	if l == nil {
		return 0
	}
	n := 0
	for id, last := range l.givenBack {
		if last == delivered {
			n++
		} else {
			delete(l.givenBack, id)
		}
	}
	return n
}

// answer sends payload (an ack, a nak) to the ack subject reply and waits
// until JetStream has taken it, each try within attemptTimeout. It is
// sent again only while nobody answers: one sent again after its reply
// was lost would answer the message's next delivery, which JetStream does
// not tell from this one.
func (q *Queues) answer(ctx context.Context, reply string, payload []byte) error {
	return retryingTransient(ctx, func() error {
		rctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		_, err := q.cfg.Conn.RequestWithContext(rctx, reply, payload)
		return err
	})
}

// Extend sets the lease deadlines of ids held by owner to now+lease.
// JetStream's own timer is restarted by the lease reaper as needed.
func (q *Queues) Extend(name string, owner uint64, ids []uint64, lease time.Duration) error {
	if lease < 0 {
		return fmt.Errorf("%w: lease must be >= 0, got %v", queue.ErrBadArgument, lease)
	}
	if lease == 0 {
		lease = q.cfg.DefaultLease
	}
	if q.closed.Load() {
		return queue.ErrClosed
	}
	deadline := time.Now().Add(lease)
	var bad []uint64
	q.mu.Lock()
	for _, id := range ids {
		l := q.leases[leaseKey{name, id}]
		if l == nil || l.owner != owner || l.acking {
			bad = append(bad, id)
			continue
		}
		l.deadline = deadline
	}
	q.mu.Unlock()
	return q.notLeased(name, bad)
}

// Unget gives back tasks a Get for req took but could not deliver, with a
// nak (ahead of newer ones). JetStream counts every delivery; this gateway
// takes the delivery off the task's count when it comes again
// (handedBack), but another gateway would not, and would hand it out past
// its last attempt (once more, as its last: deliver). A task on its last
// attempt is stored again at the end of its queue instead, its count
// lowered by this delivery, and the delivery acked.
//
// Tasks taken with NoAck are given back the same way while they wait for
// Delivered. One acked already (Delivered was not called in time, see
// ReapLeases) is stored again at the end of its queue.
func (q *Queues) Unget(req queue.GetRequest, ts []queue.Task) {
	if len(ts) == 0 || q.closed.Load() {
		return
	}
	var back []*lease
	var gone []queue.Task
	q.mu.Lock()
	for _, t := range ts {
		key := leaseKey{req.Queue, t.ID}
		if req.NoAck {
			l := q.unconfirmed[key]
			switch {
			case l == nil || l.owner != req.Owner || l.task.Attempts != t.Attempts:
				gone = append(gone, t)
			case l.lost: // JetStream delivers it again: nothing to give back
				delete(q.unconfirmed, key)
			case l.pack != nil: // back in front, not counted
				delete(q.unconfirmed, key)
				q.requeueLocked(l, false, "", time.Time{})
			default:
				delete(q.unconfirmed, key)
				back = append(back, l)
			}
			continue
		}
		l := q.leases[key]
		if l != nil && l.owner == req.Owner && l.task.Attempts == t.Attempts {
			q.dropLease(l)
			if l.pack != nil {
				q.requeueLocked(l, false, "", time.Time{})
				continue
			}
			back = append(back, l)
		}
	}
	q.mu.Unlock()
	for _, l := range back {
		var err error
		if l.task.Attempts >= q.policy(l.key.queue).MaxAttempts && !queue.IsDeadLetterName(l.key.queue) {
			err = q.uncount(l)
		} else {
			q.handedBack.add(l.msg.Reply)
			err = q.nak(l.msg, 0)
		}
		if err != nil {
			q.log.Warn("could not give back an undelivered task; JetStream redelivers it after AckWait", "queue", l.key.queue, "task", l.key.id, "err", err)
		}
	}
	if len(gone) > 0 {
		s, err := q.open(req.Queue, true)
		if err != nil {
			q.log.Error("could not put back tasks a client never received", "queue", req.Queue, "tasks", len(gone), "err", err)
			return
		}
		q.putBack(s, gone)
	}
}

// Delivered acks the deliveries of ts, taken by a NoAck get for req, now
// that the reply carrying them was written: they are taken for good.
//
// The acks go in the background: the server calls Delivered before it
// reads the client's next call, which would otherwise wait for them, up
// to the request timeout while JetStream is slow to answer, and outlast
// what the client allows that call.
func (q *Queues) Delivered(req queue.GetRequest, ts []queue.Task) {
	msgs := make([]*nats.Msg, 0, len(ts))
	q.mu.Lock()
	for _, t := range ts {
		key := leaseKey{req.Queue, t.ID}
		if l := q.unconfirmed[key]; l != nil && l.owner == req.Owner && l.task.Attempts == t.Attempts {
			delete(q.unconfirmed, key)
			if m := q.settleLocked(l); m != nil {
				msgs = append(msgs, m)
			}
		}
	}
	background := len(msgs) > 0 && !q.closed.Load()
	if background {
		q.acking.Add(1) // under mu, which Close takes before its Wait
	}
	q.mu.Unlock()
	ack := func() {
		if err := q.ackAll(msgs); err != nil {
			q.log.Warn("tasks a client received not acked; JetStream delivers them again after AckWait", "queue", req.Queue, "tasks", len(msgs), "err", err)
		}
	}
	if !background {
		ack() // none, or closing: tried at once, as Close ends
		return
	}
	go func() {
		defer q.acking.Done()
		ack()
	}()
}

// uncount gives back the task of l, a delivery that never reached its
// client, without counting that delivery: it is stored again at the end
// of its queue with the attempts before this one, then l is acked. (Stored
// first, so a failure in between leaves two copies, never none.)
func (q *Queues) uncount(l *lease) error {
	ctx, cancel := q.call()
	defer cancel()
	msgs := []*nats.Msg{movedMsg(taskSubject(l.s, l.task), l.task, l.task.Attempts-1)}
	ids, err := q.publish(ctx, msgs)
	if err != nil {
		q.handedBack.add(l.msg.Reply)
		_ = q.nak(l.msg, 0) // delivered again, it runs as its last attempt
		return err
	}
	l.s.notePuts(msgs, ids)
	q.mu.Lock()
	delete(q.lastErr, l.key)
	q.mu.Unlock()
	return q.ack(l.msg)
}

// Release gives back every lease of owner, as if each had run out with
// "worker disconnected".
func (q *Queues) Release(owner uint64) int {
	q.mu.Lock()
	byOwner := q.owners[owner]
	delete(q.owners, owner)
	ls := make([]*lease, 0, len(byOwner))
	packed := 0
	for k, l := range byOwner {
		if l.acking { // its Ack ends it
			continue
		}
		delete(q.leases, k)
		q.counters(k.queue).disconnected++
		if l.pack != nil {
			q.requeueLocked(l, true, "worker disconnected", time.Time{})
			packed++
			continue
		}
		ls = append(ls, l)
	}
	q.mu.Unlock()
	for _, l := range ls {
		// Given back, not dead-lettered on its last attempt: the worker
		// may complete it through another gateway (handover.go). Its
		// redelivery is dead-lettered when it is fetched, after the
		// deliveries' record says it was not completed, and that it
		// failed (failedMark): a delivery past the last attempt that the
		// record does not say failed runs once more.
		if l.task.Attempts >= q.policy(l.key.queue).MaxAttempts && !queue.IsDeadLetterName(l.key.queue) {
			q.markFailed(l.msg.Reply, l.key.queue, l.key.id)
		}
		q.noteLastErr(l.key, "worker disconnected")
		if err := q.nak(l.msg, 0); err != nil {
			q.log.Warn("could not give back a lease; JetStream redelivers it after AckWait", "queue", l.key.queue, "task", l.key.id, "err", err)
		}
	}
	return len(ls) + packed
}

// LeasedBy counts owner's leases.
func (q *Queues) LeasedBy(owner uint64) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.owners[owner])
}

// Leases returns the leases this gateway handed out, by owner, each
// owner's in the order they were handed out.
func (q *Queues) Leases() map[uint64][]queue.LeaseInfo {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[uint64][]queue.LeaseInfo, len(q.owners))
	for owner, byOwner := range q.owners {
		infos := make([]queue.LeaseInfo, 0, len(byOwner))
		for _, l := range byOwner {
			infos = append(infos, queue.LeaseInfo{Queue: l.key.queue, ID: l.key.id, Attempts: l.task.Attempts, Since: l.since, Deadline: l.deadline})
		}
		sortLeases(infos)
		out[owner] = infos
	}
	return out
}

// reapEvery is how often the reaper looks at the leases: the precision
// of lease expiry in gateway mode.
const reapEvery = 20 * time.Millisecond

// ReapLeases expires leases as they run out, and restarts JetStream's ack
// timer of those still held every third of AckWait, until done is closed.
// NoAck deliveries whose Delivered has not come by their lease's end are
// acked: taken for good, as with a server that does not confirm them.
// While nothing is held it sleeps until something is. onExpired, if not
// nil, is told how many leases of each queue each pass expired or lost.
func (q *Queues) ReapLeases(done <-chan struct{}, onExpired func(queue string, n int)) {
	tick := time.NewTicker(reapEvery)
	defer tick.Stop()
	// Held tasks that waited too long are looked at, and stored apart,
	// by a goroutine of its own, one batch at a time: the reaper must go
	// on renewing. It also deletes the records of packs acked.
	type chores struct {
		overdue []string // queues
		drops   []string
		counts  map[string]int
	}
	moves := make(chan chores)
	moved := make(chan struct{}, 1)
	// The looks at consumers and the deletions of records, which may be
	// left undone, end with the reaper: a stopping gateway's server waits
	// for it before the queues close, and a deletion sent to a records'
	// stream whose leader was just handed over (Node.HandOver) waited out
	// the request timeout, holding the gateway's packs from the other
	// gateways for 10 s.
	choresCtx, endChores := context.WithCancel(q.ctx)
	var mover sync.WaitGroup
	mover.Go(func() {
		for batch := range moves {
			if len(batch.overdue) > 0 {
				q.moveOverdue(choresCtx, batch.overdue)
			}
			if len(batch.drops) > 0 {
				q.dropRecords(choresCtx, batch.drops)
			}
			q.sendCounts(batch.counts)
			select {
			case moved <- struct{}{}:
			default: // never full: one batch at a time
			}
		}
	})
	defer mover.Wait()
	defer close(moves)
	defer endChores()
	moving := false
	for {
		select {
		case <-done:
			return
		case <-q.ctx.Done():
			return
		case now := <-tick.C:
			byQueue, held := q.reap(now)
			if onExpired != nil {
				for name, n := range byQueue {
					onExpired(name, n)
				}
			}
			select {
			case <-moved:
				moving = false
			default:
			}
			if !moving {
				q.mu.Lock()
				batch := chores{overdue: q.overdueQueuesLocked(now), drops: q.staleRecords}
				q.staleRecords = nil
				q.mu.Unlock()
				batch.counts = q.takeCounts(now)
				if len(batch.overdue) > 0 || len(batch.drops) > 0 || len(batch.counts) > 0 {
					moving = true
					moves <- batch
				}
			}
			if held {
				continue
			}
			tick.Stop()
			select {
			case <-done:
				return
			case <-q.ctx.Done():
				return
			case <-q.held:
			}
			tick.Reset(reapEvery)
		}
	}
}

// wakeReaper wakes ReapLeases if it sleeps; a wake-up that finds it awake
// costs it one needless look. Called with q.mu held, after the addition,
// so that a reap that saw nothing held is woken.
func (q *Queues) wakeReaper() {
	select {
	case q.held <- struct{}{}:
	default:
	}
}

// reap expires, drops or renews what has come due at now, and reports how
// many leases expired and whether anything is still held.
func (q *Queues) reap(now time.Time) (byQueue map[string]int, held bool) {
	q.reaps.Add(1)
	var expired, lost []*lease
	var renew []renewal
	var taken []*nats.Msg
	q.mu.Lock()
	// A packed task's lease only expires: its pack's delivery is the one
	// renewed, and lost, below.
	for _, l := range q.leases {
		switch {
		case l.pack == nil && now.Sub(l.confirmed) >= l.s.ackWait:
			q.dropLease(l)
			l.lost = true
			q.counters(l.key.queue).expired++
			lost = append(lost, l)
		case !now.Before(l.deadline) && !l.acking:
			q.dropLease(l)
			q.counters(l.key.queue).expired++
			expired = append(expired, l)
		case l.pack == nil && now.Sub(l.touched) >= l.s.ackWait/3:
			renew = append(renew, q.renewal(l, now))
		}
	}
	for k, l := range q.unconfirmed {
		switch {
		case l.lost:
			if !now.Before(l.deadline) {
				delete(q.unconfirmed, k)
			}
		case l.pack == nil && now.Sub(l.confirmed) >= l.s.ackWait:
			// Kept, marked, until the server says what became of its
			// reply: neither acked nor given back.
			l.lost = true
			lost = append(lost, l)
		case !now.Before(l.deadline):
			delete(q.unconfirmed, k)
			if m := q.settleLocked(l); m != nil { // its own, or its pack's if done
				taken = append(taken, m)
			}
		case l.pack == nil && now.Sub(l.touched) >= l.s.ackWait/3:
			renew = append(renew, q.renewal(l, now))
		}
	}
	type lostPack struct {
		queue       string
		tasks, left int
	}
	var lostPacks []lostPack
	for _, p := range q.packs {
		switch {
		case now.Sub(p.del.confirmed) >= p.del.s.ackWait:
			q.loseLocked(p)
			lostPacks = append(lostPacks, lostPack{p.del.key.queue, len(p.tasks), p.left})
		case now.Sub(p.del.touched) >= p.del.s.ackWait/3:
			renew = append(renew, q.renewal(p.del, now))
		}
	}
	for token, r := range q.renewals {
		if now.Sub(r.sent) >= r.l.s.ackWait {
			delete(q.renewals, token) // unanswered
		}
	}
	held = len(q.leases)+len(q.unconfirmed)+len(q.renewals)+len(q.packs)+len(q.staleRecords)+len(q.recordOf)+len(q.countsToSend) > 0
	q.mu.Unlock()
	for _, r := range renew {
		_ = q.cfg.Conn.PublishRequest(r.l.msg.Reply, r.reply, progressPayload)
	}
	for _, l := range lost {
		q.log.Warn("lease lost: JetStream did not confirm its renewals within AckWait, and may have handed the task to another worker",
			"queue", l.key.queue, "task", l.key.id)
	}
	for _, p := range lostPacks {
		q.log.Warn("pack lost: JetStream did not confirm its renewals within AckWait, and may have handed it to another gateway",
			"queue", p.queue, "tasks", p.tasks, "left", p.left)
	}
	for _, l := range expired {
		if err := q.fail(l, errExpired, 0, false); err != nil {
			q.log.Warn("could not give back an expired lease; JetStream redelivers it after AckWait", "queue", l.key.queue, "task", l.key.id, "err", err)
		}
	}
	if err := q.ackAll(taken); err != nil {
		q.log.Warn("tasks taken with NoAck not acked; JetStream delivers them again after AckWait", "tasks", len(taken), "err", err)
	}
	for _, l := range expired {
		byQueue = counted(byQueue, l.key.queue)
	}
	for _, l := range lost {
		byQueue = counted(byQueue, l.key.queue)
	}
	for _, p := range lostPacks {
		byQueue = counted(byQueue, p.queue)
	}
	return byQueue, held
}

// counted adds one to m[name], making m if nil.
func counted(m map[string]int, name string) map[string]int {
	if m == nil {
		m = make(map[string]int)
	}
	m[name]++
	return m
}

// progressPayload is JetStream's "in progress": it restarts the ack timer
// of a delivery.
var progressPayload = []byte("+WPI")

// renewal is a renewal of l's ack timer sent at sent, awaiting
// JetStream's confirmation on reply.
type renewal struct {
	l     *lease
	sent  time.Time
	reply string
}

// renewal records a renewal of l about to be sent. Called with q.mu held.
func (q *Queues) renewal(l *lease, now time.Time) renewal {
	l.touched = now
	q.renewSeq++
	token := strconv.FormatUint(q.renewSeq, 36)
	r := renewal{l: l, sent: now, reply: q.renewInbox + token}
	q.renewals[token] = r
	return r
}

// renewed takes JetStream's confirmation of a renewal: the lease's ack
// timer restarted no earlier than the renewal was sent.
func (q *Queues) renewed(m *nats.Msg) {
	token := strings.TrimPrefix(m.Subject, q.renewInbox)
	q.mu.Lock()
	defer q.mu.Unlock()
	r, ok := q.renewals[token]
	if !ok {
		return
	}
	delete(q.renewals, token)
	if r.sent.After(r.l.confirmed) {
		r.l.confirmed = r.sent
	}
}
