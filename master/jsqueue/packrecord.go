package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A pack's tasks are done one completion at a time, and the pack is acked
// only when all are. So that a gateway that dies in between does not have
// the done ones run again when JetStream delivers the pack to another,
// each completion that leaves a pack with tasks still to do first records
// which of its tasks are done: one message per pack in the stream
// recordsStream, on a subject of its own, a mask of its indexes and the
// latest delivery of the pack a gateway took, written by compare-and-set
// (the subject's last sequence). The gateway that fetches a redelivered
// pack records its delivery there (claimPack), and counts the tasks
// marked done. Gateways completing packed tasks through tokens write it
// too (packhandover.go). The message is deleted once the pack is acked.
// A completion that finishes its pack (the common case with batched
// workers) writes nothing.
//
// A stream rather than a KV bucket: a bucket refuses to delete a message,
// and its delete markers would stay for the bucket's whole TTL, one per
// pack.

// recordsStream keeps the records; recordsTTL bounds how long a record
// that could not be deleted stays.
const (
	recordsStream  = "QM_PACK_DONE"
	recordsSubject = "qm.packdone."
	recordsTTL     = 24 * time.Hour
)

// packRecordKey is the subject of the record of the pack at seq of stream.
func packRecordKey(stream string, seq uint64) string {
	return recordsSubject + stream + "." + strconv.FormatUint(seq, 10)
}

// recordKey is the subject of p's record.
func (p *pack) recordKey() string {
	return packRecordKey(streamName(p.del.s.queue), p.del.key.id)
}

// records returns the records' stream, creating it on first use.
func (q *Queues) records(ctx context.Context) (jetstream.Stream, error) {
	q.recsMu.Lock()
	defer q.recsMu.Unlock()
	if q.recs != nil {
		return q.recs, nil
	}
	var st jetstream.Stream
	err := retrying(ctx, func(ctx context.Context) (err error) {
		st, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              recordsStream,
			Subjects:          []string{recordsSubject + ">"},
			Storage:           jetstream.FileStorage,
			Replicas:          q.cfg.Replicas,
			MaxMsgsPerSubject: 1,
			MaxAge:            recordsTTL,
		})
		return err
	})
	if err != nil {
		return nil, q.engineErr("open the packs' records", err)
	}
	q.recs = st
	return st, nil
}

// recordDone records, for each pack of ls (deliveries of packed tasks
// whose results are stored, or which were dead-lettered or moved apart)
// that they do not finish, that their tasks are done. A failure is
// logged: the pack's done tasks would then run again if this gateway
// died before the pack was acked.
func (q *Queues) recordDone(ls []*lease) {
	q.mu.Lock()
	byPack := make(map[*pack]uint64)
	for _, l := range ls {
		if p := l.pack; p != nil && !p.del.lost && !p.done[l.index] {
			byPack[p] |= 1 << l.index
		}
	}
	q.mu.Unlock()
	if len(byPack) == 0 {
		return
	}
	ctx, cancel := q.call()
	defer cancel()
	for p, m := range byPack {
		if err := q.recordPack(ctx, p, m); err != nil {
			q.log.Warn("a pack's done tasks not recorded; if this gateway dies before the pack is done, they run again",
				"queue", p.del.s.queue, "err", err)
		}
	}
}

// recordPack adds the tasks of mask to p's record, unless they are the
// last of p to be done. The completions of a pack's tasks come together
// when its tasks went to many single-task workers at once, and its record
// is written one change at a time: so each write takes every task that
// came while the one before it was on its way (in `qbench fleet`, 82% of
// the writes found one on its way). A completion whose tasks another's
// write took returns once that write is done; if it failed, the tasks
// are left for the next write.
func (q *Queues) recordPack(ctx context.Context, p *pack, m uint64) error {
	q.mu.Lock()
	p.toRecord |= m
	q.mu.Unlock()
	p.recordMu.Lock()
	defer p.recordMu.Unlock()
	q.mu.Lock()
	m, p.toRecord = p.toRecord, 0
	last := p.left <= unsettled(p, m)
	q.mu.Unlock()
	if m == 0 || last {
		return nil // written by the write before, or the pack is acked with them
	}
	_, err := q.changeRecordLocked(ctx, p, false, func(r packRecord) (packRecord, bool) {
		// Bits another gateway set mean stored results too: kept.
		return packRecord{done: r.done | m, delivered: max(r.delivered, p.delivery)}, m&^r.done != 0
	})
	if err != nil {
		q.mu.Lock()
		p.toRecord |= m // for the next completion's write to try again
		q.mu.Unlock()
	}
	return err
}

