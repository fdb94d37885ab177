package jsqueue

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// Packing (Config.Pack): a put of several tasks stores up to Pack of them
// in one JetStream message, a pack, so that JetStream writes (and, with
// fsync always, syncs) one message, one delivery and one ack for them
// instead of one each. The gateway that fetches a pack hands its tasks out
// one by one, each under a lease of its own, and keeps the rest of the
// pack (held) for its next gets. A task that fails, whose lease runs out
// or whose worker leaves goes back to the front of the held tasks. The
// pack's message stays delivered to this gateway, renewed, until every
// one of its tasks is done: completed, or dead-lettered. Then it is acked.
//
// A completion that leaves a pack with tasks to do records which are done
// (packrecord.go): a gateway that dies mid-pack leaves that record to the
// next one, which runs only the others.
//
// Each packed task handed out carries a token (packToken), through which
// a worker whose gateway died completes, renews or fails it through
// another gateway (packhandover.go).
//
// A queue's figures count packed tasks one by one (packcount.go).

// hdrPack is set on a pack: how many tasks it carries.
const hdrPack = "Qm-Pack"

// MaxPack is the most tasks a pack carries: a packed task's ID keeps its
// index in the pack in six bits.
const MaxPack = 64

// packedIDBit marks a packed task's ID: 1<<52 | the pack's stream
// sequence<<6 | the task's index. Unpacked tasks' IDs are stream
// sequences, far below 1<<52; a pack's sequence must stay below 1<<46,
// seventy trillion messages in one queue.
const packedIDBit = 1 << 52

func packedID(seq uint64, i int) uint64 { return packedIDBit | seq<<6 | uint64(i) }

// packOf returns the stream sequence of the pack of packed task id, and
// the task's index in it; ok is false for an unpacked task's ID.
func packOf(id uint64) (seq uint64, i int, ok bool) {
	if id&packedIDBit == 0 {
		return 0, 0, false
	}
	return (id &^ packedIDBit) >> 6, int(id & (MaxPack - 1)), true
}

// packToken is the token of a packed task handed out at attempt
// attempts of delivery delivered of its pack, the consumer's delivery
// dseq: "#<delivered>.<dseq>.<attempts>". A worker completes the task
// through any gateway with it (adoptPacked), which makes the pack's ack
// subject from it (packAckSubject) and the task's ID (the pack's stream
// sequence). It is short: every packed task carries it both ways.
func packToken(delivered, dseq uint64, attempts int) string {
	b := make([]byte, 0, 32)
	b = append(b, '#')
	b = strconv.AppendUint(b, delivered, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, dseq, 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, int64(attempts), 10)
	return string(b)
}

// isPackToken tells a packToken from an unpacked task's token (a
// JetStream ack subject).
func isPackToken(token string) bool { return strings.HasPrefix(token, "#") }

// parsePackToken reads a packToken.
func parsePackToken(token string) (delivered, dseq uint64, attempts int, ok bool) {
	f := strings.Split(strings.TrimPrefix(token, "#"), ".")
	if !isPackToken(token) || len(f) != 3 {
		return 0, 0, 0, false
	}
	delivered, err1 := strconv.ParseUint(f[0], 10, 64)
	dseq, err2 := strconv.ParseUint(f[1], 10, 64)
	a, err3 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil || err3 != nil || delivered == 0 || dseq == 0 || a < 1 {
		return 0, 0, 0, false
	}
	return delivered, dseq, a, true
}

// packAckSubject is the ack subject of delivery delivered (the
// consumer's dseq) of the message at seq of stream: JetStream reads the
// stream, consumer and the three numbers of it, not the two after.
func packAckSubject(stream string, delivered, seq, dseq uint64) string {
	return "$JS.ACK." + stream + "." + consumerName + "." + strconv.FormatUint(delivered, 10) + "." +
		strconv.FormatUint(seq, 10) + "." + strconv.FormatUint(dseq, 10) + ".0.0"
}

