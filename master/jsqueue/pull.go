package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
// Each request gets a reply subject of its own under its inbox, so that
// a status JetStream sends after a batch is full (for a request already
// answered) is not taken for the end of the inbox's next request.
//
// Nothing is prefetched: a pull request asks for what one get may take,
// so no task waits in a gateway for a client while another gateway's
// worker is idle. A get that gives up before JetStream has answered its
// request drops its inbox, as Fetch did: JetStream then drops the request
// for want of interest rather than deliver to it. A message that still
// comes to an inbox no get awaits is handed back at once with a nak
// (JetStream counts that delivery as an attempt, as it counts an Unget's).
//
// A get that gives up drains its inbox: the client library keeps taking
// what JetStream sent before it learnt of the unsubscription, until the
// server answers a ping sent after it, and each such message is naked.
// Gets give up by the thousand a second with many single-task workers
// (woken to look again: a task held for it, such as the tasks of a pack
// another get fetched, or its queue's first priority), and a task dropped
// in the instant of one waited for AckWait: `qbench fleet` (20 gateways,
// 1,000 workers) had a p99 of 5.5 s at a 5 s AckWait, against 1.5 s with
// the drain (SCALING.md). A worker stopped while its get waits gave up
// the same way. Only a get whose connection is reconnecting unsubscribes
// at once (see request), and a message sent in that instant waits for
// AckWait, as a dead gateway's do.

// pulls routes the messages that answer pull requests to their gets.
type pulls struct {
	nc *nats.Conn
	// back counts the deliveries naked here, never handed out.
	back *handedBack
	// elected takes JetStream's advisories of consumers' new leaders.
	elected *nats.Subscription

	mu     sync.Mutex
	idle   []*pullSlot
	bySub  map[*nats.Subscription]*pullSlot
	closed bool
}

// pullSlot is an inbox that pull requests are answered on, one at a
// time. Its fields but sub and inbox are guarded by pulls.mu.
type pullSlot struct {
	sub   *nats.Subscription
	inbox string   // ends in "."
	next  string   // the pull subject of r (stream.next)
	n     uint64   // requests sent through it
	reply string   // the reply subject of r
	r     *pullReq // the request it answers; nil when idle
	left  int      // messages JetStream may still send for r
	// retired is set when the consumer of r has a new leader: the slot
	// is kept a while, then dropped (see leaderChangeGrace).
	retired bool
}

// leaderChangeGrace is how long at least an inbox whose request a
// consumer's new leader ended (leaderElected) is kept, each message
// still sent to it naked. The old leader may still be alive, stepped down (a stopping
// qmaster hands its leaderships over), and its last messages come by
// another route than the new leader's advisory, sometimes after it: an
// inbox dropped at once lost them, and they waited out AckWait.
const leaderChangeGrace = 2 * time.Second

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

func newPulls(nc *nats.Conn, back *handedBack) *pulls {
	p := &pulls{nc: nc, back: back, bySub: make(map[*nats.Subscription]*pullSlot)}
	// Without them, a get whose request went to a consumer's leader that
	// then died waits out its whole wait (a worker's, 5s by default)
	// before it asks the new leader: a failover's gap grew by that much.
	// A client not allowed to read advisories just goes without.
	p.elected, _ = nc.Subscribe(consumerElectedPrefix+".>", p.leaderElected)
	return p
}

// consumerElectedPrefix starts the subject of JetStream's advisory that a
// consumer has a new leader: <prefix>.<stream>.<consumer>.
const consumerElectedPrefix = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED"

// leaderElected ends the requests still awaited from the consumer that an
// advisory says has a new leader: pull requests are not replicated, so
// the new leader knows none of them, and the old one (dead, cut off, or
// stepped down) answers none. Each get sends its request again at once.
// Their inboxes are dropped after leaderChangeGrace: a message the old
// leader still sends to one is naked, and is not taken for a later
// request of that inbox.
func (p *pulls) leaderElected(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, consumerElectedPrefix+".")
	if !ok {
		return
	}
	next := pullPrefix + rest
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sl := range p.bySub {
		if sl.r == nil || sl.next != next {
			continue
		}
		select {
		case sl.r.end <- jetstream.ErrConsumerLeadershipChanged:
		default:
		}
		sl.r, sl.retired = nil, true // request drops the slot
	}
}

// close ends every inbox's subscription: a message that comes later for
// a pull request still at the server waits for AckWait, as a dead
// gateway's do.
func (p *pulls) close() {
	if p.elected != nil {
		_ = p.elected.Unsubscribe()
	}
	p.mu.Lock()
	p.closed = true
	subs := make([]*nats.Subscription, 0, len(p.bySub))
	for sub := range p.bySub {
		subs = append(subs, sub)
	}
	clear(p.bySub)
	p.idle = nil
	p.mu.Unlock()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
}

