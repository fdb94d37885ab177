package jsqueue

import (
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// A get that may not wait (a client's get with no timeout, a Python
// client's get_nowait) and finds no task through its gateway tells the
// other gateways so (wantedSubjects). A gateway holding tasks of the
// queue from packs stores those it held Config.HoldFor apart, at the end
// of the queue (moveOverdue), as it does when another gateway's gets
// wait at JetStream: a get that never waits leaves no pull request there
// for it to see, and such gets found the tasks another gateway's client
// left in a pack only once that gateway handed them out itself, which
// may be never.

const (
	// wantedSubjects is the subjects' prefix; the queue's token follows.
	// The message is the saying gateway's ID.
	wantedSubjects = "qm.wanted."
	// wantedEvery bounds how often a gateway says so for one queue.
	wantedEvery = 250 * time.Millisecond
)

// sayWanted tells the other gateways that a get that could not wait found
// no task of s here, at most every wantedEvery. Lost, it is said again at
// a next such get.
func (q *Queues) sayWanted(s *stream) {
	now := time.Now()
	q.mu.Lock()
	if s.paused || now.Sub(s.wantedSaid) < wantedEvery {
		q.mu.Unlock()
		return
	}
	s.wantedSaid = now
	q.mu.Unlock()
	_ = q.cfg.Conn.Publish(wantedSubjects+token(s.queue), []byte(q.gatewayID))
}

// heardWanted takes another gateway's sayWanted: the queue's overdue held
// tasks are moved at the reaper's next look at them (every HoldFor/2).
func (q *Queues) heardWanted(m *nats.Msg) {
	if string(m.Data) == q.gatewayID {
		return
	}
	tok := strings.TrimPrefix(m.Subject, wantedSubjects)
	q.mu.Lock()
	defer q.mu.Unlock()
	if name, ok := q.queueOf[streamPrefix+tok]; ok {
		if l := q.locals[name]; l != nil && len(l.held) > 0 {
			l.wantedAt = time.Now()
		}
	}
}

// wantedLately reports whether another gateway's get that could not wait
// found none of l's tasks lately, as of a look that started at start:
// within HoldFor, or two of its sayings' intervals if that is longer.
// Called with q.mu held.
func (q *Queues) wantedLately(l *local, start time.Time) bool {
	return start.Sub(l.wantedAt) < max(q.cfg.HoldFor, 2*wantedEvery)
}
