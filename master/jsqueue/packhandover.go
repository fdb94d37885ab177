package jsqueue

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A packed task carries a token too (packToken): its pack's delivery,
// and its attempt. A worker whose gateway died completes,
// renews or fails it through another gateway with it, as an unpacked
// task's (handover.go). The pack's record (packrecord.go) is where the
// gateways agree on who does what:
//
//   - a gateway taking a completion (or failure) through a token marks
//     the task done in the record, by compare-and-set, unless it is done
//     already or a later delivery of the pack is recorded, and only then
//     stores its results (adoptPacked);
//   - the gateway that fetches a redelivered pack records its delivery
//     there before it hands out any of its tasks (claimPack): tokens of
//     earlier deliveries are refused from then on;
//   - the gateway that holds the pack marks a task done there before it
//     stores its results, or stores it apart, when that task was handed
//     out before in this delivery (pack.reissued): its earlier worker
//     holds a token for it. Then one of the two completions is refused.
//     A task handed out once needs no mark: only its worker holds its
//     token.

// packedHandout is a packed task as a token names it: a handout in a
// delivery of its pack.
type packedHandout struct {
	s      *stream
	tok    ackToken // the pack's delivery
	reply  string   // its ack subject
	index  int
	tasks  int // in the pack
	stored time.Time
	task   queue.Task // as handed out
}

func (h *packedHandout) key() string { return packRecordKey(streamName(h.s.queue), h.tok.seq) }
func (h *packedHandout) bit() uint64 { return 1 << h.index }

// currentIn reports whether record r leaves h the current handout of its
// task: no later delivery of its pack taken, and the task not done.
func (h *packedHandout) currentIn(r packRecord) bool {
	return r.delivered <= h.tok.delivered && r.done&h.bit() == 0
}

// allTasks is the mask of every task of a pack of n.
func allTasks(n int) uint64 { return uint64(1)<<n - 1 }

// packedHandoutOf reads packed task id as token, a packToken of a
// delivery of one of s's packs, handed it out; ok is false if the token
// is not one, or the pack is acked.
func (q *Queues) packedHandoutOf(ctx context.Context, s *stream, id uint64, token string) (h *packedHandout, ok bool, err error) {
	hs, err := q.packedHandoutsOf(ctx, s, []uint64{id}, []string{token})
	if err != nil || hs[0] == nil {
		return nil, false, err
	}
	return hs[0], true, nil
}

// packedHandoutsOf reads packed tasks ids as tokens named them, all of
// one delivery of one pack (packDeliveryOf), with one read of the pack:
// hs[i] is nil where tokens[i] is not such a token, or the pack is acked.
func (q *Queues) packedHandoutsOf(ctx context.Context, s *stream, ids []uint64, tokens []string) (hs []*packedHandout, err error) {
	hs = make([]*packedHandout, len(ids))
	seq, delivered, ok := packDeliveryOf(ids[0], tokens[0])
	if !ok {
		return hs, nil
	}
	stream := streamName(s.queue)
	var raw *jetstream.RawStreamMsg
	err = retrying(ctx, func(ctx context.Context) (err error) { raw, err = s.st.GetMsg(ctx, seq); return err })
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return hs, nil // acked already
	}
	if err != nil {
		return hs, q.engineErr("read a task", err)
	}
	payloads, err := decodePack(raw.Data, raw.Header.Get(hdrPack))
	if err != nil {
		return hs, nil
	}
	tok := ackToken{stream: stream, consumer: consumerName, delivered: delivered, seq: seq}
	for k, id := range ids {
		d, dseq, attempts, valid := parsePackToken(tokens[k])
		pseq, i, packed := packOf(id)
		if !valid || !packed || pseq != seq || d != delivered || i >= len(payloads) {
			continue
		}
		t := taskOf(seq, raw.Time, raw.Header, payloads[i], delivered)
		t.ID, t.Attempts, t.Token = id, attempts, tokens[k]
		hs[k] = &packedHandout{s: s, tok: tok, reply: packAckSubject(stream, delivered, seq, dseq),
			index: i, tasks: len(payloads), stored: raw.Time, task: t}
	}
	return hs, nil
}

