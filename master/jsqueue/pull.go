package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A gateway's gets pull from JetStream through long-lived subscriptions,
// rather than through jetstream.Consumer's Fetch, which opens and closes
// a subscription for every call: a SUB and an UNSUB sent, and the
// server's subject index changed (and its cache flushed) twice, per get.
// A pull request is answered on its reply subject, but JetStream sends
// the messages with their own subjects, so requests cannot share one
// wildcard subscription: each takes an idle inbox (a subscription) from
// a pool, and gives it back once JetStream has finished answering it.
//
// Nothing is prefetched: a pull request asks for what one get may take,
// so no task waits in a gateway for a client while another gateway's
// worker is idle. A message that comes for a pull request whose get has
// given up (its client went away, or its wait ended as the message was
// sent) is handed back at once with a nak, where with Fetch it waited
// for AckWait; JetStream counts that delivery as an attempt, as it counts
// an Unget's.

// pulls routes the messages that answer pull requests to their gets.
type pulls struct {
	nc *nats.Conn

	mu        sync.Mutex
	idle      []*pullSlot
	bySub     map[*nats.Subscription]*pullSlot
	abandoned map[*pullSlot]time.Time // slots whose get gave up, until when they may be answered
	closed    bool
}

// pullSlot is an inbox that pull requests are answered on, one at a
// time. Its fields but sub and inbox are guarded by pulls.mu.
type pullSlot struct {
	sub   *nats.Subscription
	inbox string
	r     *pullReq // the request it answers; nil when idle
	left  int      // messages JetStream may still send for r
	// gone is set when r's get has given up: what comes is handed back.
	gone bool
}

// pullReq is one pull request awaiting its messages.
type pullReq struct {
	// msgs receives the messages; it holds the whole batch, so the
	// subscriptions' callback never blocks.
	msgs chan *nats.Msg
	// end receives the status that ends the request before its batch is
	// full: nil for none left or expired, else the error.
	end chan error
}

// Pull statuses JetStream answers a pull request with (headers Status
// and Description, no data).
const (
	statusNoMessages  = "404"
	statusTimeout     = "408"
	statusConflict    = "409"
	statusNoResponder = "503"
	statusControl     = "100"
)

// nakPayload is JetStream's nak.
var nakPayload = []byte("-NAK")

func newPulls(nc *nats.Conn) *pulls {
	return &pulls{nc: nc, bySub: make(map[*nats.Subscription]*pullSlot), abandoned: make(map[*pullSlot]time.Time)}
}

// close ends every inbox's subscription: a message that comes later for
// a pull request still at the server waits for AckWait, as a dead
// gateway's do.
func (p *pulls) close() {
	p.mu.Lock()
	p.closed = true
	subs := make([]*nats.Subscription, 0, len(p.bySub))
	for sub := range p.bySub {
		subs = append(subs, sub)
	}
	clear(p.bySub)
	p.idle = nil
	clear(p.abandoned)
	p.mu.Unlock()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
}

// take returns an idle slot for r, which may ask for batch messages.
func (p *pulls) take(r *pullReq, batch int) (*pullSlot, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, context.Canceled
	}
	now := time.Now()
	var drop []*pullSlot
	for sl, until := range p.abandoned {
		// Never answered in time (its request was lost): no longer used.
		if now.After(until) {
			delete(p.abandoned, sl)
			delete(p.bySub, sl.sub)
			drop = append(drop, sl)
		}
	}
	var sl *pullSlot
	if n := len(p.idle); n > 0 {
		sl = p.idle[n-1]
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	for _, d := range drop {
		_ = d.sub.Unsubscribe()
	}
	if sl == nil {
		sl = &pullSlot{inbox: p.nc.NewInbox()}
		sub, err := p.nc.Subscribe(sl.inbox, p.received)
		if err != nil {
			return nil, err
		}
		sl.sub = sub
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = sl.sub.Unsubscribe()
		return nil, context.Canceled
	}
	p.bySub[sl.sub] = sl
	sl.r, sl.left, sl.gone = r, batch, false
	return sl, nil
}

