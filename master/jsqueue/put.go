package jsqueue

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
)

// Writable reports why puts of tasks are refused now (Config.Writable),
// or nil: the server's readiness (/readyz) says it too.
func (q *Queues) Writable() error {
	if q.cfg.Writable == nil {
		return nil
	}
	return q.cfg.Writable()
}

// Put publishes req.Items to the queue's stream and returns their IDs,
// the stream sequences JetStream stored them at: increasing within a
// queue, not across queues. It returns once JetStream has stored every
// item, replicated as the stream is. The messages of one call are
// published together and their acknowledgements awaited together, so a
// batch costs about one round trip.
//
// With a max length (Config.MaxLen), a put of tasks (not results) waits
// until the batch fits, as queue.Manager.Put does, bounded by ctx (which
// may be queue.NoWait) and req.MaxWait, then returns queue.ErrQueueFull
// with nothing added. The gateway checks the stream's length before it
// publishes, and one gateway publishes one batch at a time per queue;
// puts through several gateways at once may overshoot the max length by
// the batches in flight. A waiting put polls; puts do not queue for room
// in FIFO order.
func (q *Queues) Put(ctx context.Context, req queue.PutRequest) ([]uint64, error) {
	if !req.Results {
		if err := q.Writable(); err != nil {
			return nil, err
		}
	}
	putNo := q.puts.Add(1)
	size := 0 // the pack size, decided once (packSizeOf)
	ids, err := q.put(ctx, req, putNo, &size)
	if errors.Is(err, errRemade) {
		// Deleted, or made anew through another gateway, and JetStream's
		// advisory of it never came (followAdvisories): put again, into
		// the stream opened anew. The first stored nothing: a stream
		// takes every level's subject or none, and every schedule's or
		// none. (A put of priorities alone carries the same message IDs
		// in both, besides.)
		ids, err = q.put(ctx, req, putNo, &size)
	}
	return ids, err
}

