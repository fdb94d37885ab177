package jsqueue

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// SubscriptionsMade is how many subscriptions have been made on n's
// server, in every account, since it started.
func (n *Node) SubscriptionsMade() uint64 {
	sz, err := n.srv.Subsz(&server.SubszOptions{})
	if err != nil {
		return 0
	}
	return sz.NumInserts
}

// Reaps is how many times q's reaper has looked at its leases.
func (q *Queues) Reaps() int64 { return q.reaps.Load() }

// StoredMessages is how many messages the stream of queue name holds: a
// pack is one, and leaves it once all its tasks are done.
func StoredMessages(q *Queues, name string) (int, error) {
	s, err := q.open(name, false)
	if err != nil {
		return 0, err
	}
	si, err := s.st.Info(context.Background())
	if err != nil {
		return 0, err
	}
	return int(si.State.Msgs), nil
}

// IgnoreAdvisories makes q miss JetStream's advisories from now on, as
// when JetStream drops them.
func (q *Queues) IgnoreAdvisories() {
	for _, sub := range q.advisories {
		_ = sub.Unsubscribe()
	}
}

// IgnoreDeletions makes q miss JetStream's advisories of deleted streams
// from now on, as when JetStream drops them, and follow the others.
func (q *Queues) IgnoreDeletions() {
	for _, sub := range q.advisories {
		if strings.HasPrefix(sub.Subject, streamDeletedPrefix) {
			_ = sub.Unsubscribe()
		}
	}
}

// LevelConsumers returns the priority levels above 0 whose consumers
// the stream of queue name has in JetStream, ascending.
func LevelConsumers(q *Queues, name string) ([]int, error) {
	s, err := q.open(name, false)
	if err != nil {
		return nil, err
	}
	return q.levelNames(context.Background(), s)
}

// Waiting returns how many pull requests the consumer of queue name's
// tasks (priority 0) has waiting, and how many of its deliveries await
// their acks.
func Waiting(q *Queues, name string) (waiting, ackPending int, err error) {
	s, err := q.open(name, false)
	if err != nil {
		return 0, 0, err
	}
	ci, err := s.cons.Info(context.Background())
	if err != nil {
		return 0, 0, err
	}
	return ci.NumWaiting, ci.NumAckPending, nil
}

// PackSize is the most tasks q packs in one message of queue name's
// tasks now: the least size the gateways said, or its Config.Pack.
func PackSize(q *Queues, name string) int { return q.packSize(name) }

// PackSizesHeard returns the sizes the gateways said lately of queue
// name's packs, as q heard them, ascending.
func PackSizesHeard(q *Queues, name string) []int {
	q.sizeMu.Lock()
	defer q.sizeMu.Unlock()
	var sizes []int
	for _, s := range q.sizes[token(name)] {
		sizes = append(sizes, s.size)
	}
	slices.Sort(sizes)
	return sizes
}

// HearPackSize makes q hear, from a gateway of the test's, that it would
// take packs of size tasks of queue name.
func HearPackSize(q *Queues, name string, size int) {
	q.heardPackSize(&nats.Msg{Subject: sizeSubjects + token(name), Data: []byte(strconv.Itoa(size) + " test")})
}

// LookAtLevelsEvery makes gateways opened from now on look at their
// queues with levels every d (levelsLookEvery), until the test ends.
func LookAtLevelsEvery(t interface{ Cleanup(func()) }, d time.Duration) {
	old := levelsLookEvery
	levelsLookEvery = d
	t.Cleanup(func() { levelsLookEvery = old })
}

// RecordWrites is how many times the packs' records have been written,
// on every gateway of q's node (0 before the first).
func RecordWrites(q *Queues) (uint64, error) {
	st, err := q.js.Stream(context.Background(), recordsStream)
	if err != nil {
		return 0, err
	}
	si, err := st.Info(context.Background())
	if err != nil {
		return 0, err
	}
	return si.State.LastSeq, nil
}

// SetTestHookSettling makes f run in q's Ack between a completion's
// record writes and its acks.
func SetTestHookSettling(q *Queues, f func()) { q.testHookSettling = f }

// StreamStateFromLeader is queue name's stream state as streamInfo reads
// it, within d.
func StreamStateFromLeader(q *Queues, name string, d time.Duration) (jetstream.StreamState, error) {
	s, err := q.open(name, false)
	if err != nil {
		return jetstream.StreamState{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	si, err := streamInfo(ctx, s.st)
	if err != nil {
		return jetstream.StreamState{}, err
	}
	return si.State, nil
}
