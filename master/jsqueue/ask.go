package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/queue"
)

// The gateways of one cluster ask each other what each alone knows (the
// clients connected to it; the tasks Python clients took through it and
// have not marked done) over core NATS request and reply, which stores
// nothing. A question on a topic goes to every gateway answering that
// topic, this one included, and the asker takes the answers as they come
// until none has come for a moment: it cannot know how many gateways
// there are.

const (
	// askSubjects is the questions' subjects' prefix; the topic follows.
	askSubjects = "qm.ask."
	// askQuiet is how long Ask waits for another answer after the last.
	// Answers come over routes within a millisecond or two here.
	askQuiet = 50 * time.Millisecond
	// askFirst bounds the wait for the first answer, this gateway's own.
	askFirst = 2 * time.Second
)

// Answer makes this gateway answer every question on topic with f's
// answer to it, until Close. f runs on the subscription's goroutine, one
// question at a time.
func (q *Queues) Answer(topic string, f func(question []byte) []byte) error {
	sub, err := q.cfg.Conn.Subscribe(askSubjects+topic, func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		if err := m.Respond(f(m.Data)); err != nil {
			q.log.Warn("a gateway's question not answered", "topic", topic, "err", err)
		}
	})
	if err != nil {
		return q.engineErr("answer "+topic, err)
	}
	q.mu.Lock()
	q.answering = append(q.answering, sub)
	q.mu.Unlock()
	return nil
}

// Ask asks every gateway answering topic (Answer), this one included,
// and returns their answers: those that came until none came for
// askQuiet, or ctx ended. It fails if none came within askFirst.
func (q *Queues) Ask(ctx context.Context, topic string, question []byte) ([][]byte, error) {
	nc := q.cfg.Conn
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, q.engineErr("ask "+topic, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(askSubjects+topic, inbox, question); err != nil {
		return nil, q.engineErr("ask "+topic, err)
	}
	var answers [][]byte
	wait := askFirst
	for {
		wctx, cancel := context.WithTimeout(ctx, wait)
		m, err := sub.NextMsgWithContext(wctx)
		cancel()
		switch {
		case err == nil && m.Header.Get("Status") != "":
			err = fmt.Errorf("status %s %s", m.Header.Get("Status"), m.Header.Get("Description")) // no responders
		case err == nil:
			answers = append(answers, m.Data)
			wait = askQuiet
			continue
		case len(answers) > 0 && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
			return answers, nil
		}
		return nil, fmt.Errorf("%w: no gateway answered %s: %w", queue.ErrUnavailable, topic, err)
	}
}