// put is Put; putNo numbers the ID its messages carry when they carry
// the gateway's own (below), made only then. size is the most tasks it
// packs in a message, decided by the first call (0: not yet).
func (q *Queues) put(ctx context.Context, req queue.PutRequest, putNo uint64, size *int) ([]uint64, error) {
	unwanted := func() bool { return req.Results && req.Unwanted != nil && req.Unwanted() }
	if unwanted() { // not made anew by open, for no one
		return nil, nil
	}
	if req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: max wait must be >= 0, got %v", queue.ErrBadArgument, req.MaxWait)
	}
	if err := checkItems(req.Items); err != nil {
		return nil, err
	}
	if err := q.checkSizes(req.Items); err != nil {
		return nil, err
	}
	if err := queue.CheckRequestID(req); err != nil {
		return nil, err
	}
	s, err := q.open(req.Queue, req.Unwanted == nil)
	if errors.Is(err, queue.ErrUnknownQueue) {
		// Results for a queue with no stream: it may have been deleted
		// just now (a map's, as it ends), and the deletion is told to
		// every gateway as it is made, maybe a little after JetStream's
		// advisory of it. Made only if they are wanted, after a pause.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.ctx.Done():
			return nil, queue.ErrClosed
		case <-time.After(unavailablePause):
		}
		if unwanted() {
			return nil, nil
		}
		s, err = q.open(req.Queue, true)
	}
	if err != nil {
		return nil, err
	}
	if len(req.Items) == 0 {
		return []uint64{}, nil
	}
	if q.cfg.MaxLen > 0 && !req.Results && !queue.IsDeadLetterName(req.Queue) {
		unlock, err := q.waitRoom(ctx, s, req)
		if err != nil {
			return nil, err
		}
		defer unlock()
	}
	firstLevel, err := q.openLevelsOf(s, req.Items)
	if firstLevel {
		defer q.wakeAll(s) // once the task is stored, or the put failed after making it
	}
	if err != nil {
		return nil, err
	}
	if due := dueLater(req.Items, time.Now()); !due.IsZero() && !req.Results {
		return q.putDelayed(s, req, due)
	}
	msgs := make([]*nats.Msg, len(req.Items))
	for i, it := range req.Items {
		m := &nats.Msg{Subject: s.subject, Data: it.Payload}
		if it.ReplyTo != "" {
			m.Header = nats.Header{hdrReplyTo: []string{it.ReplyTo}}
		}
		if it.Priority > 0 { // its header keeps it out of packs
			m.Subject = levelSubject(s.subject, it.Priority)
			if m.Header == nil {
				m.Header = nats.Header{}
			}
			m.Header.Set(hdrPriority, strconv.Itoa(it.Priority))
		}
		if it.Key != "" {
			// JetStream stores a message with an ID it saw within the
			// stream's Duplicates window once, and answers a repeat with
			// the first one's sequence: the task's ID.
			if m.Header == nil {
				m.Header = nats.Header{}
			}
			m.Header.Set(jetstream.MsgIDHeader, it.Key)
		}
		msgs[i] = m
	}
	keyed := keyedMsgs(req.Items, msgs)
	var counts []int
	if *size == 0 && len(msgs) > 1 {
		// Decided now, just before the publish: a record of it
		// (packSizeOf) must last as long as the messages' IDs.
		if *size, err = q.packSizeOf(req, s); err != nil {
			return nil, err
		}
	}
	var order []int // of the items, as packResults laid them out
	switch {
	case req.Results && hasTokens(req.ResultsOf, len(msgs)):
		// Whatever --pack says: every gateway must lay them out alike.
		msgs, counts, order = packResults(s.subject, msgs, req.ResultsOf.Tasks, q.maxMessage())
		tasks := make([]queue.Task, len(order))
		for k, i := range order {
			tasks[k] = req.ResultsOf.Tasks[i]
		}
		req.ResultsOf.Tasks = tasks
	case *size <= 1 || len(msgs) <= 1:
	default:
		msgs, counts = packMsgs(s.subject, msgs, *size, q.maxMessage())
	}
	// Priorities alone, not results: the put may be made again (Put).
	allLevels := !req.Results && !slices.ContainsFunc(req.Items, func(it queue.Item) bool { return it.Priority == 0 })
	rid := req.RequestID
	switch {
	case rid != "":
	case req.Results && resultsMsgIDs(msgs, counts, len(req.Items), req.ResultsOf):
		// Each message has the ID of its results' deliveries.
	case counts != nil || len(msgs) == 1 || allLevels:
		// A packed put, or a put of one message, gets IDs of the
		// gateway's own: it may then be sent again when its stream's
		// leader dies with its acks (publish), and JetStream stores none
		// of it twice. What they cost: each node remembers each
		// message's ID for the dedup window, which for a message a task
		// of a batched put (--pack 1) cost 12% of the tasks/s; a put of
		// one message pays a round trip for it as well. A put of
		// priorities alone may be made again (Put).
		rid = q.putIDs + strconv.FormatUint(putNo, 36)
	}
	if rid != "" {
		requestMsgIDs(msgs, counts, rid)
	}
	pctx, cancel := q.call()
	defer cancel()
	var replaced func() bool
	if allLevels || req.Results {
		// A stream made anew takes a level's subject once a gateway
		// opens the level in it (openLevel). A put with tasks of level 0
		// too, which every stream of the queue takes, is not made again:
		// it waits out the request timeout as before. Results whose
		// queue was deleted (a map's that ended) are found so at once,
		// not after the request timeout, and may go nowhere (below).
		replaced = q.replacedSince(pctx, s)
	}
	ids, dup, err := q.publishDedup(pctx, msgs, replaced)
	resent := false
	for round := 1; req.Results && errors.Is(err, queue.ErrUnavailable) && allKeyed(msgs) && ctx.Err() == nil && q.ctx.Err() == nil; round++ {
		// Results are never dropped, unless unwanted: the server would
		// put them again as a new put, under new IDs, and so store twice
		// those the first one stored. Sent again here under theirs, none
		// is, until ctx (the server's) ends.
		select {
		case <-ctx.Done():
			continue
		case <-q.ctx.Done():
			continue
		case <-time.After(unavailablePause):
		}
		if unwanted() {
			// Its stream deleted since their tasks were put (a map's
			// results queue, when it ends; the deletion is told to
			// every gateway as it is made): they go nowhere.
			return nil, nil
		}
		if round == 1 {
			q.log.Warn("results held until their queue takes them", "queue", req.Queue, "messages", len(msgs), "err", err)
		}
		// Its stream may have been deleted: made anew, as the server's
		// next put would.
		q.forget(req.Queue)
		if _, err = q.open(req.Queue, true); err != nil {
			continue
		}
		rctx, rcancel := q.call()
		ids, dup, err = q.publishDedup(rctx, msgs, nil)
		rcancel()
		resent = true
	}
	if resent {
		dup = nil // what an earlier round stored is this put's (publishDedup)
	}
	if err != nil {
		// The stream may have been deleted through another gateway: open
		// it anew next time.
		q.forget(req.Queue)
		return nil, err
	}
	s.notePuts(msgs, ids)
	if req.Repeats != nil {
		*req.Repeats = keyRepeats(msgs, dup, keyed)
	}
	if dup != nil && keyed != nil {
		q.keyedRepeatIDs(s, msgs, dup, keyed, ids)
	}
	if counts != nil {
		if extra := packedExtra(counts, dup); extra > 0 {
			q.countPacked(s, extra)
		}
		ids = packedIDs(ids, counts, len(req.Items))
	}
	if order != nil {
		inOrder := make([]uint64, len(ids))
		for k, i := range order {
			inOrder[i] = ids[k]
		}
		ids = inOrder
	}
	return ids, nil
}