// unsettled counts the tasks of mask m that p has not settled yet: the
// tasks a failed write left in p.toRecord were settled by their
// completions all the same, and p.left counts them no more. Under q.mu.
func unsettled(p *pack, m uint64) int {
	n := 0
	for x := m; x != 0; x &= x - 1 {
		if !p.done[bits.TrailingZeros64(x)] {
			n++
		}
	}
	return n
}

// takeTasks marks the tasks of mask of p done in its record before this
// gateway stores their results (or stores them apart): tasks handed out
// before in this delivery of p, whose earlier worker may have completed
// them through another gateway with that delivery's token (adoptPacked).
// It returns the tasks it marked; the others are done already.
func (q *Queues) takeTasks(ctx context.Context, p *pack, m uint64) (taken uint64, err error) {
	// With an ID: sent again after its answer was lost, it must still
	// tell the tasks it marked from those marked before it.
	r, err := q.changeRecord(ctx, p, true, func(r packRecord) (packRecord, bool) {
		taken = 0
		if r.delivered > p.delivery { // delivered again since: not this gateway's
			return r, false
		}
		if taken = m &^ r.done; taken == 0 {
			return r, false
		}
		return packRecord{done: r.done | taken, delivered: max(r.delivered, p.delivery)}, true
	})
	if err == nil && taken != 0 && r.fresh {
		// Acked through another gateway's token, its record deleted?
		var gone bool
		if gone, err = q.packGone(ctx, p.del.s, p.del.key.id); gone {
			taken = 0
			q.mu.Lock()
			if q.packs[p.del.key] == p {
				q.loseLocked(p) // nothing of it is left to do, or to ack
			}
			q.mu.Unlock()
		}
	}
	if err != nil {
		return 0, err
	}
	return taken, nil
}

// untakeTasks undoes takeTasks for tasks whose results (or copies) could
// not be stored: they are to do again.
func (q *Queues) untakeTasks(ctx context.Context, p *pack, m uint64) {
	// With an ID: applied twice, it could take back marks set since.
	_, err := q.changeRecord(ctx, p, true, func(r packRecord) (packRecord, bool) {
		return packRecord{done: r.done &^ m, delivered: r.delivered}, r.done&m != 0
	})
	if err != nil {
		q.log.Warn("tasks marked done but not stored are still marked; they run again only if their gateway holds them on",
			"queue", p.del.s.queue, "err", err)
	}
}

// changeRecord changes p's record (updateRecord, withID its resend), from
// what this gateway last read or wrote of it, one change at a time per
// pack (p.recordMu), so that concurrent completions of one pack keep each
// other's.
func (q *Queues) changeRecord(ctx context.Context, p *pack, withID bool, change func(packRecord) (packRecord, bool)) (recordState, error) {
	p.recordMu.Lock()
	defer p.recordMu.Unlock()
	return q.changeRecordLocked(ctx, p, withID, change)
}

// changeRecordLocked is changeRecord with p.recordMu held.
func (q *Queues) changeRecordLocked(ctx context.Context, p *pack, withID bool, change func(packRecord) (packRecord, bool)) (recordState, error) {
	q.mu.Lock()
	cur := p.rec
	q.mu.Unlock()
	r, err := q.updateRecord(ctx, p.recordKey(), p.stored, &cur, withID, change)
	if err != nil {
		return r, err
	}
	q.keepRecord(p, r)
	return r, nil
}

// keepRecord keeps r, p's record as this gateway last read or wrote
// it. A record of a later delivery means that p is not this gateway's any
// more: it is dropped, as when its renewals go unconfirmed.
func (q *Queues) keepRecord(p *pack, r recordState) {
	q.mu.Lock()
	defer q.mu.Unlock()
	p.rec = r
	if r.delivered > p.delivery && q.packs[p.del.key] == p {
		q.loseLocked(p)
	}
}

