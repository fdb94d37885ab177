package jsqueue

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/queue"
)

// A queue made before delayed puts and priorities, whose consumer takes
// every subject of its stream, takes tasks with a priority: its consumer
// is limited to level 0 first (a work-queue stream allows no other
// consumer beside an unfiltered one).
func TestStreamOfBeforePrioritiesTakesThem(t *testing.T) {
	q := packQueues(t, Config{})
	ctx := context.Background()
	st, err := q.js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      streamName("old"),
		Subjects:  []string{subject("old")},
		Retention: jetstream.WorkQueuePolicy,
		Metadata:  map[string]string{metaQueueName: "old"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: consumerName, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	putN(t, q, "old", 1)
	if _, err := q.Put(ctx, queue.PutRequest{Queue: "old", Items: []queue.Item{{Payload: []byte("urgent"), Priority: 2}}}); err != nil {
		t.Fatalf("put with a priority: %v", err)
	}
	// A pull that does not wait finds what its consumer has counted: a
	// task put a moment before may not be yet.
	s, err := q.open("old", false)
	if err != nil || len(s.levelsDesc()) != 1 {
		t.Fatalf("levels after the put: %v, %v", s.levelsDesc(), err)
	}
	qmtest.CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		ci, err := s.levelsDesc()[0].cons.Info(ctx)
		if err != nil || ci.NumPending != 1 {
			return fmt.Errorf("level 2's consumer: %v", err)
		}
		return nil
	})
	ts := getN(t, q, "old", 1, 2, time.Second)
	if len(ts) != 1 || string(ts[0].Payload) != "urgent" {
		t.Fatalf("got %+v; want the task with a priority first", ts)
	}
	if ts := getN(t, q, "old", 1, 2, time.Second); len(ts) != 1 {
		t.Fatalf("then got %d tasks; want the other", len(ts))
	}
	q.forget("old") // opened anew, as by another gateway
	if st, err := q.Stats("old"); err != nil || st.Leased != 2 || st.Ready != 0 {
		t.Fatalf("stats: %+v, %v; want both leased", st, err)
	}
	if s, err = q.open("old", false); err != nil {
		t.Fatal(err)
	}
	ps, err := q.levelNames(ctx, s)
	if err != nil || !slices.Equal(ps, []int{2}) {
		t.Fatalf("levels: %v, %v; want [2]", ps, err)
	}
}

// A put of an old level, through a gateway that missed the queue's
// deletion, can reach the new stream before the gateway learns of it
// (queueMade, from the advisory of the new stream's consumer): the
// gateway then opens its old levels in the new stream, and the task is
// handed out. queueMade is called here as the advisory would, after the
// put, which the test cannot order otherwise.
func TestStalePutBeforeTheNewQueueIsKnown(t *testing.T) {
	n := startTestNode(t)
	a := openQueues(t, n, Config{})
	b := openQueues(t, n, Config{})
	for _, sub := range a.advisories {
		_ = sub.Unsubscribe()
	}
	ctx := context.Background()
	putAt := func(q *Queues, p int, payload string) {
		t.Helper()
		if _, err := q.Put(ctx, queue.PutRequest{Queue: "rush", Items: []queue.Item{{Payload: []byte(payload), Priority: p}}}); err != nil {
			t.Fatal(err)
		}
	}
	putAt(a, 3, "old")
	if err := b.Delete("rush"); err != nil {
		t.Fatal(err)
	}
	putAt(b, 0, "plain")
	putAt(b, 7, "seven")
	putAt(a, 3, "urgent") // stored with no consumer: a counts level 3 open
	a.queueMade(streamName("rush"))

	c := openQueues(t, n, Config{})
	var got []queue.Task
	for deadline := time.Now().Add(5 * time.Second); len(got) < 3 && time.Now().Before(deadline); {
		got = append(got, getN(t, c, "rush", 1, 3, time.Second)...)
	}
	got = append(got, getN(t, c, "rush", 1, 3, 300*time.Millisecond)...) // and no more
	var payloads []string
	for _, t := range got {
		payloads = append(payloads, string(t.Payload))
	}
	if want := []string{"seven", "urgent", "plain"}; !slices.Equal(payloads, want) {
		t.Fatalf("handed out after the queue was made anew: %v; want %v", payloads, want)
	}
}

// A gateway that could not open a queue's levels when it opened the queue
// (JetStream slow to answer within a get's time) opens them again within
// levelsLookEvery, and its gets then take their tasks. Without that they
// waited for a put of that priority through this gateway.
func TestLevelsNotOpenedAreOpenedLater(t *testing.T) {
	LookAtLevelsEvery(t, 50*time.Millisecond)
	n := startTestNode(t)
	a, b := openQueues(t, n, Config{}), openQueues(t, n, Config{})
	ctx := context.Background()
	if _, err := a.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte("urgent"), Priority: 7}}}); err != nil {
		t.Fatal(err)
	}
	s, err := b.open("jobs", false)
	if err != nil || len(s.levelsDesc()) != 1 {
		t.Fatalf("levels of jobs opened through b: %v, %v; want level 7", s.levelsDesc(), err)
	}
	// As openLevels leaves it when its calls fail.
	s.levels.Store(nil)
	s.levelsUnread.Store(true)

	ts := getN(t, b, "jobs", 1, 1, 5*time.Second)
	if len(ts) != 1 || string(ts[0].Payload) != "urgent" {
		t.Fatalf("got %+v through b; want the task of priority 7", ts)
	}
	if s.levelsUnread.Load() {
		t.Error("levels still marked unread once opened")
	}
}