// keyedRepeatIDs sets, in ids, the IDs of the tasks that keyed messages
// JetStream had stored before (dup) hold: JetStream answers a repeat with
// the first message's sequence, which is not its task's ID when that was
// a delayed put's (its schedule). A message gone since keeps its
// sequence: the ID a put without a delay gave its task, now done (a
// delayed task's schedule, gone once it came due, cannot be told from
// it: SCHEDULING.md). The reads, one per repeated key, are made a few at
// a time: a repeat is a retried put, rare, but may be of many keys.
func (q *Queues) keyedRepeatIDs(s *stream, msgs []*nats.Msg, dup []bool, keyed map[*nats.Msg]bool, ids []uint64) {
	var repeats []int
	for k, m := range msgs {
		if dup[k] && keyed[m] {
			repeats = append(repeats, k)
		}
	}
	ctx, cancel := q.call()
	defer cancel()
	n, err := eachAtOnce(len(repeats), maxConcurrentClaims, func(i int) error {
		k := repeats[i]
		id, found, err := storedTaskID(ctx, s, ids[k])
		if found {
			ids[k] = id
		}
		return err
	})
	if n > 0 {
		q.log.Warn("the IDs of repeated keys' tasks not read; their sequences are answered", "queue", s.queue, "keys", n, "err", err)
	}
}

// keyedMsgs returns the messages of items that carry an idempotency key
// (their IDs), or nil if none does. Packing leaves them plain, so they are
// the messages published.
func keyedMsgs(items []queue.Item, msgs []*nats.Msg) map[*nats.Msg]bool {
	var keyed map[*nats.Msg]bool
	for i := range items {
		if items[i].Key != "" {
			if keyed == nil {
				keyed = make(map[*nats.Msg]bool)
			}
			keyed[msgs[i]] = true
		}
	}
	return keyed
}

// keyRepeats counts the keyed messages JetStream had stored before this
// put (dup, as publishDedup says: nil if it cannot tell).
func keyRepeats(msgs []*nats.Msg, dup []bool, keyed map[*nats.Msg]bool) int {
	n := 0
	for k, m := range msgs {
		if k < len(dup) && dup[k] && keyed[m] {
			n++
		}
	}
	return n
}

// packedExtra returns the tasks that the packs among a put's messages
// carried beyond one each (counts are packMsgs'), but for the messages
// JetStream had stored before this put (dup, as publish says): a put
// sent again adds nothing to the queue's Puts.
func packedExtra(counts []int, dup []bool) int {
	extra := 0
	for i, n := range counts {
		if n > 1 && (dup == nil || !dup[i]) {
			extra += n - 1
		}
	}
	return extra
}

// resultsIDPrefix starts the message IDs of results (resultsMsgIDs).
const resultsIDPrefix = queue.ReservedKeyPrefix + "results\x00"

