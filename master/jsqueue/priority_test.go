package jsqueue_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

func putAt(t testing.TB, q *jsqueue.Queues, name string, priority int, payloads ...string) []uint64 {
	t.Helper()
	items := make([]queue.Item, len(payloads))
	for i, p := range payloads {
		items[i] = queue.Item{Payload: []byte(p), Priority: priority}
	}
	ids, err := q.Put(context.Background(), queue.PutRequest{Queue: name, Items: items})
	if err != nil {
		t.Fatalf("put at priority %d: %v", priority, err)
	}
	return ids
}

// Tasks with a higher priority are handed out first, in order within
// each priority, packed or not; they are counted, listed in that order,
// and keep their priority through a failure, the dead-letter queue and a
// requeue.
func TestPriorities(t *testing.T) {
	for _, pack := range []int{1, 8} {
		q := newQueues(t, startNode(t), jsqueue.Config{Pack: pack, MaxAttempts: 2})
		reaping(t, q)
		put(t, q, "jobs", "low-1", "low-2")
		putAt(t, q, "jobs", 5, "mid-1")
		putAt(t, q, "jobs", 9, "high")
		ctx := context.Background()
		if _, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte("mid-2"), Priority: 5}, {Payload: []byte("low-3")}}}); err != nil {
			t.Fatal(err)
		}
		want := []string{"high", "mid-1", "mid-2", "low-1", "low-2", "low-3"}
		if ts, err := q.Peek("jobs", 10); err != nil || !slices.Equal(payloads(ts), want) {
			t.Fatalf("pack %d: peek: %v, %v; want %v", pack, payloads(ts), err, want)
		}
		if st, err := q.Stats("jobs"); err != nil || st.Ready != 6 || st.Puts != 6 {
			t.Fatalf("pack %d: stats: %+v, %v; want 6 ready, 6 puts", pack, st, err)
		}
		var got []queue.Task
		for range want {
			got = append(got, get(t, q, "jobs", 1, 1, time.Minute, time.Second)...)
		}
		if !slices.Equal(payloads(got), want) || got[0].Priority != 9 || got[1].Priority != 5 || got[3].Priority != 0 {
			t.Fatalf("pack %d: handed out %v (priorities %d %d %d); want %v", pack, payloads(got), got[0].Priority, got[1].Priority, got[3].Priority, want)
		}
		// high fails twice: dead, then requeued at its priority.
		if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: got[0].ID, Error: "boom"}); err != nil {
			t.Fatal(err)
		}
		again := get(t, q, "jobs", 1, 1, time.Minute, 2*time.Second)
		if len(again) != 1 || again[0].ID != got[0].ID || again[0].Priority != 9 || again[0].Attempts != 2 {
			t.Fatalf("pack %d: after a failure: %+v; want high again, attempt 2", pack, again)
		}
		if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: got[0].ID, Error: "boom"}); err != nil {
			t.Fatal(err)
		}
		qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if ts, err := q.Peek("jobs.dead", 10); err != nil || len(ts) != 1 || ts[0].Priority != 9 {
				return fmt.Errorf("dead-letter queue: %+v, %v; want high, priority 9", ts, err)
			}
			return nil
		})
		putAt(t, q, "jobs", 0, "low-4")
		if n, err := q.Requeue("jobs", nil); n != 1 || err != nil {
			t.Fatalf("pack %d: requeue: %d, %v", pack, n, err)
		}
		if ts := get(t, q, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 || string(ts[0].Payload) != "high" || ts[0].Priority != 9 {
			t.Fatalf("pack %d: after the requeue: %+v; want high first", pack, ts)
		}
		// A delayed task comes due at its priority.
		if _, err := q.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte("later"), Priority: 4, Due: time.Now().Add(300 * time.Millisecond)}}}); err != nil {
			t.Fatal(err)
		}
		qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			// Peek lists leased tasks too (their messages are stored).
			ps, err := q.Peek("jobs", 10)
			if i := slices.Index(payloads(ps), "later"); err != nil || i < 0 || i > slices.Index(payloads(ps), "low-4") {
				return fmt.Errorf("peek: %v, %v; want later (come due) before low-4", payloads(ps), err)
			}
			return nil
		})
		if ts := get(t, q, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 || string(ts[0].Payload) != "later" || ts[0].Priority != 4 {
			t.Fatalf("pack %d: the delayed task at priority 4: %+v", pack, ts)
		}
	}
}