// packRecord is what the record of a pack says: which of its tasks are
// done, and the latest delivery of the pack a gateway took (0: none was
// recorded).
type packRecord struct {
	done, delivered uint64
}

// recordState is a record as last read or written: its content, and its
// revision (the subject's last sequence; 0: there is none). A record of
// another pack (of an earlier stream of the queue) reads as empty, at its
// revision, to be written over.
type recordState struct {
	packRecord
	rev uint64
	// fresh is set on a record this gateway just wrote where there was
	// none: the pack may have been acked, and its record deleted, since
	// it was read (packGone).
	fresh bool
	// id is the message ID the record's last write carried, if any.
	id string
}

// packGone reports whether the pack at seq of s is acked (every task of
// it done), after a change that found no record of it (recordState.fresh):
// a deleted record reads as none.
func (q *Queues) packGone(ctx context.Context, s *stream, seq uint64) (bool, error) {
	err := retrying(ctx, func(ctx context.Context) error { _, err := s.st.GetMsg(ctx, seq); return err })
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return true, nil
	}
	return false, err
}

// recordValue is a record's value: the mask of tasks done, when the pack
// was stored (which tells it from a pack stored at the same sequence of a
// queue deleted and made anew meanwhile), and the delivery.
func recordValue(r packRecord, stored time.Time) []byte {
	return fmt.Appendf(nil, "%d %d %d", r.done, stored.UnixNano(), r.delivered)
}

// parseRecord reads a record's value (recordValue; gateways before
// deliveries were recorded wrote the first two fields), if it is of the
// pack stored at stored.
func parseRecord(data []byte, stored time.Time) (packRecord, bool) {
	f := strings.Fields(string(data))
	if len(f) < 2 || len(f) > 3 || f[1] != strconv.FormatInt(stored.UnixNano(), 10) {
		return packRecord{}, false
	}
	var r packRecord
	var err error
	if r.done, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return packRecord{}, false
	}
	if len(f) == 3 {
		if r.delivered, err = strconv.ParseUint(f[2], 10, 64); err != nil {
			return packRecord{}, false
		}
	}
	return r, true
}

// readRecord reads the record at key of the pack stored at stored.
func (q *Queues) readRecord(ctx context.Context, key string, stored time.Time) (recordState, error) {
	st, err := q.records(ctx)
	if err != nil {
		return recordState{}, err
	}
	var m *jetstream.RawStreamMsg
	err = retrying(ctx, func(ctx context.Context) (err error) { m, err = st.GetLastMsgForSubject(ctx, key); return err })
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return recordState{}, nil // none, or aged out (recordsTTL)
	case err != nil:
		return recordState{}, err
	}
	r, _ := parseRecord(m.Data, stored) // another pack's reads as empty
	return recordState{packRecord: r, rev: m.Sequence, id: m.Header.Get(jetstream.MsgIDHeader)}, nil
}

// updateRecord changes the record at key of the pack stored at stored, by
// compare-and-set on its revision: change gets the record as it is (cur,
// if the caller knows it, else read) and returns it as it is to be, or
// false to leave it. If another gateway wrote it meanwhile, it is read
// again and change applied to that. It returns the record as it is now.
//
// On replicated streams a write that gets no answer, as while the
// records' stream elects a new leader or its leadership is handed over,
// is sent again until one answers, within ctx (publishIf). With resend,
// each write carries a message ID of its own (newWriteID): JetStream
// stores it once, and answers a send again of a write it stored as a
// duplicate; a lost race whose record carries this write's ID is this
// write too. Without, change must be idempotent (marks added, the
// delivery raised): a write stored whose answer was lost makes its send
// again lose the race, and change, applied to the record it wrote, writes
// nothing more. The frequent writes of a gateway's own packs are so, and
// not worth the entries of JetStream's duplicate window.
func (q *Queues) updateRecord(ctx context.Context, key string, stored time.Time, cur *recordState, resend bool, change func(packRecord) (packRecord, bool)) (recordState, error) {
	if _, err := q.records(ctx); err != nil {
		return recordState{}, err
	}
	var r recordState
	if cur != nil {
		r = *cur
	} else {
		var err error
		if r, err = q.readRecord(ctx, key, stored); err != nil {
			return r, err
		}
	}
	for range maxRecordTries {
		next, write := change(r.packRecord)
		if !write {
			return r, nil
		}
		from, id := r.rev, ""
		if resend {
			id = q.writeID()
		}
		seq, err := q.publishIf(ctx, key, recordValue(next, stored), from, id)
		if err == nil {
			return recordState{packRecord: next, rev: seq, fresh: from == 0, id: id}, nil
		}
		if !isWrongSequence(err) {
			return r, &maybeWrittenError{id: id, err: err} // unanswered, it may have been stored
		}
		if r, err = q.readRecord(ctx, key, stored); err != nil {
			return r, err
		}
		if id != "" && r.id == id {
			return recordState{packRecord: r.packRecord, rev: r.rev, fresh: from == 0, id: id}, nil // this write, sent again
		}
	}
	return r, fmt.Errorf("the record %s kept changing", key)
}