// resultsMsgIDs gives each message of a put of the results of of.Tasks
// (items of them), packed as counts say (nil: none), an ID every gateway
// derives alike from the deliveries whose results it carries, and
// reports whether it did: not if a task has no delivery token. A result
// stored through two gateways (the worker's connection lost after the
// first stored it, and before it acked; the worker then sends it again
// through the next) is so kept once within the dedup window, as long as
// both pack it alike: alone, or with the same others. The ID hashes the tasks' queue, and
// each task's ID, delivery token and stored time, in order: a packed
// task's token names its delivery only within its stream, and a queue
// deleted and made again numbers its tasks and deliveries from 1 again.
func resultsMsgIDs(msgs []*nats.Msg, counts []int, items int, of queue.ResultsOf) bool {
	if !hasTokens(of, items) {
		return false
	}
	var b []byte
	start := 0
	for i, m := range msgs {
		n := 1
		if counts != nil && counts[i] > 0 {
			n = counts[i]
		}
		h := sha256.New()
		b = binary.AppendUvarint(b[:0], uint64(len(of.Queue)))
		h.Write(append(b, of.Queue...))
		for _, t := range of.Tasks[start : start+n] {
			b = binary.BigEndian.AppendUint64(b[:0], t.ID)
			b = binary.BigEndian.AppendUint64(b, uint64(t.Enqueued.UnixNano()))
			b = binary.AppendUvarint(b, uint64(len(t.Token)))
			h.Write(append(b, t.Token...))
		}
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(jetstream.MsgIDHeader, resultsIDPrefix+base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16]))
		start += n
	}
	return true
}

// hasTokens reports whether of names the delivery of each of the items
// results: their messages then get IDs of them (resultsMsgIDs).
func hasTokens(of queue.ResultsOf, items int) bool {
	return len(of.Tasks) == items && !slices.ContainsFunc(of.Tasks, func(t queue.Task) bool { return t.Token == "" })
}

// packResults lays out msgs, the results of tasks (one each, alike), by
// what a gateway settles at once, a record write or an ack: the results
// of one packed delivery's tasks share a message (or several, at MaxPack
// or maxBytes), sorted by task, wherever they are in the completion; a
// plain delivery's result has one of its own. order[k] is the index in
// msgs of the k-th result laid out. So a completion's messages, and
// their IDs, depend only on which deliveries it completes: a gateway
// that dies partway through settling a completion has settled whole
// deliveries, and the next, sent the completion again, refuses those and
// stores the others' results in the messages the first one did, which
// JetStream's dedup window drops. Packed by position in the completion,
// a refused delivery moved the others' results into messages of new IDs,
// stored twice (found by a user's sweep: 9 of 60,000 results twice after
// a kill -9 of a worker's gateway).
func packResults(subject string, msgs []*nats.Msg, tasks []queue.Task, maxBytes int) (out []*nats.Msg, counts, order []int) {
	type delivery struct{ seq, delivered uint64 }
	var groups [][]int // indices into msgs, by first appearance
	byDelivery := make(map[delivery]int)
	for i, t := range tasks {
		seq, delivered, packed := packDeliveryOf(t.ID, t.Token)
		if !packed {
			groups = append(groups, []int{i}) // acked alone
			continue
		}
		d := delivery{seq, delivered}
		g, ok := byDelivery[d]
		if !ok {
			g = len(groups)
			byDelivery[d] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], i)
	}
	order = make([]int, 0, len(msgs))
	var run []*nats.Msg
	for _, g := range groups {
		slices.SortFunc(g, func(a, b int) int { return cmp.Compare(tasks[a].ID, tasks[b].ID) })
		run = run[:0]
		for _, i := range g {
			run = append(run, msgs[i])
		}
		o, c := packMsgs(subject, run, MaxPack, maxBytes)
		out, counts = append(out, o...), append(counts, c...)
		order = append(order, g...)
	}
	return out, counts, order
}

// unavailablePause is how long a put of results waits before it is sent
// again after the queues were unavailable for a whole request timeout.
const unavailablePause = 250 * time.Millisecond

// requestMsgIDs gives each message of a put with the request ID rid that
// has no key a Nats-Msg-Id: the ID and the range of the put's items it
// carries, after queue.RequestKey's prefix, which no item key has (each
// key is its task's Nats-Msg-Id). The put sent again, packed alike, has
// the same IDs, and JetStream stores none of it twice; packed otherwise (through a gateway
// with another --pack), its ranges differ, and it is stored again rather
// than taken for messages that carry other items. counts are packMsgs'
// (nil: none packed).
func requestMsgIDs(msgs []*nats.Msg, counts []int, rid string) {
	rid = queue.RequestKey(rid)
	start := 0
	for i, m := range msgs {
		n := 1
		if counts != nil && counts[i] > 0 {
			n = counts[i]
		}
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			m.Header.Set(jetstream.MsgIDHeader, rid+"/"+strconv.Itoa(start)+"+"+strconv.Itoa(n))
		}
		start += n
	}
}