// A get waiting on a queue with priorities is woken by a task of any
// priority; another gateway hands out a priority made through the first.
func TestPriorityWakesWaitingGets(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	reaping(t, a)
	reaping(t, b)
	// Gets waiting since before their queue had any priority: its first
	// is made through the other gateway (JetStream's advisory), or through
	// the get's own.
	for _, tc := range []struct {
		queue  string
		via    *jsqueue.Queues
		within time.Duration
	}{
		{"jobs", b, 2 * time.Second}, // the task comes after the advisory: a slice
		{"local", a, 700 * time.Millisecond},
	} {
		if ts := get(t, a, tc.queue, 1, 1, time.Minute, 10*time.Millisecond); len(ts) != 0 {
			t.Fatalf("a: took %v from a new queue", payloads(ts))
		}
		first := make(chan []queue.Task, 1)
		go func() {
			ts, _ := a.Get(context.Background(), queue.GetRequest{Queue: tc.queue, Max: 1, Owner: 3, Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
			first <- ts
		}()
		qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if w, _, err := jsqueue.Waiting(a, tc.queue); err != nil || w != 1 {
				return fmt.Errorf("%d pull requests waiting, %v", w, err)
			}
			return nil
		})
		start := time.Now()
		putAt(t, tc.via, tc.queue, 4, "first priority")
		select {
		case ts := <-first:
			if len(ts) != 1 || string(ts[0].Payload) != "first priority" {
				t.Fatalf("%s: a get waiting before the first priority took %+v", tc.queue, ts)
			}
			if took := time.Since(start); took > tc.within {
				t.Errorf("%s: a get waiting before the first priority took it after %v", tc.queue, took)
			}
		case <-time.After(8 * time.Second):
			t.Fatalf("%s: a get waiting before the first priority did not take it", tc.queue)
		}
	}
	put(t, b, "jobs", "first")
	if ts := get(t, b, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 {
		t.Fatalf("b: got %v", payloads(ts))
	}
	putAt(t, a, "jobs", 3, "urgent")
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if ts := get(t, b, "jobs", 1, 1, time.Minute, 100*time.Millisecond); len(ts) != 1 || string(ts[0].Payload) != "urgent" || ts[0].Priority != 3 {
			return fmt.Errorf("b took %+v; want urgent", ts)
		}
		return nil
	})
	for _, p := range []int{3, 7, 0} { // 3 made before the get waits, 7 while it waits
		woke := make(chan []queue.Task, 1)
		go func() {
			ts, _ := a.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 4, Owner: 2, Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
			woke <- ts
		}()
		time.Sleep(200 * time.Millisecond) // the get waits meanwhile
		start := time.Now()
		putAt(t, b, "jobs", p, fmt.Sprint("p", p))
		select {
		case ts := <-woke:
			if len(ts) != 1 || string(ts[0].Payload) != fmt.Sprint("p", p) {
				t.Fatalf("woken by priority %d: %+v", p, ts)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("woken by priority %d after %v", p, took)
			}
		case <-time.After(8 * time.Second):
			t.Fatalf("a get waiting was not woken by a task of priority %d", p)
		}
	}
}

