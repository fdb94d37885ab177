package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A worker whose gateway dies goes on through another, and completes the
// task it was running there, within its lease. Each task a gateway hands
// out carries a token (queue.Task.Token): the reply subject of its
// JetStream delivery, through which any gateway can ack it. What JetStream
// cannot tell is whether that delivery is still the current one: it acks a
// redelivery as readily as the delivery it replaced. So the gateways keep
// a record of their own, in the KV bucket deliveriesBucket, one key per
// task that needs one:
//
//   - before a gateway hands out a redelivery, it records its delivery
//     count there, by compare-and-set;
//   - a gateway given a completion of a delivery it did not hand out (an
//     orphan) refuses it if a later delivery is recorded, else records
//     the task as done, by compare-and-set, and then stores the results
//     and acks the delivery;
//   - a gateway that finds a task recorded as done less than an ack wait
//     ago does not hand out its redelivery: the completion is under way.
//
// Only redeliveries and orphans pay for the record; a task delivered once
// and completed through its own gateway never touches it.

// A packed task's token is of another form, and its handover works
// through its pack's record instead (packhandover.go).

// deliveriesBucket is the KV bucket of the record.
const deliveriesBucket = "qm_deliveries"

// deliveriesTTL is how long an entry is kept: far longer than any lease
// is left unrenewed, so that an entry is gone only when no delivery it
// speaks of can still be completed.
const deliveriesTTL = 24 * time.Hour

// doneMark starts the value of a task completed through another gateway.
const doneMark = "done "

// failedMark starts the value of a task whose delivery failed and was
// given back rather than dead-lettered: its worker went away on its last
// attempt (it may still complete it through another gateway), its
// results could not be stored on its last attempt, or its dead-letter
// queue could not be written. "failed <delivery> <stored>": the number
// of the delivery, and the message's stored time (Unix ns), which tells
// it from the message at the same sequence of a queue deleted and made
// again. Its next delivery is dead-lettered, wherever it goes, rather
// than run once more as a delivery past the last attempt that was lost
// is (deliver); the mark stays until the message is gone. An older
// gateway reads it as no record.
const failedMark = "failed "

// failedValue is the record's value marking delivery delivered of the
// message stored at stored failed (failedMark).
func failedValue(delivered uint64, stored int64) []byte {
	return []byte(failedMark + strconv.FormatUint(delivered, 10) + " " + strconv.FormatInt(stored, 10))
}

// recordedDelivery reads a value of the record that names a delivery: its
// number, and, if it marks that delivery failed (failedMark), the stored
// time of the message it marks (failed). ok is false for a done mark, or
// a value this version does not know.
func recordedDelivery(v []byte) (n uint64, failed bool, stored int64, ok bool) {
	s, failed := strings.CutPrefix(string(v), failedMark)
	if failed {
		var t string
		var cut bool
		if s, t, cut = strings.Cut(s, " "); !cut {
			return 0, false, 0, false
		}
		var err error
		if stored, err = strconv.ParseInt(t, 10, 64); err != nil {
			return 0, false, 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, failed, stored, err == nil
}

// ackToken is what a delivery token names.
type ackToken struct {
	stream, consumer string
	delivered, seq   uint64
	stored           int64 // the message's stored time, Unix ns; 0 if unreadable
}

// parseToken reads a JetStream ack subject, in either of its forms:
// $JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<time>.<pending>,
// or with a domain and an account hash after ACK (and a trailing token).
// Every token must be a plain one, since a gateway publishes to it.
func parseToken(tok string) (ackToken, bool) {
	parts := strings.Split(tok, ".")
	if len(parts) < 9 || parts[0] != "$JS" || parts[1] != "ACK" {
		return ackToken{}, false
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, "*> \t\r\n") {
			return ackToken{}, false
		}
	}
	var at int // where the stream's name is
	switch len(parts) {
	case 9:
		at = 2
	case 11, 12:
		at = 4
	default:
		return ackToken{}, false
	}
	delivered, err1 := strconv.ParseUint(parts[at+2], 10, 64)
	seq, err2 := strconv.ParseUint(parts[at+3], 10, 64)
	if err1 != nil || err2 != nil || delivered == 0 || seq == 0 {
		return ackToken{}, false
	}
	stored, _ := strconv.ParseInt(parts[at+5], 10, 64)
	return ackToken{stream: parts[at], consumer: parts[at+1], delivered: delivered, seq: seq, stored: stored}, true
}

// deliveries returns the record, creating the bucket on first use.
func (q *Queues) deliveries(ctx context.Context) (jetstream.KeyValue, error) {
	q.kvMu.Lock()
	defer q.kvMu.Unlock()
	if q.kv != nil {
		return q.kv, nil
	}
	var kv jetstream.KeyValue
	err := retrying(ctx, func(ctx context.Context) (err error) {
		kv, err = q.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   deliveriesBucket,
			TTL:      deliveriesTTL,
			Replicas: q.cfg.Replicas,
			Storage:  jetstream.FileStorage,
		})
		return err
	})
	if err != nil {
		return nil, q.engineErr("open the deliveries' record", err)
	}
	var st jetstream.Stream
	err = retrying(ctx, func(ctx context.Context) (err error) { st, err = q.js.Stream(ctx, deliveriesStream); return err })
	if err != nil {
		return nil, q.engineErr("open the deliveries' record", err)
	}
	q.kv, q.kvStream = kv, st
	return kv, nil
}