// waitRoom waits until req's batch fits in s's max length, and returns
// with s's put lock held, to be released once the batch is published.
func (q *Queues) waitRoom(ctx context.Context, s *stream, req queue.PutRequest) (unlock func(), err error) {
	if len(req.Items) > q.cfg.MaxLen {
		return nil, queue.ErrQueueFull
	}
	var timedOut <-chan time.Time
	if req.MaxWait > 0 {
		timer := time.NewTimer(req.MaxWait)
		defer timer.Stop()
		timedOut = timer.C
	}
	backoff := 10 * time.Millisecond
	for {
		s.putMu.Lock()
		rctx, cancel := q.call()
		si, err := streamInfo(rctx, s.st, jetstream.WithSubjectFilter(packSubjects(s.subject)))
		cancel()
		if err != nil {
			s.putMu.Unlock()
			if isGone(err) {
				q.forget(req.Queue)
			}
			return nil, q.engineErr("put "+req.Queue, err)
		}
		// Less the tasks of packs held here that are done already: their
		// messages still carry them. (Another gateway's are counted.)
		stored := max(0, int(storedTasks(si.State))-q.heldHere(req.Queue, time.Now()).settled)
		if stored+len(req.Items) <= q.cfg.MaxLen {
			return s.putMu.Unlock, nil
		}
		s.putMu.Unlock()
		if ctx.Err() != nil {
			return nil, queue.ErrQueueFull
		}
		select {
		case <-ctx.Done():
			return nil, queue.ErrQueueFull
		case <-timedOut:
			return nil, queue.ErrQueueFull
		case <-q.ctx.Done():
			return nil, queue.ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// publish stores msgs and returns their stream sequences. While the
// stream has no leader (no responders: nothing was stored) it tries
// again, within the request timeout.
//
// A batch whose every message has an ID (a key) is also sent again when
// its acks stop coming for attemptTimeout: its leader died with them, and
// JetStream stores each message once however often it is sent, so the
// successor takes the batch at once instead of the put waiting out the
// whole request timeout (the failover gap's largest part; qbench
// failover). Without IDs a second send could store the tasks twice, so
// the put waits, and then fails.
func (q *Queues) publish(ctx context.Context, msgs []*nats.Msg) ([]uint64, error) {
	ids, _, err := q.publishDedup(ctx, msgs, nil)
	return ids, err
}

// publishDedup is publish, and also says which messages JetStream had
// stored before this call, by their IDs (dup[i]; nil: none).
func (q *Queues) publishDedup(ctx context.Context, msgs []*nats.Msg, replaced func() bool) (ids []uint64, dup []bool, err error) {
	ids, dup, sends, err := q.publishSends(ctx, msgs, replaced)
	if sends > 1 {
		// A message an earlier send of this put stored, its ack lost, is
		// a duplicate now: this put's, not an earlier one's. (Which, it
		// cannot tell: it counts all as its own.)
		dup = nil
	}
	return ids, dup, err
}

// publishSends is publish, and also says which messages JetStream had
// stored before the last of its sends, by their IDs (dup[i]; nil: none):
// before this call, or by an earlier send of it (sends > 1).
//
// replaced, if not nil, is asked once, at the first send that no stream
// answered, whether the queue's stream is gone or was made anew since it
// was opened (replacedSince): then publishSends returns errRemade at once
// rather than wait out the request timeout for a stream that takes
// subjects the new one may not.
func (q *Queues) publishSends(ctx context.Context, msgs []*nats.Msg, replaced func() bool) (ids []uint64, dup []bool, sends int, err error) {
	rctx, cancel := context.WithTimeout(ctx, q.cfg.RequestTimeout)
	defer cancel()
	gone := func(err error) bool {
		if replaced == nil || !noStream(err) {
			return false
		}
		check := replaced
		replaced = nil
		return check()
	}
	if allKeyed(msgs) {
		// Each send leaves its futures pending in the client's bounded
		// async-publish window until they time out: the third send waits
		// out the rest of the request timeout instead of sending again.
		err = retry(rctx, func() (bool, error) {
			var stalled bool
			idle := attemptTimeout
			if sends++; sends >= maxKeyedSends {
				idle = q.cfg.RequestTimeout
			}
			ids, dup, stalled, err = q.publishOnce(rctx, msgs, idle)
			if gone(err) {
				return false, errRemade
			}
			if stalled {
				if werr := q.Writable(); werr != nil {
					return false, werr // the embedded node's store broke under it
				}
			}
			// A message sent before and still being stored is stored
			// once: sent again after it is, it gets its sequence.
			return transient(err) || idInProcess(err) || stalled && rctx.Err() == nil && sends < maxKeyedSends, err
		})
	} else {
		err = retry(rctx, func() (bool, error) {
			ids, dup, _, err = q.publishOnce(rctx, msgs, q.cfg.RequestTimeout)
			if gone(err) {
				return false, errRemade
			}
			return transient(err), err
		})
	}
	if errors.Is(err, store.ErrDiskFull) {
		return nil, nil, sends, err
	}
	if err != nil {
		return nil, nil, sends, q.engineErr("put", err)
	}
	return ids, dup, sends, nil
}

// errRemade says that a put found no stream for its messages because the
// queue's stream was deleted, and maybe made anew, since this gateway
// opened it: nothing was stored.
var errRemade = errors.New("the queue's stream was deleted or made anew")

// noStream reports whether err says that no stream took a message: none
// takes its subject, or its stream has no leader at the moment.
func noStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse)
}

// replacedSince returns a check of whether s's stream is gone, or is
// another stream of the same name (made anew), since s was opened. The
// gateway learns of a deleted stream from JetStream's advisory, but
// JetStream can drop that advisory: the deleted stream's loop may quit
// before it sends it. A stream that does not answer within
// replacedCheckTimeout (it has no leader at the moment) counts as the
// same. Puts of delayed tasks and of priorities ask it, as their subjects
// are not those of every stream of the queue.
func (q *Queues) replacedSince(ctx context.Context, s *stream) func() bool {
	return func() bool {
		actx, cancel := context.WithTimeout(ctx, replacedCheckTimeout)
		defer cancel()
		return q.replaced(actx, s)
	}
}

// replaced reports whether s's stream is gone, or is another stream of
// the same name, since s was opened; false if JetStream does not answer
// within ctx.
func (q *Queues) replaced(ctx context.Context, s *stream) bool {
	st, err := q.js.Stream(ctx, streamName(s.queue))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return true
	}
	return err == nil && !st.CachedInfo().Created.Equal(s.st.CachedInfo().Created)
}