// encodePack lays payloads out as a pack's body: each one's length as a
// uvarint, then its bytes.
func encodePack(payloads [][]byte) []byte {
	size := 0
	for _, p := range payloads {
		size += binary.MaxVarintLen32 + len(p)
	}
	b := make([]byte, 0, size)
	for _, p := range payloads {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

var errBadPack = errors.New("malformed pack")

// decodePack splits a pack's body into its count payloads, which alias b.
func decodePack(b []byte, count string) ([][]byte, error) {
	n, err := strconv.Atoi(count)
	if err != nil || n < 1 || n > MaxPack {
		return nil, errBadPack
	}
	payloads := make([][]byte, 0, n)
	var scratch [binary.MaxVarintLen64]byte
	for len(b) > 0 {
		size, w := binary.Uvarint(b)
		if w <= 0 || size > uint64(len(b)-w) || len(payloads) == n || w != binary.PutUvarint(scratch[:], size) {
			return nil, errBadPack
		}
		payloads = append(payloads, b[w:w+int(size):w+int(size)])
		b = b[w+int(size):]
	}
	if len(payloads) != n {
		return nil, errBadPack
	}
	return payloads, nil
}

// packMsgs returns the messages that carry msgs, the messages of one
// put: runs of messages that may share one (no idempotency key, the same
// reply queue, no other header) go up to size to a pack, whose body stays
// within maxBytes (0: any); the others stay as they are. counts[i] is how
// many tasks out[i] carries, 0 for a plain message.
func packMsgs(subject string, msgs []*nats.Msg, size, maxBytes int) (out []*nats.Msg, counts []int) {
	packable := func(m *nats.Msg) bool {
		return len(m.Header) == 0 || len(m.Header) == 1 && m.Header.Get(hdrReplyTo) != ""
	}
	replyTo := func(m *nats.Msg) string { return m.Header.Get(hdrReplyTo) }
	packed := func(m *nats.Msg) int { return binary.MaxVarintLen32 + len(m.Data) } // as encodePack counts
	for i := 0; i < len(msgs); {
		j := i + 1
		if packable(msgs[i]) {
			bytes := packed(msgs[i])
			for j < len(msgs) && j-i < size && packable(msgs[j]) && replyTo(msgs[j]) == replyTo(msgs[i]) &&
				(maxBytes <= 0 || bytes+packed(msgs[j]) <= maxBytes) {
				bytes += packed(msgs[j])
				j++
			}
		}
		if j-i == 1 {
			out, counts = append(out, msgs[i]), append(counts, 0)
			i = j
			continue
		}
		payloads := make([][]byte, j-i)
		for k, m := range msgs[i:j] {
			payloads[k] = m.Data
		}
		h := nats.Header{hdrPack: []string{strconv.Itoa(j - i)}}
		if rt := replyTo(msgs[i]); rt != "" {
			h.Set(hdrReplyTo, rt)
		}
		out = append(out, &nats.Msg{Subject: packSubject(subject, j-i), Header: h, Data: encodePack(payloads)})
		counts = append(counts, j-i)
		i = j
	}
	return out, counts
}

// packedIDs returns the tasks' IDs of messages stored at seqs, carrying
// counts tasks each (0: a plain message).
func packedIDs(seqs []uint64, counts []int, tasks int) []uint64 {
	ids := make([]uint64, 0, tasks)
	for i, seq := range seqs {
		if counts[i] == 0 {
			ids = append(ids, seq)
			continue
		}
		for j := range counts[i] {
			ids = append(ids, packedID(seq, j))
		}
	}
	return ids
}

// pack is a delivered pack this gateway holds. Its fields are guarded by
// Queues.mu.
type pack struct {
	// del is the message's delivery: renewed by the reaper while the pack
	// is held, acked when left reaches 0. It is in no lease map.
	del *lease
	// tasks are the pack's tasks as each is handed out next: Attempts
	// counts that delivery.
	tasks []queue.Task
	done  []bool
	out   []bool // handed out (or being moved), not yet done or back
	left  int    // tasks not done
	// delivery is JetStream's count of the pack's deliveries: a task
	// stored apart is so once per delivery (movedMsgOf); dseq is the
	// consumer's sequence of this delivery (for packToken).
	delivery, dseq uint64
	// reissued marks tasks handed out again in this delivery: the worker
	// of an earlier handout may complete them through another gateway,
	// with this delivery's token, so this gateway marks them done in the
	// record before it stores their results (takeTasks).
	reissued []bool
	// rec is the pack's record (packrecord.go) as this gateway last read
	// or wrote it; recordMu makes its writes one at a time. toRecord are
	// the done tasks waiting to be added to it by the next write
	// (recordPack).
	rec      recordState
	recordMu sync.Mutex
	toRecord uint64
	stored   time.Time // when JetStream stored the pack
}

// movedMsgOf is the message that stores task i of p apart, at the end of
// its queue: its ID and the attempts before its next delivery go with it,
// and a message ID, so that a move sent again (a resend, or Close and the
// mover both) stores it once.
func movedMsgOf(p *pack, i int, attemptsBefore int) *nats.Msg {
	m := movedMsg(p.del.s.subject, p.tasks[i], attemptsBefore)
	m.Header.Set(jetstream.MsgIDHeader, "qm-moved-"+strconv.FormatUint(p.tasks[i].ID, 36)+"-"+strconv.FormatUint(p.delivery, 36))
	return m
}

// lostDeliveries bounds, as a multiple of the attempts allowed, how often
// a pack is delivered before its deliveries count as its tasks' attempts
// (unpackLocked), and a task stored alone before a delivery past its last
// attempt is dead-lettered rather than run (Queues.deliver).
const lostDeliveries = 3

// heldTask is a task of a held pack waiting to be handed out (not before
// due, if set) since since.
type heldTask struct {
	p          *pack
	i          int
	due, since time.Time
}

// unpackLocked takes delivered pack m of stream s: its tasks go to the
// back of s's held tasks, less those recorded done (in rec, claimed by
// the caller for a redelivery). unclaimed says the claim of a redelivery
// failed: tokens of an earlier delivery may still be taken, so each task
// is marked done in the record before its results are stored, as a
// reissued one. It returns how many tasks m carries, and m itself if all
// of them are done already (to be acked). Called with q.mu held.
func (q *Queues) unpackLocked(s *stream, m *nats.Msg, md *nats.MsgMetadata, now time.Time, rec recordState, unclaimed bool) (int, *nats.Msg, error) {
	payloads, err := decodePack(m.Data, m.Header.Get(hdrPack))
	if err != nil {
		return 0, nil, err
	}
	seq := md.Sequence.Stream
	p := &pack{
		delivery: md.NumDelivered,
		dseq:     md.Sequence.Consumer,
		stored:   md.Timestamp,
		del:      &lease{key: leaseKey{s.queue, seq}, s: s, msg: m, since: now, touched: now, confirmed: now},
		tasks:    make([]queue.Task, len(payloads)),
		done:     make([]bool, len(payloads)),
		out:      make([]bool, len(payloads)),
		reissued: make([]bool, len(payloads)),
		left:     len(payloads),
		rec:      rec,
	}
	// One attempt, whatever JetStream's count: that counts the pack's
	// deliveries, and each of its gateway's deaths or lost acks would
	// cost all its tasks an attempt, those never handed out too, and
	// dead-letter them unrun. A task's failed attempts are counted by the
	// gateway holding its pack. Past lostDeliveries times the attempts
	// allowed, every delivery counts: a task that brings down each gateway
	// that holds it is then dead-lettered, not passed on for ever.
	attempts, delivered := uint64(1), q.handedBack.attempts(md)
	if delivered > uint64(lostDeliveries*q.policy(s.queue).MaxAttempts) {
		attempts = delivered
	}
	for i, pl := range payloads {
		t := taskOf(seq, md.Timestamp, m.Header, pl, attempts)
		t.ID = packedID(seq, i)
		if delivered > 1 {
			t.LastError = errExpired // the gateway that held it died or lost it
		}
		p.tasks[i] = t
		p.reissued[i] = unclaimed
		if rec.done&(1<<i) != 0 {
			p.done[i] = true
			p.left--
			continue
		}
		s.held = append(s.held, heldTask{p: p, i: i, since: now})
	}
	q.countHandedOutLocked(s, 0, 1)
	if p.left == 0 { // done but not acked: its gateway died in between
		q.recordOfLocked(p)
		return len(payloads), m, nil
	}
	q.packs[p.del.key] = p
	q.wakeReaper()
	return len(payloads), nil, nil
}

// takeHeldLocked hands out up to req.Max-len(ts) held tasks of s that are
// due, front first, appending them to ts. Those past their last attempt
// are returned in dead instead, to be dead-lettered. Called with q.mu
// held.
func (q *Queues) takeHeldLocked(s *stream, req queue.GetRequest, now time.Time, ts []queue.Task) (_ []queue.Task, dead []*lease) {
	if s.paused {
		return ts, nil
	}
	kept := s.held[:0]
	for _, h := range s.held {
		if len(ts) >= req.Max || now.Before(h.due) {
			kept = append(kept, h)
			continue
		}
		t := h.p.tasks[h.i]
		l := &lease{key: leaseKey{s.queue, t.ID}, s: s, task: t, owner: req.Owner, since: now, touched: now, confirmed: now, deadline: now.Add(req.Lease), pack: h.p, index: h.i}
		if t.Attempts > 1 && pastLastAttempt(t, s, req, q.policy(s.queue).MaxAttempts) {
			l.task.Attempts--
			dead = append(dead, l)
			continue
		}
		h.p.out[h.i] = true
		if req.NoAck {
			q.unconfirmed[l.key] = l
		} else {
			t.Token = packToken(h.p.delivery, h.p.dseq, t.Attempts)
			l.task.Token = t.Token // its results' message IDs are made from it (resultsMsgIDs)
			q.addLease(l)
		}
		ts = append(ts, t)
	}
	q.countHandedOutLocked(s, len(s.held)-len(kept)-len(dead), 0)
	clear(s.held[len(kept):])
	s.held = kept
	return ts, dead
}

// settleLocked records l's task as done and returns the message to ack
// now: l's own, or its pack's once every task of it is done; nil if there
// is none (the delivery was lost, or the pack has tasks left). Called
// with q.mu held.
func (q *Queues) settleLocked(l *lease) *nats.Msg {
	p := l.pack
	if p == nil {
		if l.lost { // JetStream may have handed it to another worker
			return nil
		}
		return l.msg
	}
	if p.done[l.index] {
		return nil
	}
	p.done[l.index], p.out[l.index] = true, false
	p.left--
	if p.left > 0 || q.packs[p.del.key] != p {
		// Tasks left; or the pack was lost, purged or handed back on
		// Close, and its key may name its next delivery by now.
		return nil
	}
	delete(q.packs, p.del.key)
	if p.del.lost {
		return nil
	}
	q.recordOfLocked(p)
	return p.del.msg
}

// requeueLocked puts the task of l, a packed task's delivery, back in
// front of its stream's held tasks, due at due. A failed attempt
// (failed) counts, with errText as the task's last error; a delivery that
// never reached its client does not. Called with q.mu held.
func (q *Queues) requeueLocked(l *lease, failed bool, errText string, due time.Time) {
	p := l.pack
	if p.del.lost || p.done[l.index] || q.packs[p.del.key] != p {
		return // JetStream delivers the pack again, or it was purged
	}
	p.out[l.index] = false
	if failed {
		p.reissued[l.index] = true // its worker had its token
		t := &p.tasks[l.index]
		t.Attempts = l.task.Attempts + 1
		t.LastError = errText
	}
	s := l.s
	s.held = slices.Insert(s.held, 0, heldTask{p: p, i: l.index, due: due, since: time.Now()})
	if due.IsZero() {
		s.wakeGets(1)
	}
}

// loseLocked drops pack p, whose renewals JetStream did not confirm
// within AckWait: it may have delivered it to another gateway. Its
// leases are dropped (their completions are refused) and its held tasks
// forgotten. Called with q.mu held.
func (q *Queues) loseLocked(p *pack) {
	p.del.lost = true
	delete(q.packs, p.del.key)
	s := p.del.s
	s.held = slices.DeleteFunc(s.held, func(h heldTask) bool { return h.p == p })
	for _, l := range q.leases {
		if l.pack == p {
			q.dropLease(l)
		}
	}
	for k, l := range q.unconfirmed {
		if l.pack == p {
			delete(q.unconfirmed, k)
		}
	}
}

// dropPacksLocked forgets the packs of queue name, purged or deleted.
// Called with q.mu held.
func (q *Queues) dropPacksLocked(name string) {
	for k, p := range q.packs {
		if k.queue == name {
			delete(q.packs, k)
			p.del.lost = true // nothing of it to ack
		}
	}
	if l := q.locals[name]; l != nil {
		l.held = nil
	}
}

// heldMove is a held task taken out of its pack to be stored alone.
type heldMove struct {
	p   *pack
	i   int
	msg *nats.Msg
}

// overdue reports whether held task h waited Config.HoldFor at now,
// since it was held or came due.
func (q *Queues) overdue(h heldTask, now time.Time) bool {
	return now.Sub(h.since) >= q.cfg.HoldFor && now.Sub(h.due) >= q.cfg.HoldFor
}

// overdueQueuesLocked returns the queues some of whose held tasks are
// overdue, and which were not looked at in the last half of HoldFor: they
// are stored apart if another gateway's workers wait (moveOverdue).
// Called with q.mu held.
func (q *Queues) overdueQueuesLocked(now time.Time) []string {
	var names []string
	for name, l := range q.locals {
		if now.Sub(l.lookedAt) < q.cfg.HoldFor/2 {
			continue
		}
		if slices.ContainsFunc(l.held, func(h heldTask) bool { return q.overdue(h, now) }) {
			l.lookedAt = now
			names = append(names, name)
		}
	}
	return names
}

// moveOverdue looks at the consumers of the queues of names, whose held
// tasks are overdue. A queue paused or resumed through another gateway is
// so here too, from then on. The overdue held tasks of a queue whose
// tasks another gateway's workers wait for are stored apart (moveHeld):
// a task must not wait in one gateway while another's workers are idle.
// They wait if JetStream holds pull requests on the queue's consumer,
// which this gateway's own gets do not leave while it holds tasks due, or
// if another gateway said lately that a get that could not wait found
// none (wanted.go).
// Held tasks nobody else waits for stay, in order: stored apart, they
// would go behind tasks put after them. The looks end with ctx.
func (q *Queues) moveOverdue(ctx context.Context, names []string) {
	var moves []heldMove
	for _, name := range names {
		s, err := q.open(name, false)
		if err != nil {
			continue // gone: its held tasks went with it
		}
		q.mu.Lock()
		seq := s.pauseSeq // a change learned while the consumer is read wins
		q.mu.Unlock()
		start := time.Now()
		ctx, cancel := context.WithTimeout(ctx, q.cfg.RequestTimeout)
		ci, err := s.cons.Info(ctx)
		cancel()
		if err != nil {
			continue
		}
		q.mu.Lock()
		if paused := pausedByOperator(ci); s.paused != paused && s.pauseSeq == seq {
			s.setPaused(paused)
			if !s.paused {
				s.wakeGets(len(s.waiting)) // to pull again (SetPaused)
			}
		}
		if !s.paused && (ci.NumWaiting > 0 || q.wantedLately(s.local, start)) {
			moves = append(moves, q.overdueLocked(name, time.Now())...)
		}
		q.mu.Unlock()
	}
	if len(moves) > 0 {
		q.moveHeld(moves)
	}
}

// overdueLocked takes the overdue tasks out of queue name's held tasks,
// to be stored again alone (moveHeld). Called with q.mu held.
func (q *Queues) overdueLocked(name string, now time.Time) []heldMove {
	l := q.locals[name]
	if l == nil || l.paused {
		return nil
	}
	var moves []heldMove
	l.held = slices.DeleteFunc(l.held, func(h heldTask) bool {
		if !q.overdue(h, now) {
			return false
		}
		h.p.out[h.i] = true // neither held nor done, until moved
		moves = append(moves, heldMove{p: h.p, i: h.i, msg: movedMsgOf(h.p, h.i, h.p.tasks[h.i].Attempts-1)})
		return true
	})
	return moves
}

// moveHeld stores the tasks of moves again, each alone, at the end of its
// queue, keeping its ID, then counts it done in its pack (acking a pack
// with none left). Tasks that could not be stored are held again. Each
// queue's are published apart: a failure of one is no failure of another.
func (q *Queues) moveHeld(moves []heldMove) {
	byQueue := make(map[string][]heldMove)
	q.mu.Lock()
	for _, mv := range moves {
		// A pack lost, purged or closed since: nothing of it to move.
		if q.packs[mv.p.del.key] == mv.p {
			byQueue[mv.p.del.key.queue] = append(byQueue[mv.p.del.key.queue], mv)
		}
	}
	q.mu.Unlock()
	for name, mvs := range byQueue {
		mvs, taken, err := q.takeMoves(mvs)
		if err == nil && len(mvs) == 0 {
			continue
		}
		if err == nil {
			msgs := make([]*nats.Msg, len(mvs))
			for i, mv := range mvs {
				msgs[i] = mv.msg
			}
			ctx, cancel := q.call()
			_, err = q.publish(ctx, msgs) // each has an ID: sent again, stored once
			cancel()
			if err != nil {
				q.untakeRefs(taken)
			} else {
				// Stored again, not put again: Puts counts each task once.
				q.countPacked(mvs[0].p.del.s, -len(msgs))
			}
		}
		ls := make([]*lease, len(mvs))
		q.mu.Lock()
		for i, mv := range mvs {
			ls[i] = &lease{s: mv.p.del.s, pack: mv.p, index: mv.i, task: mv.p.tasks[mv.i]}
		}
		q.mu.Unlock()
		if err == nil {
			q.recordDone(ls)
		}
		var acks []*nats.Msg
		q.mu.Lock()
		for i := range mvs {
			// Last first: back in front of the held tasks in their order.
			l := ls[len(mvs)-1-i]
			if err != nil {
				q.requeueLocked(l, false, "", time.Time{}) // neither an attempt nor a handout
				continue
			}
			if m := q.settleLocked(l); m != nil {
				acks = append(acks, m)
			}
		}
		q.mu.Unlock()
		if err != nil {
			q.log.Warn("could not store held tasks apart; they stay held", "queue", name, "tasks", len(mvs), "err", err)
			continue
		}
		if err := q.ackAll(acks); err != nil {
			q.log.Warn("packs whose tasks were all done or stored apart not acked; JetStream delivers them again after AckWait", "queue", name, "packs", len(acks), "err", err)
		}
	}
}

// takeMoves marks done in their packs' records the tasks of mvs handed
// out before in their pack's delivery (takeRefs), before they are stored
// apart. Those done already, through another gateway, are settled here
// and left out of the moves returned.
func (q *Queues) takeMoves(mvs []heldMove) ([]heldMove, map[*pack]uint64, error) {
	var refs []taskRef
	q.mu.Lock()
	for _, mv := range mvs {
		if mv.p.reissued[mv.i] {
			refs = append(refs, taskRef{mv.p, mv.i})
		}
	}
	q.mu.Unlock()
	if len(refs) == 0 {
		return mvs, nil, nil
	}
	doneAlready, taken, err := q.takeRefs(refs)
	if err != nil {
		return mvs, nil, err
	}
	skip := make(map[taskRef]bool)
	for k, r := range refs {
		if doneAlready[k] {
			skip[r] = true
		}
	}
	if len(skip) == 0 {
		return mvs, taken, nil
	}
	kept := mvs[:0]
	var acks []*nats.Msg
	q.mu.Lock()
	for _, mv := range mvs {
		if !skip[taskRef{mv.p, mv.i}] {
			kept = append(kept, mv)
			continue
		}
		if m := q.settleLocked(&lease{s: mv.p.del.s, pack: mv.p, index: mv.i}); m != nil {
			acks = append(acks, m)
		}
	}
	q.mu.Unlock()
	if err := q.ackAll(acks); err != nil {
		q.log.Warn("packs whose tasks were all done not acked; JetStream delivers them again after AckWait", "packs", len(acks), "err", err)
	}
	return kept, taken, nil
}

// closePacks hands back the packs this gateway holds, as Close ends it,
// each with a nak: JetStream delivers it again at once, ahead of the tasks
// put after it, so its tasks keep their place in their queue. Of a pack
// partly done, the done tasks are recorded first (its record), and the
// gateway that fetches it next runs only the others, as after a gateway's
// death; until then, a worker holding one of its tasks' tokens may still
// complete it through another gateway. A pack whose record cannot be
// written has its tasks not done stored again apart (movePacksApart).
// Until the twenty-third session every partly done pack's were: behind
// the whole backlog of their queue, they held up a map's ordered output
// until it had drained (25-29 s after a SIGTERM of a gateway, by hand).
func (q *Queues) closePacks() {
	q.mu.Lock()
	var whole []*nats.Msg
	type partly struct {
		p    *pack
		done uint64
	}
	var partlyDone []partly
	for k, p := range q.packs {
		delete(q.packs, k)
		p.del.lost = true // an Ack under way must not ack it now
		if p.left == len(p.tasks) {
			whole = append(whole, p.del.msg)
			continue
		}
		var done uint64
		for i, d := range p.done {
			if d {
				done |= 1 << i
			}
		}
		partlyDone = append(partlyDone, partly{p, done})
	}
	for _, l := range q.locals {
		l.held = nil
	}
	q.mu.Unlock()
	q.answerAll(whole, nakPayload) // first: these packs are renewed no more
	// One deadline for every record: a pack not renewed meanwhile must be
	// handed back well within its ack wait, before JetStream hands it to
	// another gateway, whose delivery a late nak would cut short.
	ctx, cancel := q.call()
	defer cancel()
	var back []*nats.Msg
	var apart []*pack
	for _, pd := range partlyDone {
		r, err := q.changeRecord(ctx, pd.p, false, func(r packRecord) (packRecord, bool) {
			next := packRecord{done: r.done | pd.done, delivered: max(r.delivered, pd.p.delivery)}
			return next, next != r
		})
		switch {
		case err != nil:
			q.log.Warn("a partly done pack's record not written; its tasks not done are stored again apart", "queue", pd.p.del.s.queue, "err", err)
			apart = append(apart, pd.p)
		case r.delivered > pd.p.delivery:
			// Another gateway took a later delivery of it: not ours to
			// hand back.
		default:
			back = append(back, pd.p.del.msg)
		}
	}
	q.answerAll(back, nakPayload)
	q.movePacksApart(apart)
}

// movePacksApart stores the tasks not done of packs ps, taken from this
// gateway's, again, each alone, at the end of their queue, and acks the
// packs. The tasks still leased count the attempt they were in.
func (q *Queues) movePacksApart(ps []*pack) {
	if len(ps) == 0 {
		return
	}
	q.mu.Lock()
	type move struct {
		p    *pack
		msgs []*nats.Msg
		is   []int // msgs[k] stores task is[k]
	}
	var moves []move
	var refs []taskRef
	for _, p := range ps {
		mv := move{p: p}
		for i, t := range p.tasks {
			if p.done[i] {
				continue
			}
			before := t.Attempts - 1
			if p.out[i] {
				before++
			}
			mv.msgs, mv.is = append(mv.msgs, movedMsgOf(p, i, before)), append(mv.is, i)
			if p.out[i] || p.reissued[i] { // its worker holds a token for it
				refs = append(refs, taskRef{p, i})
			}
		}
		moves = append(moves, mv)
	}
	q.mu.Unlock()
	// Tasks whose workers hold tokens are marked done before they are
	// stored apart: a completion through another gateway is refused
	// from then on, and those completed that way already are not stored.
	doneAlready, taken, err := q.takeRefs(refs)
	if err != nil {
		q.log.Warn("tasks handed out not marked done before they are stored apart; a completion of one through another gateway may then give it two results", "err", err)
	}
	skip := make(map[taskRef]bool)
	for k, r := range refs {
		if err == nil && doneAlready[k] {
			skip[r] = true
		}
	}
	var back, acks []*nats.Msg
	for _, mv := range moves {
		msgs := mv.msgs[:0]
		for k, m := range mv.msgs {
			if !skip[taskRef{mv.p, mv.is[k]}] {
				msgs = append(msgs, m)
			}
		}
		var err error
		if len(msgs) > 0 {
			ctx, cancel := q.call()
			_, err = q.publish(ctx, msgs)
			cancel()
			if err == nil {
				q.countPacked(mv.p.del.s, -len(msgs)) // stored again, not put again
			}
		}
		if err != nil {
			q.log.Warn("could not store a pack's remaining tasks apart; JetStream delivers the pack again, and its done tasks run again", "queue", mv.p.del.s.queue, "err", err)
			q.untakeRefs(map[*pack]uint64{mv.p: taken[mv.p]})
			back = append(back, mv.p.del.msg)
			continue
		}
		acks = append(acks, mv.p.del.msg)
	}
	q.answerAll(back, nakPayload)
	q.answerAll(acks, ackPayload)
}