// maybeWrittenError is an error of updateRecord whose last write, under
// ID id ("" if none), may have been stored all the same.
type maybeWrittenError struct {
	id  string
	err error
}

func (e *maybeWrittenError) Error() string { return e.err.Error() }
func (e *maybeWrittenError) Unwrap() error { return e.err }

// maxRecordTries bounds the compare-and-sets of one update of a record:
// each lost one means that another gateway wrote it meanwhile, and few
// gateways ever write one pack's.
const maxRecordTries = 8

// claimPack records that this gateway holds delivery delivered of the
// pack at seq of s, stored at stored, and returns its record: which of
// its tasks are done. From then on no completion through a token of an
// earlier delivery is taken (adoptPacked). A failure is logged and
// reported (ok false): what was read counts, at worst nothing, and those
// tasks run again. It ends as claimRedelivery does.
func (q *Queues) claimPack(s *stream, seq, delivered uint64, stored time.Time, by time.Time) (r recordState, ok bool) {
	ctx, cancel := q.callBy(by, 0)
	defer cancel()
	r, err := q.updateRecord(ctx, packRecordKey(streamName(s.queue), seq), stored, nil, true, func(r packRecord) (packRecord, bool) {
		return packRecord{done: r.done, delivered: delivered}, r.delivered < delivered
	})
	if err != nil {
		q.log.Warn("a redelivered pack not recorded as taken; its done tasks may run again", "queue", s.queue, "seq", seq, "err", err)
	}
	return r, err == nil
}

// recordOfLocked notes the record of p, done, to be deleted once p's ack
// is through (packsAcked): a record deleted before an ack that then
// fails would let the done tasks run again. Called with q.mu held.
func (q *Queues) recordOfLocked(p *pack) {
	if p.rec.rev == 0 {
		return
	}
	q.recordOf[p.del.msg] = p.recordKey()
	q.recordsPending.Store(int64(len(q.recordOf)))
}

// packsAcked takes the outcome of the acks of msgs: the records of the
// packs among them, acked, are left to the reaper to delete; those of
// packs not acked stay, for their next delivery.
func (q *Queues) packsAcked(msgs []*nats.Msg, acked bool) {
	if q.recordsPending.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, m := range msgs {
		if key, ok := q.recordOf[m]; ok {
			delete(q.recordOf, m)
			if acked {
				q.staleRecords = append(q.staleRecords, key)
				q.wakeReaper()
			}
		}
	}
	q.recordsPending.Store(int64(len(q.recordOf)))
}

// dropRecords deletes the records of packs acked (each subject's whole
// content: a record is of no use once its pack is acked). Run by the
// reaper's helper goroutine, until ctx ends; a failure leaves the record
// to recordsTTL.
func (q *Queues) dropRecords(ctx context.Context, keys []string) {
	ctx, cancel := context.WithTimeout(ctx, q.cfg.RequestTimeout)
	defer cancel()
	st, err := q.records(ctx)
	if err != nil {
		return
	}
	failed := 0
	for _, key := range keys {
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(key)); err != nil {
			failed++
		}
	}
	if failed > 0 && !errors.Is(ctx.Err(), context.Canceled) { // not cut short by the gateway's close
		q.log.Warn("records of acked packs not deleted; recordsTTL removes them", "records", failed)
	}
}