// replacedCheckTimeout bounds replacedSince's look at the stream, which a
// healthy node answers in about a millisecond.
const replacedCheckTimeout = 250 * time.Millisecond

// maxKeyedSends bounds how often publish sends a stalled keyed batch.
const maxKeyedSends = 3

// publishOnce sends msgs and waits for their acks, for at most idle
// between two (stalled says it stopped for that). dup[i] says JetStream
// had stored msgs[i] before, by its ID (nil: none).
func (q *Queues) publishOnce(ctx context.Context, msgs []*nats.Msg, idle time.Duration) (ids []uint64, dup []bool, stalled bool, err error) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := q.js.PublishMsgAsync(m)
		if err != nil {
			return nil, nil, false, err
		}
		futures[i] = f
	}
	timer := time.NewTimer(idle)
	defer timer.Stop()
	ids = make([]uint64, len(msgs))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			ids[i] = ack.Sequence
			if ack.Duplicate {
				if dup == nil {
					dup = make([]bool, len(msgs))
				}
				dup[i] = true
			}
			timer.Reset(idle)
		case err := <-f.Err():
			if transient(err) && i > 0 && !allKeyed(msgs) {
				// Some of the batch is stored: trying it all again would
				// store those twice (unless every one has an ID JetStream
				// deduplicates), so the error must not be transient.
				return nil, nil, false, fmt.Errorf("%v (after %d of %d tasks were stored)", err, i, len(msgs))
			}
			return nil, nil, false, err
		case <-ctx.Done():
			return nil, nil, false, ctx.Err()
		case <-q.ctx.Done():
			return nil, nil, false, queue.ErrClosed
		case <-timer.C:
			return nil, nil, true, context.DeadlineExceeded
		}
	}
	return ids, dup, false, nil
}