// packDeliveryOf returns the pack and its delivery that packed task id's
// token names, or ok false if it names none.
func packDeliveryOf(id uint64, token string) (seq, delivered uint64, ok bool) {
	delivered, _, _, valid := parsePackToken(token)
	seq, _, packed := packOf(id)
	return seq, delivered, valid && packed
}

// takeHandout marks h's task done in its pack's record if h is its
// current handout; ok is false if it is not. r is the record after.
func (q *Queues) takeHandout(ctx context.Context, h *packedHandout) (r recordState, ok bool, err error) {
	taken, r, err := q.takeHandouts(ctx, []*packedHandout{h})
	return r, taken[0], err
}

// takeHandouts marks the tasks of hs, handouts of one delivery of one
// pack, done in its record, with one write, as far as each is its task's
// current handout (taken[i]). r is the record after. One write for all
// of a completion's tasks of the pack, rather than one each, keeps the
// record's compare-and-sets from losing to each other when the workers
// of a dead gateway complete its packs through another all at once.
func (q *Queues) takeHandouts(ctx context.Context, hs []*packedHandout) (taken []bool, r recordState, err error) {
	h := hs[0]
	var want uint64
	for _, h := range hs {
		want |= h.bit()
	}
	var got uint64
	r, err = q.updateRecord(ctx, h.key(), h.stored, nil, true, func(r packRecord) (packRecord, bool) {
		got = 0
		if r.delivered <= h.tok.delivered { // else a later delivery was taken
			got = want &^ r.done
		}
		return packRecord{done: r.done | got, delivered: max(r.delivered, h.tok.delivered)}, got != 0
	})
	// unsure is the ID of a write that may have been stored although the
	// call fails (its answer lost, or packGone failing after it): its
	// marks would stand for tasks whose results are not stored, which
	// nobody would run, so they are taken back (undoWrite).
	var unsure string
	if mw := (*maybeWrittenError)(nil); errors.As(err, &mw) {
		unsure = mw.id
	}
	if err == nil && got != 0 && r.fresh {
		// Acked meanwhile, its record deleted?
		var gone bool
		if gone, err = q.packGone(ctx, h.s, h.tok.seq); gone {
			got = 0
		}
		if err != nil {
			unsure = r.id
		}
	}
	taken = make([]bool, len(hs))
	if err != nil {
		if unsure != "" && got != 0 {
			q.undoWrite(h, unsure, got)
		}
		return taken, r, q.engineErr("record a completion", err)
	}
	for i, h := range hs {
		taken[i] = got&h.bit() != 0
		got &^= h.bit() // a task named twice is taken once
	}
	return taken, r, nil
}

// untakeHandout undoes takeHandout, for a task whose results could not
// be stored: it is to do again, by whoever holds its pack.
func (q *Queues) untakeHandout(h *packedHandout) {
	ctx, cancel := q.call()
	defer cancel()
	q.untakeFrom(ctx, h, nil, h.bit())
}

// untakeFrom clears the marks bits in the record of h's pack, as it is
// at cur (nil: read it).
func (q *Queues) untakeFrom(ctx context.Context, h *packedHandout, cur *recordState, bits uint64) {
	_, err := q.updateRecord(ctx, h.key(), h.stored, cur, true, func(r packRecord) (packRecord, bool) {
		return packRecord{done: r.done &^ bits, delivered: r.delivered}, r.done&bits != 0
	})
	if err != nil {
		q.log.Warn("packed tasks whose results were not stored are still marked done; they do not run again",
			"queue", h.s.queue, "pack", h.tok.seq, "tasks", bits, "err", err)
	}
}

// undoWrite clears the marks bits that the write with ID id made, a
// write of the record of h's pack whose outcome is not known, if it is
// the record's last write: after another, the marks may have been
// counted, and stay.
func (q *Queues) undoWrite(h *packedHandout, id string, bits uint64) {
	ctx, cancel := q.call()
	defer cancel()
	cur, err := q.readRecord(ctx, h.key(), h.stored)
	switch {
	case err != nil:
		q.log.Warn("packed tasks may stay marked done with their results not stored; they would not run again",
			"queue", h.s.queue, "pack", h.tok.seq, "tasks", bits, "err", err)
	case cur.id == id:
		q.untakeFrom(ctx, h, &cur, bits)
	}
}

