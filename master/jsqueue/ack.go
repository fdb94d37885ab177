package jsqueue

import (
	"context"
	"errors"
	"sync"

	"github.com/nats-io/nats.go"
)

// A consumer applies the acks it gets from one connection in order, so a
// double ack (a request, which JetStream answers once it has applied the
// ack) confirms every plain ack sent on that connection to that consumer
// before it. ackAll uses this within one call; ackRounds carries it
// across the calls of all of a gateway's clients: each call sends its
// acks but one as plain messages and queues the last, and one call at a
// time sends every queued ack, the last of them as a double ack, whose
// answer confirms them all. Calls that queue meanwhile are served by the
// next round, led by the first of them. Under load, a round confirms the
// acks of many calls, where each call cost a round trip of its own.

// ackRounds confirms one consumer's acks in rounds.
type ackRounds struct {
	mu      sync.Mutex
	queue   []*ackWaiter
	leading bool // a round is being sent, or its leader chosen
}

// ackWaiter is an ack queued for the next round.
type ackWaiter struct {
	m *nats.Msg
	// done receives the round's outcome, or errLead: lead the next
	// round.
	done chan error
}

// errLead tells a queued ack's caller to send the next round.
var errLead = errors.New("lead the next ack round")

// ackAll acks msgs, all delivered by s's consumer, and waits until
// JetStream has stored the acks: all but the last are sent as plain
// acks, and the last is confirmed in a round (see ackRounds), whose
// answer covers them. That holds only if the consumer had a leader all
// along: if the round is not answered (plain acks sent meanwhile may
// have been dropped), every ack is sent again, each confirmed (acks are
// idempotent).
func (q *Queues) ackAll(s *stream, msgs []*nats.Msg) error {
	if len(msgs) == 0 {
		return nil
	}
	last := len(msgs) - 1
	for _, m := range msgs[:last] {
		if q.cfg.Conn.Publish(m.Reply, ackPayload) != nil {
			return q.ackEach(msgs)
		}
	}
	if q.confirm(s, msgs[last]) == nil {
		return nil
	}
	return q.ackEach(msgs)
}

// ackEach acks msgs one by one, each confirmed.
func (q *Queues) ackEach(msgs []*nats.Msg) error {
	errs := make([]error, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() { errs[i] = q.ack(m) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// confirm acks m in the next round of s's consumer, and returns once
// JetStream has answered it: then every ack sent before m's queuing is
// stored too.
func (q *Queues) confirm(s *stream, m *nats.Msg) error {
	w := &ackWaiter{m: m, done: make(chan error, 1)}
	r := &s.acks
	r.mu.Lock()
	r.queue = append(r.queue, w)
	lead := !r.leading
	r.leading = true
	r.mu.Unlock()
	if !lead {
		if err := <-w.done; err != errLead {
			return err
		}
	}
	q.ackRound(r)
	return <-w.done
}

// ackRound sends the queued acks, the last as a double ack, waits for its
// answer, hands the lead to the first ack queued meanwhile (if any) and
// tells the round's callers its outcome.
func (q *Queues) ackRound(r *ackRounds) {
	r.mu.Lock()
	round := r.queue
	r.queue = nil
	r.mu.Unlock()
	var err error
	last := len(round) - 1
	for _, w := range round[:last] {
		if err = q.cfg.Conn.Publish(w.m.Reply, ackPayload); err != nil {
			break
		}
	}
	if err == nil {
		ctx, cancel := context.WithTimeout(q.ctx, attemptTimeout)
		_, err = q.cfg.Conn.RequestWithContext(ctx, round[last].m.Reply, ackPayload)
		cancel()
	}
	r.mu.Lock()
	if len(r.queue) > 0 {
		r.queue[0].done <- errLead // it takes the queue, itself first
	} else {
		r.leading = false
	}
	r.mu.Unlock()
	for _, w := range round {
		w.done <- err
	}
}