// Pause holds every priority, one made while paused too; resume through
// another gateway frees them all. A task given back on its last attempt
// goes back to its priority.
func TestPrioritiesPausedAndGivenBack(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{MaxAttempts: 1})
	b := newQueues(t, node, jsqueue.Config{MaxAttempts: 1})
	reaping(t, a)
	putAt(t, a, "jobs", 2, "two")
	if err := a.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	putAt(t, a, "jobs", 6, "six") // a level made while paused
	put(t, a, "jobs", "zero")
	if ts := get(t, a, "jobs", 1, 3, time.Minute, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("paused, handed out %v", payloads(ts))
	}
	if err := b.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	var got []queue.Task
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		got = append(got, get(t, a, "jobs", 1, 1, time.Minute, time.Second)...)
	}
	if !slices.Equal(payloads(got), []string{"six", "two", "zero"}) {
		t.Fatalf("resumed, handed out %v; want six, two, zero", payloads(got))
	}
	// six, on its last attempt, never reached its client: it goes back
	// to priority 6, ahead of a task of priority 0.
	put(t, a, "jobs", "zero-2")
	req := queue.GetRequest{Queue: "jobs", Owner: 1}
	a.Unget(req, got[:1])
	ts := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(ts) != 1 || string(ts[0].Payload) != "six" || ts[0].Priority != 6 || ts[0].Attempts != 1 {
		t.Fatalf("after the unget: %+v; want six again, at priority 6, attempt 1", ts)
	}
}

// A task put with a priority is the next get's, even a moment after the
// put (JetStream acks a message before its consumer counts it), and one
// taken through another gateway costs a get of this one no more than a
// short wait.
func TestPriorityPutThenGet(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	put(t, a, "jobs", "zero")
	for i := range 100 {
		putAt(t, a, "jobs", 5, fmt.Sprint("high-", i))
		ts := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
		if len(ts) != 1 || string(ts[0].Payload) != fmt.Sprint("high-", i) {
			t.Fatalf("round %d: took %v; want high-%d", i, payloads(ts), i)
		}
		ackIDs(t, a, "jobs", 1, ts[0].ID)
	}
	if ts := get(t, a, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 || string(ts[0].Payload) != "zero" {
		t.Fatalf("took %v; want zero", payloads(ts))
	} else {
		ackIDs(t, a, "jobs", 1, ts[0].ID)
	}
	// b takes a task a put: a's next get waits for it a moment only once.
	// (b has no record of the put, and may pass over it once: it waits on
	// the empty level 0 a second, then looks again.)
	putAt(t, a, "jobs", 5, "high-b")
	if ts := get(t, b, "jobs", 2, 1, time.Minute, 3*time.Second); len(ts) != 1 || string(ts[0].Payload) != "high-b" {
		t.Fatalf("b took %v; want high-b", payloads(ts))
	}
	put(t, a, "jobs", "zero-2")
	start := time.Now()
	if ts := get(t, a, "jobs", 1, 1, time.Minute, time.Second); len(ts) != 1 || string(ts[0].Payload) != "zero-2" {
		t.Fatalf("took %v; want zero-2", payloads(ts))
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a get that found the level taken took %v", took)
	}
}

// A gateway that missed JetStream's advisory of a queue's deletion still
// had the old stream's levels open. Once another gateway had made the
// queue anew and opened a level of its own in it, the new stream took
// every level's subject: the first gateway's puts of its old levels were
// stored with no consumer, and no gateway that opened the queue later
// handed them out. It now learns of the new stream from the advisory of
// its new consumer, and opens its old levels in it, whether its put came
// before that advisory or after.
func TestStaleLevelsAfterTheQueueIsMadeAnew(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{RequestTimeout: 2 * time.Second})
	b := newQueues(t, node, jsqueue.Config{})
	a.IgnoreDeletions()
	putAt(t, a, "rush", 3, "old-3")
	putAt(t, a, "rush", 5, "old-5")
	if err := b.Delete("rush"); err != nil {
		t.Fatal(err)
	}
	put(t, b, "rush", "plain")
	putAt(t, b, "rush", 7, "seven")
	putAt(t, a, "rush", 3, "urgent-1")
	putAt(t, a, "rush", 5, "urgent-2")
	// If the advisory reached a after its puts, a opens their levels
	// meanwhile; c, opened after, takes in priority order once they are.
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if ps, err := jsqueue.LevelConsumers(b, "rush"); err != nil || !slices.Equal(ps, []int{3, 5, 7}) {
			return fmt.Errorf("levels with consumers: %v, %v; want 3, 5 and 7", ps, err)
		}
		return nil
	})

	c := newQueues(t, node, jsqueue.Config{})
	var got []queue.Task
	for deadline := time.Now().Add(5 * time.Second); len(got) < 4 && time.Now().Before(deadline); {
		got = append(got, get(t, c, "rush", 1, 4, time.Minute, time.Second)...)
	}
	got = append(got, get(t, c, "rush", 1, 4, time.Minute, 300*time.Millisecond)...) // and no more
	if want := []string{"seven", "urgent-2", "urgent-1", "plain"}; !slices.Equal(payloads(got), want) {
		t.Fatalf("handed out after the queue was made anew: %v; want %v", payloads(got), want)
	}
}

