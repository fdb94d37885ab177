package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/queue"
)

// The gateways of one cluster ask each other what each alone knows (the
// clients connected to it; the tasks Python clients took through it and
// have not marked done) over core NATS request and reply, which stores
// nothing. A question on a topic goes to every gateway answering that
// topic, this one included; or, named by its ID, to one gateway.
//
// The asker cannot know how many gateways there are, so it remembers
// those that answered, or said hello (greet), within askRemember: it waits until each of them
// has answered (up to askPatience after the last answer, for one paused
// by its collector or a busy route), then askQuiet more for gateways new
// to it. A gateway stopped is waited for askPatience, for askRemember.

const (
	// askSubjects is the questions' subjects' prefix; the topic follows,
	// then, for a question to one gateway, its ID.
	askSubjects = "qm.ask."
	// hdrGateway names the answering gateway in its answer.
	hdrGateway  = "Qm-Gateway"
	askQuiet    = 50 * time.Millisecond
	askPatience = time.Second
	askRemember = time.Minute
	// askFirst bounds the wait for the first answer, this gateway's own.
	askFirst = 2 * time.Second

	// The gateways say hello as they start and every helloEvery, and
	// goodbye as they close, so that each knows the others before they
	// first answer it: an ask waits for a gateway it heard from as for
	// one that answered. Without, a first ask missed any gateway slower
	// than askQuiet, such as one with a busy route.
	helloSubject = "qm.gateway.hello"
	byeSubject   = "qm.gateway.bye"
	helloEvery   = askRemember / 3
)

// answering is what a gateway keeps of the questions it answers and
// asks: its subscriptions, whose callbacks Close waits for, and the
// gateways that answered it lately.
type answering struct {
	mu     sync.Mutex
	closed bool
	subs   []*nats.Subscription
	calls  sync.WaitGroup       // callbacks running
	seen   map[string]time.Time // gateways' IDs, when each last answered
}

// Answer makes this gateway answer every question on topic, to all
// gateways or to it alone, with f's answer to it, until Close. f runs on
// the subscription's goroutine, one question at a time.
func (q *Queues) Answer(topic string, f func(question []byte) []byte) error {
	a := &q.answering
	respond := func(m *nats.Msg) {
		a.mu.Lock()
		if a.closed || m.Reply == "" {
			a.mu.Unlock()
			return
		}
		a.calls.Add(1)
		a.mu.Unlock()
		defer a.calls.Done()
		reply := nats.NewMsg(m.Reply)
		reply.Header.Set(hdrGateway, q.gatewayID)
		reply.Data = f(m.Data)
		if err := q.cfg.Conn.PublishMsg(reply); err != nil {
			q.log.Warn("a gateway's question not answered", "topic", topic, "err", err)
		}
	}
	for _, subj := range []string{askSubjects + topic, askSubjects + topic + "." + q.gatewayID} {
		sub, err := q.cfg.Conn.Subscribe(subj, respond)
		if err != nil {
			return q.engineErr("answer "+topic, err)
		}
		a.mu.Lock()
		a.subs = append(a.subs, sub)
		a.mu.Unlock()
	}
	return nil
}

// greet makes this gateway known to the others (helloSubject), and the
// others to it, until ctx ends. It runs on q.bg.
func (q *Queues) greet(ctx context.Context) {
	a := &q.answering
	hello := func() { _ = q.cfg.Conn.Publish(helloSubject, []byte(q.gatewayID)) } // lost, it is sent again
	for subj, heard := range map[string]func(id string){
		// One new to this gateway may not have heard its hello (it
		// subscribed after): it says hello again.
		helloSubject: func(id string) {
			if q.answered(id) {
				hello()
			}
		},
		byeSubject: q.leftAsking,
	} {
		sub, err := q.cfg.Conn.Subscribe(subj, func(m *nats.Msg) {
			if id := string(m.Data); id != q.gatewayID && id != "" {
				heard(id)
			}
		})
		if err != nil {
			q.log.Warn("the other gateways not heard from", "err", err)
			continue
		}
		a.mu.Lock()
		a.subs = append(a.subs, sub)
		a.mu.Unlock()
	}
	tick := time.NewTicker(helloEvery)
	defer tick.Stop()
	for {
		hello()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// leftAsking forgets gateway id, which said it closes.
func (q *Queues) leftAsking(id string) {
	a := &q.answering
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.seen, id)
}

// closeAnswering ends the answers, and waits for those being made.
func (q *Queues) closeAnswering() {
	a := &q.answering
	_ = q.cfg.Conn.Publish(byeSubject, []byte(q.gatewayID))
	a.mu.Lock()
	a.closed = true
	subs := a.subs
	a.mu.Unlock()
	for _, sub := range subs {
		_ = sub.Unsubscribe()
	}
	a.calls.Wait()
}

// Ask asks every gateway answering topic (Answer), this one included,
// and calls each with each answer, and the ID of the gateway that gave it
// (for AskGateway), as they come, until each gateway that answered lately
// has, and none came for askQuiet (see above), or ctx ended. It fails if
// none came within askFirst.
func (q *Queues) Ask(ctx context.Context, topic string, question []byte, each func(gateway string, answer []byte)) error {
	nc := q.cfg.Conn
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return q.engineErr("ask "+topic, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(askSubjects+topic, inbox, question); err != nil {
		return q.engineErr("ask "+topic, err)
	}
	expected := q.recentGateways()
	answers := 0
	wait := askFirst
	for {
		wctx, cancel := context.WithTimeout(ctx, wait)
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		if err == nil && m.Header.Get("Status") != "" {
			err = fmt.Errorf("status %s %s", m.Header.Get("Status"), m.Header.Get("Description")) // no responders
		}
		if err == nil {
			id := m.Header.Get(hdrGateway)
			each(id, m.Data)
			answers++
			delete(expected, id)
			q.answered(id)
			wait = askQuiet
			if len(expected) > 0 {
				wait = askPatience
			}
			continue
		}
		if answers > 0 && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
			return nil
		}
		return fmt.Errorf("%w: this gateway could not ask the others (%s): %w", queue.ErrUnavailable, topic, err)
	}
}

// AskGateway asks the gateway of ID gateway alone (as Ask named it).
func (q *Queues) AskGateway(ctx context.Context, topic, gateway string, question []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, askFirst)
	defer cancel()
	m, err := q.cfg.Conn.RequestWithContext(ctx, askSubjects+topic+"."+gateway, question)
	if err != nil {
		return nil, fmt.Errorf("%w: gateway %s not asked (%s): %w", queue.ErrUnavailable, gateway, topic, err)
	}
	return m.Data, nil
}

// GatewayID is this gateway's ID in its answers.
func (q *Queues) GatewayID() string { return q.gatewayID }

// recentGateways returns the IDs of the gateways that answered within
// askRemember, and forgets the others.
func (q *Queues) recentGateways() map[string]bool {
	a := &q.answering
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make(map[string]bool, len(a.seen))
	for id, at := range a.seen {
		if time.Since(at) > askRemember {
			delete(a.seen, id)
			continue
		}
		ids[id] = true
	}
	return ids
}

// answered notes that gateway id answered (or said hello) now, and
// reports whether it is new: not heard from within askRemember.
func (q *Queues) answered(id string) (isNew bool) {
	a := &q.answering
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen = make(map[string]time.Time)
	}
	last, ok := a.seen[id]
	a.seen[id] = time.Now()
	return !ok || time.Since(last) > askRemember
}

// newGatewayID returns an ID for a gateway: unique, and a valid token
// of a subject.
func newGatewayID() string {
	return strings.ToLower(strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix))
}