// take returns an idle slot for r, which may ask for batch messages.
func (p *pulls) take(r *pullReq, next string, batch int) (*pullSlot, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, context.Canceled
	}
	var sl *pullSlot
	if n := len(p.idle); n > 0 {
		sl = p.idle[n-1]
		p.idle = p.idle[:n-1]
	}
	p.mu.Unlock()
	if sl == nil {
		sl = &pullSlot{inbox: p.nc.NewInbox() + "."}
		sub, err := p.nc.Subscribe(sl.inbox+"*", p.received)
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
	sl.n++
	sl.r, sl.next, sl.left, sl.reply = r, next, batch, sl.inbox+strconv.FormatUint(sl.n, 36)
	return sl, nil
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
			p.handBack(m.Reply)
		}
		return
	}
	r := sl.r
	if status == "" && !isAckOf(m.Reply, sl.next) {
		// Another consumer's message, sent to a request this inbox had
		// before: one a consumer's new leader still answers after the
		// old one had ended it. Not this request's (another queue's,
		// maybe): hand it back.
		if m.Reply != "" {
			p.handBack(m.Reply)
		}
		return
	}
	if status != "" {
		if m.Subject != sl.reply {
			return // a status for an earlier request, answered already
		}
		r.end <- statusErr(status, m.Header.Get("Description")) // the request's only end
		sl.r = nil
		return
	}
	r.msgs <- m
	if sl.left--; sl.left <= 0 {
		sl.r = nil // answered in full
	}
}

// handBack naks the delivery whose ack subject is reply, which no get
// takes, and counts it as not an attempt.
func (p *pulls) handBack(reply string) {
	p.back.add(reply)
	_ = p.nc.Publish(reply, nakPayload)
}

// unsubscribe drains sub, an inbox no get awaits any longer: what
// JetStream sent before the server learnt of it is naked (received).
// Not while reconnecting: the client library would subscribe the
// draining inbox again on reconnecting, and forget it after the drain
// without unsubscribing, leaving the server's interest.
func (p *pulls) unsubscribe(sub *nats.Subscription) {
	if p.nc.IsConnected() {
		_ = sub.Drain()
	} else {
		_ = sub.Unsubscribe()
	}
}

// drop ends the subscription of sl, retired, unless close has ended it.
func (p *pulls) drop(sl *pullSlot) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	delete(p.bySub, sl.sub)
	p.mu.Unlock()
	p.unsubscribe(sl.sub)
}

// pullPrefix starts the pull subject of every consumer:
// <prefix><stream>.<consumer>.
const pullPrefix = "$JS.API.CONSUMER.MSG.NEXT."

// isAckOf reports whether reply, a JetStream message's ack subject, names
// the stream and consumer whose pull subject is next: it holds
// ".<stream>.<consumer>." (without allocating, as it runs per message).
func isAckOf(reply, next string) bool {
	rest, ok := strings.CutPrefix(reply, "$JS.ACK.")
	sc := strings.TrimPrefix(next, pullPrefix) // <stream>.<consumer>
	for ok {
		i := strings.Index(rest, sc)
		if i < 0 {
			return false
		}
		end := i + len(sc)
		if (i == 0 || rest[i-1] == '.') && end < len(rest) && rest[end] == '.' {
			return true
		}
		rest = rest[i+1:]
	}
	return false
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
		case strings.Contains(d, "leadership change"), strings.Contains(d, "server shutdown"):
			// The consumer's leader stepped down, or its node is
			// stopping: the next leader takes the request sent again.
			return jetstream.ErrConsumerLeadershipChanged
		}
	}
	return fmt.Errorf("pull request: %s %s", status, descr)
}

// pull asks the consumer whose pull subject is next for up to batch
// messages: those there at once if wait is 0, else the first that comes
// within wait (then batch must be 1). It returns what came, and the error
// that ended the request, if any. A request ended by ctx or by its time
// running out returns what came meanwhile, and its inbox is dropped.
func (p *pulls) pull(ctx context.Context, next string, batch int, wait time.Duration) ([]*nats.Msg, error) {
	if wait > 0 {
		// The server ends it with a status.
		return p.request(ctx, next, batch, fmt.Appendf(nil, `{"batch":%d,"expires":%d}`, batch, wait.Nanoseconds()), wait+attemptTimeout)
	}
	return p.request(ctx, next, batch, fmt.Appendf(nil, `{"batch":%d,"no_wait":true}`, batch), attemptTimeout)
}

// pullSoon is pull for up to batch messages there at once, or, if the
// consumer counts none, those that come first within wait.
func (p *pulls) pullSoon(ctx context.Context, next string, batch int, wait time.Duration) ([]*nats.Msg, error) {
	return p.request(ctx, next, batch, fmt.Appendf(nil, `{"batch":%d,"no_wait":true,"expires":%d}`, batch, wait.Nanoseconds()), wait+attemptTimeout)
}

// request sends the pull request body to next, and waits for up to batch
// messages, or for its end, for at most timeout.
func (p *pulls) request(ctx context.Context, next string, batch int, body []byte, timeout time.Duration) ([]*nats.Msg, error) {
	r := &pullReq{msgs: make(chan *nats.Msg, batch), end: make(chan error, 1)}
	sl, err := p.take(r, next, batch)
	if err != nil {
		return nil, err
	}
	expires := time.Now().Add(timeout) // at JetStream, a little before
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var msgs []*nats.Msg
	err = p.nc.PublishRequest(next, sl.reply, body)
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
	abandoned := sl.r == r // still at the server
	switch {
	case p.closed:
	case sl.retired:
		// What still comes is naked (received) until the slot is dropped:
		// after the grace, or after the request expires, if later, in
		// case it went to the new leader before the advisory came.
		time.AfterFunc(max(leaderChangeGrace, time.Until(expires)), func() { p.drop(sl) })
	case abandoned:
		sl.r = nil
		delete(p.bySub, sl.sub)
	default:
		p.idle = append(p.idle, sl)
	}
	p.mu.Unlock()
	if abandoned {
		p.unsubscribe(sl.sub)
	}
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