func deliveryKey(stream string, seq uint64) string {
	return stream + "." + strconv.FormatUint(seq, 10)
}

// claimRedelivery records that this gateway hands out delivery number
// delivered of the message at seq of s, stored at stored (Unix ns),
// unless the task was completed through another gateway less than an ack
// wait ago (hand false: leave the message be; the completion acks it).
// failed reports that a delivery before it failed and was given back
// (failedMark). If the record cannot be reached, the task is handed out
// all the same, and said so: at worst it runs twice, where refusing would
// stall it. It ends by by, if that comes before the request timeout
// (deliver).
func (q *Queues) claimRedelivery(s *stream, seq, delivered uint64, stored int64, by time.Time) (hand, failed bool) {
	ctx, cancel := q.callBy(by, 0)
	defer cancel()
	kv, err := q.deliveries(ctx)
	if err == nil {
		hand, failed, err = q.claim(ctx, kv, s, deliveryKey(streamName(s.queue), seq), delivered, stored)
		if err == nil {
			return hand, failed
		}
	}
	q.log.Warn("redelivery not recorded; a completion of its previous delivery through another gateway may then be taken too",
		"queue", s.queue, "seq", seq, "err", err)
	return true, false
}

func (q *Queues) claim(ctx context.Context, kv jetstream.KeyValue, s *stream, key string, delivered uint64, stored int64) (hand, failed bool, err error) {
	for range 3 {
		var e jetstream.KeyValueEntry
		err := retrying(ctx, func(ctx context.Context) (err error) { e, err = kv.Get(ctx, key); return err })
		failed = false
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			e = nil
		case err != nil:
			return false, false, err
		case strings.HasPrefix(string(e.Value()), doneMark) && time.Since(e.Created()) < s.ackWait:
			return false, false, nil
		default:
			n, marked, markedStored, ok := recordedDelivery(e.Value())
			if marked && markedStored != stored {
				break // another message's, at the same sequence of a queue made again
			}
			failed = marked
			if ok && n >= delivered {
				// Recorded already (this gateway's earlier try), or a later
				// delivery is: then this one is stale.
				return n == delivered, failed && n == delivered, nil
			}
		}
		// The failure stays marked until the message is gone: a claimed
		// delivery may yet be given back (its gateway closing) before it
		// is dead-lettered.
		value := []byte(strconv.FormatUint(delivered, 10))
		if failed {
			value = failedValue(delivered, stored)
		}
		if again, err := q.casPut(ctx, key, e, value); !again {
			return err == nil, failed && err == nil, err
		}
		// Someone wrote it meanwhile: look again.
	}
	return false, false, fmt.Errorf("the record of %s kept changing", key)
}

// markFailed records in the deliveries' record that the delivery whose
// token (ack subject) is token failed and is given back rather than
// dead-lettered (failedMark), unless a later delivery or a completion is
// recorded. Called before the nak that gives it back, so that its
// redelivery finds the mark. name and id are the task's, for the log.
func (q *Queues) markFailed(token, name string, id uint64) {
	tok, ok := parseToken(token)
	if !ok {
		return
	}
	ctx, cancel := q.call()
	defer cancel()
	key := deliveryKey(tok.stream, tok.seq)
	value := failedValue(tok.delivered, tok.stored)
	kv, err := q.deliveries(ctx)
	for try := 0; err == nil; try++ {
		if try == 3 {
			err = fmt.Errorf("the record of %s kept changing", key)
			break
		}
		var e jetstream.KeyValueEntry
		err = retrying(ctx, func(ctx context.Context) (err error) { e, err = kv.Get(ctx, key); return err })
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			e, err = nil, nil
		case err != nil:
			continue
		case strings.HasPrefix(string(e.Value()), doneMark):
			return
		default:
			n, marked, markedStored, ok := recordedDelivery(e.Value())
			if ok && n > tok.delivered && (!marked || markedStored == tok.stored) {
				return // delivered again since: not this delivery's to mark
			}
		}
		var again bool
		if again, err = q.casPut(ctx, key, e, value); !again && err == nil {
			return
		}
	}
	q.log.Warn("a failed last attempt not recorded; delivered again, the task may run once more before it is dead-lettered",
		"queue", name, "task", id, "err", err)
}