// answered makes sl idle again once JetStream has finished with its
// request, if its get is done with it too. Called with p.mu held.
func (p *pulls) answered(sl *pullSlot) {
	sl.r = nil
	if sl.gone {
		delete(p.abandoned, sl)
		p.idle = append(p.idle, sl)
	}
}

// received takes a message that answers a pull request.
func (p *pulls) received(m *nats.Msg) {
	status := ""
	if len(m.Data) == 0 && len(m.Header) > 0 {
		status = m.Header.Get("Status")
	}
	if status == statusControl { // heartbeats are not asked for
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sl := p.bySub[m.Sub]
	if sl == nil || sl.r == nil {
		// Not (or no longer) awaited: hand it back rather than leave it
		// until AckWait.
		if status == "" && m.Reply != "" {
			_ = p.nc.Publish(m.Reply, nakPayload)
		}
		return
	}
	r := sl.r
	if status != "" {
		if !sl.gone {
			r.end <- statusErr(status, m.Header.Get("Description")) // the request's only end
		}
		p.answered(sl)
		return
	}
	sl.left--
	if sl.gone {
		_ = p.nc.Publish(m.Reply, nakPayload)
	} else {
		r.msgs <- m
	}
	if sl.left <= 0 {
		p.answered(sl)
	}
}

// statusErr is the error a pull status stands for: nil for the end of a
// request (no messages left, or it expired).
func statusErr(status, descr string) error {
	switch status {
	case statusNoMessages, statusTimeout:
		return nil
	case statusNoResponder:
		return nats.ErrNoResponders
	case statusConflict:
		d := strings.ToLower(descr)
		switch {
		case strings.Contains(d, "consumer deleted"):
			return jetstream.ErrConsumerDeleted
		case strings.Contains(d, "leadership change"):
			return jetstream.ErrConsumerLeadershipChanged
		}
	}
	return fmt.Errorf("pull request: %s %s", status, descr)
}

// pull asks s's consumer for up to batch messages: those there at once
// if wait is 0, else the first that comes within wait (then batch must
// be 1). It returns what came, and the error that ended the request, if
// any. A request ended by ctx or by its time running out returns what
// came meanwhile; messages that come later are handed back.
func (p *pulls) pull(ctx context.Context, s *stream, batch int, wait time.Duration) ([]*nats.Msg, error) {
	r := &pullReq{msgs: make(chan *nats.Msg, batch), end: make(chan error, 1)}
	sl, err := p.take(r, batch)
	if err != nil {
		return nil, err
	}
	body := fmt.Appendf(nil, `{"batch":%d,"no_wait":true}`, batch)
	timeout := attemptTimeout
	if wait > 0 {
		body = fmt.Appendf(nil, `{"batch":%d,"expires":%d}`, batch, wait.Nanoseconds())
		timeout = wait + attemptTimeout // the server ends it with a status
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var msgs []*nats.Msg
	err = p.nc.PublishRequest(s.next, sl.inbox, body)
	for err == nil && len(msgs) < batch {
		select {
		case m := <-r.msgs:
			msgs = append(msgs, m)
			continue
		case err = <-r.end:
		case <-ctx.Done():
			err = ctx.Err()
		case <-timer.C:
			err = nats.ErrTimeout
		}
		break
	}
	p.mu.Lock()
	if !p.closed && sl.r == r { // still at the server: answered later
		sl.gone = true
		until := time.Now().Add(timeout)
		p.abandoned[sl] = until
	} else if !p.closed {
		p.idle = append(p.idle, sl)
	}
	p.mu.Unlock()
	for { // what came before the get gave up is its own
		select {
		case m := <-r.msgs:
			msgs = append(msgs, m)
			continue
		default:
		}
		break
	}
	if errors.Is(err, nats.ErrTimeout) {
		err = nil // unanswered, as during a leader change: as none there
	}
	return msgs, err
}
