package jsqueue

import (
	"context"
	"errors"
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
// recordsStream, on a subject of its own, a mask of its indexes, written
// by compare-and-set (the subject's last sequence) by the one gateway that
// holds the pack. The gateway that fetches a redelivered pack reads it,
// and counts those tasks done. The message is deleted once the pack is
// acked. A completion that finishes its pack (the common case with
// batched workers) writes nothing.
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

// records returns the records' stream, creating it on first use.
func (q *Queues) records(ctx context.Context) (jetstream.Stream, error) {
	q.kvMu.Lock()
	defer q.kvMu.Unlock()
	if q.recs != nil {
		return q.recs, nil
	}
	st, err := q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              recordsStream,
		Subjects:          []string{recordsSubject + ">"},
		Storage:           jetstream.FileStorage,
		Replicas:          q.cfg.Replicas,
		MaxMsgsPerSubject: 1,
		MaxAge:            recordsTTL,
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
// last of p to be done. One write at a time per pack (p.recordMu), so that
// completions of one pack through concurrent calls keep each other's.
func (q *Queues) recordPack(ctx context.Context, p *pack, m uint64) error {
	p.recordMu.Lock()
	defer p.recordMu.Unlock()
	q.mu.Lock()
	last := p.left <= bits.OnesCount64(m)
	mask, rev := p.recorded|m, p.recordRev
	q.mu.Unlock()
	if last {
		return nil // the pack is acked with them
	}
	st, err := q.records(ctx)
	if err != nil {
		return err
	}
	key := packRecordKey(streamName(p.del.s.queue), p.del.key.id)
	ack, err := q.js.Publish(ctx, key, recordValue(mask, p.stored), jetstream.WithExpectLastSequencePerSubject(rev))
	if isWrongSequence(err) {
		// A record this gateway did not write last: another pack's, at the
		// same sequence of an earlier stream of the queue, left there
		// (written over); or this pack's, written by a gateway that held
		// it before, unread (recordedDone failed) or late: its tasks are
		// done too, every bit meaning a stored result.
		// Or none at all: it aged out (recordsTTL).
		var last *jetstream.RawStreamMsg
		var lastSeq uint64
		last, err = st.GetLastMsgForSubject(ctx, key)
		switch {
		case err == nil:
			if theirs, ok := parseRecord(last.Data, p.stored); ok {
				mask |= theirs
			}
			lastSeq = last.Sequence
		case errors.Is(err, jetstream.ErrMsgNotFound):
			err = nil
		}
		if err == nil {
			ack, err = q.js.Publish(ctx, key, recordValue(mask, p.stored), jetstream.WithExpectLastSequencePerSubject(lastSeq))
		}
	}
	if err != nil {
		return err
	}
	q.mu.Lock()
	p.recorded, p.recordRev = mask, ack.Sequence
	q.mu.Unlock()
	return nil
}

// recordValue is a record's value: the mask, and when the pack was stored,
// which tells it from a pack stored at the same sequence of a queue
// deleted and made anew meanwhile.
func recordValue(mask uint64, stored time.Time) []byte {
	return []byte(strconv.FormatUint(mask, 10) + " " + strconv.FormatInt(stored.UnixNano(), 10))
}

// recordedDone reads which tasks of the pack stored at seq of s at stored
// were recorded done by the gateway that held it before: a mask, and the
// record's revision (0: none). A failure to read is logged, and counts as
// none: at worst those tasks run again.
func (q *Queues) recordedDone(s *stream, seq uint64, stored time.Time) (mask, rev uint64) {
	ctx, cancel := q.call()
	defer cancel()
	st, err := q.records(ctx)
	var m *jetstream.RawStreamMsg
	if err == nil {
		m, err = st.GetLastMsgForSubject(ctx, packRecordKey(streamName(s.queue), seq))
	}
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, 0
	case err != nil:
		q.log.Warn("a redelivered pack's record not read; its done tasks may run again", "queue", s.queue, "seq", seq, "err", err)
		return 0, 0
	}
	mask, ok := parseRecord(m.Data, stored)
	if !ok {
		// Another pack's, at the same sequence of an earlier stream of
		// the queue: this pack's gateway writes its own over it (its last
		// sequence).
		return 0, m.Sequence
	}
	return mask, m.Sequence
}

// parseRecord reads a record's value (recordValue), if it is of the pack
// stored at stored.
func parseRecord(data []byte, stored time.Time) (mask uint64, ok bool) {
	maskText, at, _ := strings.Cut(string(data), " ")
	mask, err := strconv.ParseUint(maskText, 10, 64)
	if err != nil || at != strconv.FormatInt(stored.UnixNano(), 10) {
		return 0, false
	}
	return mask, true
}

// recordOfLocked notes the record of p, done, to be deleted once p's ack
// is through (packsAcked): a record deleted before an ack that then
// fails would let the done tasks run again. Called with q.mu held.
func (q *Queues) recordOfLocked(p *pack) {
	if p.recordRev == 0 {
		return
	}
	q.recordOf[p.del.msg] = packRecordKey(streamName(p.del.s.queue), p.del.key.id)
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
// reaper's helper goroutine; a failure leaves the record to recordsTTL.
func (q *Queues) dropRecords(keys []string) {
	ctx, cancel := q.call()
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
	if failed > 0 {
		q.log.Warn("records of acked packs not deleted; recordsTTL removes them", "records", failed)
	}
}