// casPut writes value at key of the deliveries' record if the entry there
// is still e (nil: none, or a deleted one). again reports that someone
// wrote it since e was read. Each write carries a message ID of its own
// (newWriteID): one that gets no answer is sent again (publishIf), and
// one that then finds the entry moved on looks whether that was itself.
func (q *Queues) casPut(ctx context.Context, key string, e jetstream.KeyValueEntry, value []byte) (again bool, err error) {
	subj := deliveriesSubject + key
	var rev uint64
	if e != nil {
		rev = e.Revision()
	}
	for range 2 {
		id := q.writeID()
		_, err := q.publishIf(ctx, subj, value, rev, id)
		if err == nil || !isWrongSequence(err) {
			return false, err
		}
		var last *jetstream.RawStreamMsg
		err = retrying(ctx, func(ctx context.Context) (err error) {
			last, err = q.kvStream.GetLastMsgForSubject(ctx, subj)
			return err
		})
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			return true, nil
		case err != nil:
			return false, err
		case last.Header.Get(jetstream.MsgIDHeader) == id:
			return false, nil // this write, sent again
		case e == nil && isKVDelete(last.Header) && last.Sequence != rev:
			rev = last.Sequence // a deleted entry's marker: written over, as kv.Create does
			continue
		}
		return true, nil
	}
	return true, nil
}

// isKVDelete reports whether h is the header of a KV entry's delete or
// purge marker.
func isKVDelete(h nats.Header) bool {
	op := h.Get(kvOperationHeader)
	return op == "DEL" || op == "PURGE"
}

// The deliveries' record as a stream: its entries' subjects, and the
// header that marks deleted ones (the KV layout JetStream's clients use).
const (
	deliveriesSubject = "$KV." + deliveriesBucket + "."
	deliveriesStream  = "KV_" + deliveriesBucket
	kvOperationHeader = "KV-Operation"
)

// isWrongSequence reports a compare-and-set that lost the race.
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// orphan is a completion of a delivery this gateway did not hand out.
type orphan struct {
	task  queue.Task
	msg   *nats.Msg // for its ack: Reply is the token
	key   string
	index int // in the AckRequest's IDs
	// packed is set for a packed task's (packhandover.go), and packDone
	// if it was the last of its pack to do.
	packed   *packedHandout
	packDone bool
}

// current checks that token names the current delivery of task id of s:
// a delivery of the queue's stream, of that task, still pending, and with
// no later one recorded (nor a completion through another gateway). It
// returns the task as that delivery handed it out, and the record's entry
// (nil if there is none), or ok false.
func (q *Queues) current(ctx context.Context, s *stream, id uint64, token string) (t queue.Task, e jetstream.KeyValueEntry, ok bool, err error) {
	tok, valid := parseToken(token)
	stream := streamName(s.queue)
	if !valid || tok.stream != stream || !isTaskConsumer(tok.consumer) {
		return t, nil, false, nil
	}
	var raw *jetstream.RawStreamMsg
	err = retrying(ctx, func(ctx context.Context) (err error) { raw, err = s.st.GetMsg(ctx, tok.seq); return err })
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return t, nil, false, nil // acked already: work-queue streams keep no acked message
	}
	if err != nil {
		return t, nil, false, q.engineErr("read a task", err)
	}
	t = taskOf(tok.seq, raw.Time, raw.Header, raw.Data, tok.delivered)
	if t.ID != id {
		return t, nil, false, nil
	}
	t.Token = token
	kv, err := q.deliveries(ctx)
	if err != nil {
		return t, nil, false, err
	}
	err = retrying(ctx, func(ctx context.Context) (err error) { e, err = kv.Get(ctx, deliveryKey(stream, tok.seq)); return err })
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return t, nil, true, nil
	case err != nil:
		return t, nil, false, q.engineErr("read the deliveries' record", err)
	case strings.HasPrefix(string(e.Value()), doneMark):
		return t, nil, false, nil // completed through another gateway already
	}
	if n, _, _, ok := recordedDelivery(e.Value()); ok && n > tok.delivered {
		return t, nil, false, nil // redelivered since
	}
	return t, e, true, nil
}