// adoptPacked takes the completions of packed tasks ids through tokens,
// deliveries another gateway handed out, all of one delivery of one pack
// (packDeliveryOf), as far as each is its task's current one
// (takeHandouts): adopted[i] is the zero orphan where it is not. The pack
// is acked when that completes it.
func (q *Queues) adoptPacked(s *stream, ids []uint64, tokens []string) (adopted []orphan, err error) {
	ctx, cancel := q.call()
	defer cancel()
	adopted = make([]orphan, len(ids))
	hs, err := q.packedHandoutsOf(ctx, s, ids, tokens)
	if err != nil {
		return nil, err
	}
	var named []*packedHandout
	var at []int
	for i, h := range hs {
		if h != nil {
			named, at = append(named, h), append(at, i)
		}
	}
	if len(named) == 0 {
		return adopted, nil
	}
	taken, r, err := q.takeHandouts(ctx, named)
	if err != nil {
		return nil, err
	}
	last := -1
	for k, h := range named {
		if !taken[k] {
			continue
		}
		q.doneHere(h)
		adopted[at[k]] = orphan{task: h.task, msg: &nats.Msg{Reply: h.reply}, packed: h}
		last = at[k]
	}
	if last >= 0 {
		adopted[last].packDone = r.done == allTasks(named[0].tasks) // acked once, by the last
	}
	return adopted, nil
}

// settlePacked acks the pack of h, an adopted handout whose results are
// stored, if that left none of its tasks to do; its record is then of no
// use.
func (q *Queues) settlePacked(o orphan) error {
	if !o.packDone {
		return nil // the gateway that holds the pack, or fetches it next, acks it
	}
	if err := q.ack(o.msg); err != nil {
		return err
	}
	q.mu.Lock()
	q.staleRecords = append(q.staleRecords, o.packed.key())
	q.wakeReaper()
	q.mu.Unlock()
	return nil
}

// renewPacked restarts JetStream's ack timer of the pack of packed task
// id of s, named by token, if the token names its current handout.
func (q *Queues) renewPacked(ctx context.Context, s *stream, id uint64, token string) (bool, error) {
	h, ok, err := q.packedHandoutOf(ctx, s, id, token)
	if err != nil || !ok {
		return false, err
	}
	r, err := q.readRecord(ctx, h.key(), h.stored)
	if err != nil {
		return false, q.engineErr("read a pack's record", err)
	}
	if !h.currentIn(r.packRecord) {
		return false, nil
	}
	_, err = q.cfg.Conn.RequestWithContext(ctx, h.reply, progressPayload)
	return err == nil, err
}

// failPacked ends a failed attempt of a packed task reported through a
// token another gateway handed out: once marked done in its pack, the
// task is stored again alone, at the end of its queue after its retry
// delay (storeFailed), or in its dead-letter queue after its last attempt.
func (q *Queues) failPacked(s *stream, req queue.NackRequest) error {
	ctx, cancel := q.call()
	defer cancel()
	h, ok, err := q.packedHandoutOf(ctx, s, req.ID, req.Token)
	if err == nil && ok {
		var r recordState
		if r, ok, err = q.takeHandout(ctx, h); err == nil && ok {
			return q.storeFailed(ctx, h, r.done == allTasks(h.tasks), req.Error, req.RetryAfter, req.NoRetry)
		}
	}
	if err != nil {
		return err
	}
	return notLeased([]uint64{req.ID})
}

// doneHere counts h's task done in its pack if this gateway holds that
// delivery of it (the task's lease here ran out, and its worker came back
// with its token): it is not to be handed out again from the held tasks.
// Leased again here, its completion is refused (takeTasks).
func (q *Queues) doneHere(h *packedHandout) {
	q.mu.Lock()
	p := q.packs[leaseKey{h.s.queue, h.tok.seq}]
	if p == nil || p.delivery != h.tok.delivered || p.done[h.index] || p.out[h.index] {
		q.mu.Unlock()
		return
	}
	s := p.del.s
	s.held = slices.DeleteFunc(s.held, func(x heldTask) bool { return x.p == p && x.i == h.index })
	m := q.settleLocked(&lease{s: s, pack: p, index: h.index})
	q.mu.Unlock()
	if m != nil {
		_ = q.ack(m) // acked already by the completion that finished it
	}
}

