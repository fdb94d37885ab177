package jsqueue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// Put publishes req.Items to the queue's stream and returns their IDs,
// the stream sequences JetStream stored them at: increasing within a
// queue, not across queues. It returns once JetStream has stored every
// item, replicated as the stream is. The messages of one call are
// published together and their acknowledgements awaited together, so a
// batch costs about one round trip.
//
// A queue's max length is not supported here (New's caller refuses it),
// so a put never waits for room, and ctx, which bounds only that wait
// (it may be queue.NoWait), is not used: the request timeout bounds the
// put.
func (q *Queues) Put(_ context.Context, req queue.PutRequest) ([]uint64, error) {
	if req.MaxWait < 0 {
		return nil, fmt.Errorf("%w: max wait must be >= 0, got %v", queue.ErrBadArgument, req.MaxWait)
	}
	if err := checkItems(req.Items); err != nil {
		return nil, err
	}
	s, err := q.open(req.Queue, true)
	if err != nil {
		return nil, err
	}
	if len(req.Items) == 0 {
		return []uint64{}, nil
	}
	msgs := make([]*nats.Msg, len(req.Items))
	for i, it := range req.Items {
		m := &nats.Msg{Subject: s.subject, Data: it.Payload}
		if it.ReplyTo != "" {
			m.Header = nats.Header{hdrReplyTo: []string{it.ReplyTo}}
		}
		msgs[i] = m
	}
	ctx, cancel := q.call()
	defer cancel()
	ids, err := q.publish(ctx, msgs)
	if err != nil {
		// The stream may have been deleted through another gateway: open
		// it anew next time.
		q.forget(req.Queue)
	}
	return ids, err
}

// publish stores msgs and returns their stream sequences. While the
// stream has no leader (no responders: nothing was stored) it tries
// again, within the request timeout.
func (q *Queues) publish(ctx context.Context, msgs []*nats.Msg) ([]uint64, error) {
	rctx, cancel := context.WithTimeout(ctx, q.cfg.RequestTimeout)
	defer cancel()
	var ids []uint64
	err := retryingTransient(rctx, func() (err error) { ids, err = q.publishOnce(ctx, msgs); return err })
	if err != nil {
		return nil, q.engineErr("put", err)
	}
	return ids, nil
}

func (q *Queues) publishOnce(ctx context.Context, msgs []*nats.Msg) ([]uint64, error) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		f, err := q.js.PublishMsgAsync(m)
		if err != nil {
			return nil, err
		}
		futures[i] = f
	}
	timer := time.NewTimer(q.cfg.RequestTimeout)
	defer timer.Stop()
	ids := make([]uint64, len(msgs))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			ids[i] = ack.Sequence
		case err := <-f.Err():
			if transient(err) && i > 0 {
				// Some of the batch is stored: trying it all again would
				// store those twice, so the error must not be transient.
				return nil, fmt.Errorf("%v (after %d of %d tasks were stored)", err, i, len(msgs))
			}
			return nil, err
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-q.ctx.Done():
			return nil, queue.ErrClosed
		case <-timer.C:
			return nil, context.DeadlineExceeded
		}
	}
	return ids, nil
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
		h.Set(hdrError, t.LastError)
	}
	if attempts > 0 {
		h.Set(hdrAttempts, strconv.Itoa(attempts))
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
	return t
}