// adoptOrphan checks that token names the current delivery of task id of
// s (current), and records the task as done so that no gateway hands it
// out again. It returns the task as that delivery handed it out, or ok
// false if the delivery is not the current one.
func (q *Queues) adoptOrphan(s *stream, id uint64, token string) (o orphan, ok bool, err error) {
	ctx, cancel := q.call()
	defer cancel()
	if _, err := q.deliveries(ctx); err != nil { // for casPut
		return orphan{}, false, err
	}
	for range 3 {
		t, e, ok, err := q.current(ctx, s, id, token)
		if err != nil || !ok {
			return orphan{}, false, err
		}
		tok, _ := parseToken(token) // current checked it
		key := deliveryKey(streamName(s.queue), tok.seq)
		again, err := q.casPut(ctx, key, e, []byte(doneMark+strconv.FormatUint(tok.delivered, 10)))
		if err != nil {
			return orphan{}, false, q.engineErr("record a completion", err)
		}
		if !again {
			return orphan{task: t, msg: &nats.Msg{Reply: token}, key: key}, true, nil
		}
		// Someone wrote the record meanwhile: look again.
	}
	return orphan{}, false, q.engineErr("record a completion", errors.New("the record kept changing"))
}

// renewMoved restarts JetStream's ack timer of deliveries another gateway
// handed out, named by tokens, as far as they are their tasks' current
// ones; the others are not leased.
func (q *Queues) renewMoved(name string, ids []uint64, tokens []string) error {
	s, err := q.open(name, false)
	if err != nil {
		return err
	}
	var bad []uint64
	for i, id := range ids {
		ctx, cancel := q.call()
		var ok bool
		if isPackToken(tokens[i]) {
			ok, err = q.renewPacked(ctx, s, id, tokens[i])
		} else if _, _, ok, err = q.current(ctx, s, id, tokens[i]); err == nil && ok {
			_, err = q.cfg.Conn.RequestWithContext(ctx, tokens[i], progressPayload)
		}
		cancel()
		if err != nil {
			return q.engineErr("renew a lease", err)
		}
		if !ok {
			bad = append(bad, id)
		}
	}
	return notLeased(bad)
}

// nackMoved ends a failed attempt of a delivery another gateway handed
// out, named by token, if it is its task's current one.
func (q *Queues) nackMoved(req queue.NackRequest) error {
	s, err := q.open(req.Queue, false)
	if err != nil {
		return err
	}
	if isPackToken(req.Token) {
		return q.failPacked(s, req)
	}
	ctx, cancel := q.call()
	t, _, ok, err := q.current(ctx, s, req.ID, req.Token)
	cancel()
	if err != nil {
		return err
	}
	if !ok {
		return notLeased([]uint64{req.ID})
	}
	q.mu.Lock()
	q.counters(req.Queue).nacks++
	q.mu.Unlock()
	return q.fail(&lease{key: leaseKey{req.Queue, req.ID}, s: s, msg: &nats.Msg{Reply: req.Token}, task: t}, req.Error, req.RetryAfter, req.NoRetry)
}

// disown undoes adoptOrphan for a task of queue name whose results could
// not be stored (resultsFailed), or were not tried: the task runs again,
// at once, through any gateway. ok is false if a packed task could not be
// stored again, and is its pack's to do again.
func (q *Queues) disown(name string, o orphan, resultsFailed bool) (ok bool) {
	if o.packed != nil {
		// Not unmarked: the gateway holding the pack, or one fetching it
		// again, may have counted it done meanwhile, and would not run it.
		// It runs again stored alone.
		ctx, cancel := q.call()
		defer cancel()
		if err := q.storeFailed(ctx, o.packed, o.packDone, "results not stored", -1, false); err != nil {
			q.log.Warn("a packed task whose results were not stored is not stored again either; it runs again if its pack is delivered again",
				"queue", o.packed.s.queue, "task", o.task.ID, "err", err)
			return false
		}
		return true
	}
	ctx, cancel := q.call()
	defer cancel()
	if kv, err := q.deliveries(ctx); err == nil {
		// Unmarked done; marked failed if its results were not stored on
		// its last attempt, as a packed task's failure here is counted
		// (storeFailed).
		tok, _ := parseToken(o.msg.Reply) // current checked it
		if resultsFailed && o.task.Attempts >= q.policy(name).MaxAttempts && !queue.IsDeadLetterName(name) {
			_, _ = kv.Put(ctx, o.key, failedValue(tok.delivered, tok.stored))
		} else {
			_ = kv.Delete(ctx, o.key)
		}
	}
	_ = q.nak(o.msg, 0)
	return true
}