// storeFailed stores the task of h, marked done in its pack
// (takeHandout), again alone after a failed attempt: at the end of its
// queue, or in its dead-letter queue after its last attempt or if noRetry
// is set. If it cannot be, the mark is taken back. packDone says the mark finished the pack,
// to be acked. A retry waits retryAfter, if > 0, or none if < 0, else
// the queue's backoff: it is stored as a delayed task (scheduling.go),
// due then.
func (q *Queues) storeFailed(ctx context.Context, h *packedHandout, packDone bool, errText string, retryAfter time.Duration, noRetry bool) error {
	q.mu.Lock()
	q.counters(h.s.queue).nacks++
	q.mu.Unlock()
	t := h.task
	t.LastError = errText
	dead := (t.Attempts >= q.policy(h.s.queue).MaxAttempts || noRetry) && !queue.IsDeadLetterName(h.s.queue)
	to, err := h.s, error(nil)
	if dead {
		to, err = q.open(queue.DeadLetterName(h.s.queue), true)
	}
	var m *nats.Msg
	if err == nil {
		m = movedMsg(to.subject, t, t.Attempts)
		// Reported again (its reply lost), it is stored once.
		m.Header.Set(jetstream.MsgIDHeader, "qm-failed-"+strconv.FormatUint(t.ID, 36)+"-"+strconv.FormatUint(h.tok.delivered, 36)+"-"+strconv.Itoa(t.Attempts))
		if retryAfter == 0 && !dead && !queue.IsDeadLetterName(h.s.queue) {
			retryAfter = queue.Backoff(q.policy(h.s.queue), t.Attempts)
		}
		if retryAfter > 0 && !dead {
			err = q.enableSchedules(ctx, to)
			m.Subject = schedSubject(to.subject, t.ID)
			m.Header.Set(hdrSchedule, "@at "+time.Now().Add(retryAfter).UTC().Format(time.RFC3339Nano))
			m.Header.Set(hdrScheduleTarget, to.subject)
		}
	}
	if err == nil {
		_, err = q.publish(ctx, []*nats.Msg{m})
	}
	if err != nil {
		q.untakeHandout(h)
		return err
	}
	q.doneHere(h)
	if dead {
		q.countGone(h.s.queue, 1)
	}
	if dead && q.cfg.OnDead != nil {
		q.cfg.OnDead(h.s.queue, t)
	}
	return q.settlePacked(orphan{msg: &nats.Msg{Reply: h.reply}, packed: h, packDone: packDone})
}

// taskRef names task i of pack p.
type taskRef struct {
	p *pack
	i int
}

// takeRefs marks the tasks of refs done in their packs' records
// (takeTasks), before this gateway stores their results or copies. It
// returns which of them were done already (through another gateway: this
// gateway must not store them too), and the tasks it marked, for
// untakeRefs if the storing fails.
func (q *Queues) takeRefs(refs []taskRef) (doneAlready []bool, taken map[*pack]uint64, err error) {
	byPack := make(map[*pack]uint64)
	for _, r := range refs {
		byPack[r.p] |= 1 << r.i
	}
	ctx, cancel := q.call()
	defer cancel()
	taken = make(map[*pack]uint64, len(byPack))
	for p, m := range byPack {
		t, err := q.takeTasks(ctx, p, m)
		if err != nil {
			q.untakeRefs(taken)
			return nil, nil, q.engineErr("record a completion", err)
		}
		taken[p] = t
	}
	doneAlready = make([]bool, len(refs))
	for k, r := range refs {
		doneAlready[k] = taken[r.p]&(1<<r.i) == 0
	}
	return doneAlready, taken, nil
}

// untakeRefs undoes takeRefs's marks.
func (q *Queues) untakeRefs(taken map[*pack]uint64) {
	ctx, cancel := q.call()
	defer cancel()
	for p, m := range taken {
		if m != 0 {
			q.untakeTasks(ctx, p, m)
		}
	}
}