// allKeyed reports whether every message has an ID (Nats-Msg-Id), so
// that JetStream stores each once however often it is published.
func allKeyed(msgs []*nats.Msg) bool {
	for _, m := range msgs {
		if m.Header.Get(jetstream.MsgIDHeader) == "" {
			return false
		}
	}
	return true
}

// maxErrorHeader bounds the last error a moved task's header carries: a
// worker's error text has no bound, and a task near NATS's max_payload
// must still fit its message, headers and all (headerRoom), or it could
// be moved nowhere, not even to the dead-letter queue.
const maxErrorHeader = 512

// cutError returns e cut to maxErrorHeader bytes, at a character's start.
func cutError(e string) string {
	if len(e) <= maxErrorHeader {
		return e
	}
	const more = "…"
	i := maxErrorHeader - len(more)
	for i > 0 && !utf8.RuneStart(e[i]) {
		i--
	}
	return e[:i] + more
}

// movedMsg is the message that carries t, taken from a queue, into
// another stream: its ID, first put time, reply queue and last error go
// with it, and attempts, if kept, as a base for the new stream's count.
func movedMsg(subj string, t queue.Task, attempts int) *nats.Msg {
	h := nats.Header{
		hdrID:       []string{strconv.FormatUint(t.ID, 10)},
		hdrEnqueued: []string{t.Enqueued.UTC().Format(time.RFC3339Nano)},
	}
	if t.ReplyTo != "" {
		h.Set(hdrReplyTo, t.ReplyTo)
	}
	if t.LastError != "" {
		h.Set(hdrError, cutError(t.LastError))
	}
	if attempts > 0 {
		h.Set(hdrAttempts, strconv.Itoa(attempts))
	}
	if t.Priority > 0 {
		h.Set(hdrPriority, strconv.Itoa(t.Priority))
	}
	return &nats.Msg{Subject: subj, Header: h, Data: t.Payload}
}

// taskOf reads the task a stored message carries. delivered is
// JetStream's delivery count, 0 for a message that was not delivered.
func taskOf(seq uint64, stored time.Time, h nats.Header, data []byte, delivered uint64) queue.Task {
	t := queue.Task{ID: seq, Payload: data, Attempts: int(delivered), Enqueued: stored}
	if len(h) == 0 {
		return t
	}
	if v := h.Get(hdrID); v != "" {
		if id, err := strconv.ParseUint(v, 10, 64); err == nil {
			t.ID = id
		}
	}
	if v := h.Get(hdrEnqueued); v != "" {
		if at, err := time.Parse(time.RFC3339Nano, v); err == nil {
			t.Enqueued = at
		}
	}
	if v := h.Get(hdrAttempts); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			t.Attempts += n
		}
	}
	t.ReplyTo = h.Get(hdrReplyTo)
	t.LastError = h.Get(hdrError)
	if v := h.Get(hdrPriority); v != "" {
		if p, err := strconv.Atoi(v); err == nil && p > 0 && p <= queue.MaxPriority {
			t.Priority = p
		}
	}
	return t
}

// headerRoom is what a message's headers may take of the most a NATS
// message carries: a task's payload, or a pack's, may have the rest.
const headerRoom = 1024

// maxMessage is the most bytes of payload a message of this gateway's
// connection may carry (its servers' max_payload, less headerRoom), or 0
// if not known (not connected).
func (q *Queues) maxMessage() int {
	mp := q.cfg.Conn.MaxPayload()
	if mp <= headerRoom {
		return 0
	}
	return int(mp) - headerRoom
}

// MaxItem is the most bytes of one item (master.ItemLimiter): NATS's
// max_payload, less qm's headers.
func (q *Queues) MaxItem() int { return q.maxMessage() }

// checkSizes refuses items too large for one NATS message, which the
// servers would refuse however often they were sent.
func (q *Queues) checkSizes(items []queue.Item) error {
	limit := q.maxMessage()
	if limit == 0 {
		return nil
	}
	for _, it := range items {
		if len(it.Payload) > limit {
			return fmt.Errorf("%w: an item of %d bytes; the NATS servers behind this gateway take at most %d (their max_payload, less %d for qm's headers)",
				queue.ErrBadArgument, len(it.Payload), limit, headerRoom)
		}
	}
	return nil
}