// missedBothAdvisories makes queue "rush" anew through b while a, which
// had its level 3 open, misses both JetStream advisories that say so (the
// old stream's deletion, the new one's consumer), and has a put a task of
// level 3 into the new stream, where b opened level 7 only. Before the
// twenty-first session that task had no consumer, and no gateway handed
// it out until one put a task of level 3 again.
func missedBothAdvisories(t *testing.T, a, b *jsqueue.Queues) {
	t.Helper()
	a.IgnoreAdvisories()
	putAt(t, a, "rush", 3, "old-3")
	if err := b.Delete("rush"); err != nil {
		t.Fatal(err)
	}
	put(t, b, "rush", "plain")
	putAt(t, b, "rush", 7, "seven")
	putAt(t, a, "rush", 3, "urgent")
}

// checkHandsOut checks that q hands out want, and nothing more.
func checkHandsOut(t *testing.T, q *jsqueue.Queues, want ...string) {
	t.Helper()
	var got []queue.Task
	for deadline := time.Now().Add(5 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
		got = append(got, get(t, q, "rush", 1, len(want), time.Minute, time.Second)...)
	}
	got = append(got, get(t, q, "rush", 1, len(want), time.Minute, 300*time.Millisecond)...) // and no more
	if !slices.Equal(payloads(got), want) {
		t.Fatalf("handed out: %v; want %v", payloads(got), want)
	}
}

// A gateway that opens a queue opens the levels that hold tasks, consumer
// or not: the stale gateway's task is handed out.
func TestOpeningAQueueOpensLevelsHoldingTasks(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	missedBothAdvisories(t, a, b)
	c := newQueues(t, node, jsqueue.Config{})
	checkHandsOut(t, c, "seven", "urgent", "plain")
}

// The stale gateway finds the new stream itself, within a look at its
// queues with levels, and opens its old levels in it: the task is handed
// out (through a gateway opened after, as the stale one's gets in flight
// may still hold its old stream).
func TestGatewayFindsItsQueueMadeAnew(t *testing.T) {
	node := startNode(t)
	jsqueue.LookAtLevelsEvery(t, 100*time.Millisecond)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	missedBothAdvisories(t, a, b)
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if ps, err := jsqueue.LevelConsumers(b, "rush"); err != nil || !slices.Equal(ps, []int{3, 7}) {
			return fmt.Errorf("levels with consumers: %v, %v; want 3 and 7", ps, err)
		}
		return nil
	})
	c := newQueues(t, node, jsqueue.Config{})
	checkHandsOut(t, c, "seven", "urgent", "plain")
}

// A get waiting while the queue is paused takes, once it is resumed, the
// highest priority first: the resume started level 0 first, and a get
// waiting on it took a task of priority 0 ahead of priority 9 (a sweep:
// three runs of three).
func TestResumeServesTheHighestPriorityFirst(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	if err := a.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	put(t, b, "jobs", "zero")
	putAt(t, b, "jobs", 3, "three")
	putAt(t, a, "jobs", 9, "nine")
	got := getWaiting(t, a, "jobs")
	if err := b.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	select {
	case ts := <-got:
		if len(ts) != 1 || string(ts[0].Payload) != "nine" {
			t.Fatalf("the get waiting at the resume took %v; want nine", payloads(ts))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting get got nothing 5s after the resume")
	}
	rest := append(get(t, a, "jobs", 1, 1, time.Minute, time.Second), get(t, a, "jobs", 1, 1, time.Minute, time.Second)...)
	if !slices.Equal(payloads(rest), []string{"three", "zero"}) {
		t.Fatalf("then %v; want three, zero", payloads(rest))
	}
}
