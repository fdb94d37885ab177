package jsqueue_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// ackThrough completes ts through q for owner, with their delivery tokens,
// and returns the tasks whose results were published.
func ackThrough(q *jsqueue.Queues, owner uint64, ts ...queue.Task) ([]queue.Task, error) {
	req := queue.AckRequest{Queue: "jobs", Owner: owner}
	for _, t := range ts {
		req.IDs = append(req.IDs, t.ID)
		req.Tokens = append(req.Tokens, t.Token)
	}
	var published []queue.Task
	req.Publish = func(acked []queue.Task) ([]queue.Task, error) {
		published = append(published, acked...)
		return nil, nil
	}
	_, err := q.Ack(req, nil)
	return published, err
}

// A task handed out by a gateway that then dies (its connection closes,
// nothing is given back) is completed through another gateway, with its
// token, within its lease: its result is published once, the task is
// done, and neither that gateway nor a third takes the same completion
// again.
func TestCompletionThroughAnotherGateway(t *testing.T) {
	n := startNode(t)
	ncA := connect(t, n)
	a := newQueues(t, n, jsqueue.Config{Conn: ncA})
	b := newQueues(t, n, jsqueue.Config{})
	c := newQueues(t, n, jsqueue.Config{})
	ids := put(t, b, "jobs", "x", "y")
	got := get(t, a, "jobs", 1, 2, time.Minute, time.Second)
	if len(got) != 2 || got[0].Token == "" {
		t.Fatalf("got %+v, want two tasks with tokens", got)
	}
	ncA.Close() // the gateway dies, holding both leases

	// The worker, reconnected to b, completes the second, then both.
	published, err := ackThrough(b, 7, got[1])
	if err != nil || len(published) != 1 || published[0].ID != ids[1] || string(published[0].Payload) != "y" {
		t.Fatalf("completion through another gateway: published %+v, %v", published, err)
	}
	published, err = ackThrough(b, 7, got[0], got[1])
	if !errors.Is(err, queue.ErrNotLeased) || len(published) != 1 || published[0].ID != ids[0] {
		t.Fatalf("the first, and the second again: published %+v, %v; want only the first, and the second not leased", published, err)
	}
	if published, err = ackThrough(c, 8, got[0]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
		t.Fatalf("the same completion through a third gateway: published %+v, %v; want ErrNotLeased", published, err)
	}
	st, err := b.Stats("jobs")
	if err != nil || st.Ready != 0 || st.Leased != 0 {
		t.Fatalf("stats %+v, %v: want nothing left", st, err)
	}
	if ts := get(t, c, "jobs", 9, 2, time.Minute, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a completed task came again: %+v", ts)
	}
}

// Once JetStream has handed a task out again (the first gateway died and
// its ack wait ran out), a completion of the first delivery is refused
// through any gateway, and the second delivery's completes the task, also
// through a gateway that did not hand it out.
func TestSupersededDeliveryIsRefused(t *testing.T) {
	n := startNode(t)
	ncA := connect(t, n)
	const ackWait = 500 * time.Millisecond
	a := newQueues(t, n, jsqueue.Config{Conn: ncA, AckWait: ackWait})
	b := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	c := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	reaping(t, b)
	ids := put(t, b, "jobs", "x")
	first := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(first) != 1 {
		t.Fatal("no task")
	}
	ncA.Close()
	second := get(t, b, "jobs", 2, 1, time.Minute, 20*ackWait)
	if len(second) != 1 || second[0].ID != ids[0] || second[0].Attempts != 2 || second[0].Token == first[0].Token {
		t.Fatalf("after the first gateway died got %+v, want task %d at attempt 2 with a token of its own", second, ids[0])
	}
	for _, q := range []*jsqueue.Queues{b, c} {
		if published, err := ackThrough(q, 7, first[0]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
			t.Fatalf("completion of the superseded delivery: published %+v, %v; want ErrNotLeased", published, err)
		}
	}
	published, err := ackThrough(c, 7, second[0])
	if err != nil || len(published) != 1 || published[0].Attempts != 2 {
		t.Fatalf("completion of the current delivery through another gateway: published %+v, %v", published, err)
	}
	// b still holds the lease it gave out, but the task is done: its own
	// completion of it finds nothing to ack.
	if _, err := b.Ack(queue.AckRequest{Queue: "jobs", Owner: 2, IDs: ids, Publish: func([]queue.Task) ([]queue.Task, error) { return nil, nil }}, nil); err != nil {
		t.Logf("the holder's late ack: %v", err)
	}
	st, err := c.Stats("jobs")
	if err != nil || st.Ready != 0 {
		t.Fatalf("stats %+v, %v: want nothing ready", st, err)
	}
}

// A token that does not name a delivery of the queue's stream, or names
// another task, completes nothing.
func TestForeignTokensAreRefused(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{})
	b := newQueues(t, n, jsqueue.Config{})
	ids := put(t, a, "jobs", "x")
	put(t, a, "other", "y")
	got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	other := get(t, a, "other", 1, 1, time.Minute, time.Second)
	if len(got) != 1 || len(other) != 1 {
		t.Fatal("no tasks")
	}
	for _, tok := range []string{
		other[0].Token,              // another queue's delivery
		"$JS.ACK.QM_x.qm.1.1.1.1.0", // another stream
		"nonsense",
		"$JS.ACK.*.qm.1.1.1.1.0",
	} {
		bad := got[0]
		bad.Token = tok
		if published, err := ackThrough(b, 7, bad); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
			t.Errorf("token %q: published %+v, %v; want ErrNotLeased", tok, published, err)
		}
	}
	wrongID := got[0]
	wrongID.ID = ids[0] + 100
	if published, err := ackThrough(b, 7, wrongID); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
		t.Errorf("another task's ID: published %+v, %v; want ErrNotLeased", published, err)
	}
	if published, err := ackThrough(b, 7, got[0]); err != nil || len(published) != 1 {
		t.Fatalf("the real completion: published %+v, %v", published, err)
	}
}

// A delivery that moved to another gateway is renewed there by its token:
// it outlives its ack wait, and is then completed through a third.
func TestMovedDeliveryIsRenewed(t *testing.T) {
	n := startNode(t)
	ncA := connect(t, n)
	const ackWait = 400 * time.Millisecond
	a := newQueues(t, n, jsqueue.Config{Conn: ncA, AckWait: ackWait})
	b := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	c := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	put(t, b, "jobs", "x")
	got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(got) != 1 {
		t.Fatal("no task")
	}
	ncA.Close()
	renewThrough(t, b, c, got[0], ackWait)
	if published, err := ackThrough(c, 7, got[0]); err != nil || len(published) != 1 {
		t.Fatalf("completion after the renewals: published %+v, %v", published, err)
	}
	if err := b.ExtendDeliveries("jobs", []uint64{got[0].ID}, []string{got[0].Token}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("renewal of a completed task: %v, want ErrNotLeased", err)
	}
}

// renewThrough renews task's delivery through b, by its token, for four
// times ackWait, while gets through c find nothing: it is not handed out
// again.
func renewThrough(t *testing.T, b, c *jsqueue.Queues, task queue.Task, ackWait time.Duration) {
	t.Helper()
	deadline := time.Now().Add(4 * ackWait)
	for time.Now().Before(deadline) {
		if err := b.ExtendDeliveries("jobs", []uint64{task.ID}, []string{task.Token}); err != nil {
			t.Fatalf("renewal through another gateway: %v", err)
		}
		if ts := get(t, c, "jobs", 2, 1, time.Minute, ackWait/4); len(ts) != 0 {
			t.Fatalf("a renewed delivery was handed out again: %+v", ts)
		}
	}
}

// A failed attempt of a moved delivery is taken through another gateway:
// the task comes again at once, with the error and the next attempt.
func TestMovedDeliveryIsNacked(t *testing.T) {
	n := startNode(t)
	ncA := connect(t, n)
	a := newQueues(t, n, jsqueue.Config{Conn: ncA})
	b := newQueues(t, n, jsqueue.Config{})
	put(t, b, "jobs", "x")
	got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
	if len(got) != 1 {
		t.Fatal("no task")
	}
	ncA.Close()
	if err := b.Nack(queue.NackRequest{Queue: "jobs", Owner: 7, ID: got[0].ID, Error: "boom", Token: got[0].Token}); err != nil {
		t.Fatalf("nack through another gateway: %v", err)
	}
	again := get(t, b, "jobs", 7, 1, time.Minute, 5*time.Second)
	if len(again) != 1 || again[0].ID != got[0].ID || again[0].Attempts != 2 || again[0].LastError != "boom" {
		t.Fatalf("after the nack got %+v, want the task at attempt 2 with its error", again)
	}
	if err := b.Nack(queue.NackRequest{Queue: "jobs", Owner: 8, ID: got[0].ID, Error: "late", Token: got[0].Token}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("nack of the superseded delivery: %v, want ErrNotLeased", err)
	}
}

// A dead gateway's many leases come back together, each recorded as
// redelivered, and are all handed out again.
func TestManyRedeliveriesAreRecorded(t *testing.T) {
	n := startNode(t)
	ncA := connect(t, n)
	const ackWait = 300 * time.Millisecond
	a := newQueues(t, n, jsqueue.Config{Conn: ncA, AckWait: ackWait})
	b := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	c := newQueues(t, n, jsqueue.Config{AckWait: ackWait})
	payloads := make([]string, 100)
	for i := range payloads {
		payloads[i] = "x"
	}
	put(t, b, "jobs", payloads...)
	first := get(t, a, "jobs", 1, 100, time.Minute, time.Second)
	if len(first) != 100 {
		t.Fatalf("got %d tasks, want 100", len(first))
	}
	ncA.Close()
	var again []queue.Task
	deadline := time.Now().Add(20 * ackWait)
	for len(again) < 100 && time.Now().Before(deadline) {
		again = append(again, get(t, b, "jobs", 2, 100, time.Minute, ackWait)...)
	}
	if len(again) != 100 {
		t.Fatalf("%d of 100 tasks came back", len(again))
	}
	for i := range first {
		if published, err := ackThrough(c, 7, first[i]); !errors.Is(err, queue.ErrNotLeased) || len(published) != 0 {
			t.Fatalf("the first delivery of task %d: published %+v, %v; want ErrNotLeased", first[i].ID, published, err)
		}
	}
}

// A failed attempt that is not to be retried (NoRetry) sends its task to
// the dead-letter queue at once, attempts left or not: packed or not,
// reported through the gateway that handed it out or through another.
func TestNoRetryDeadLettersAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pack      int
		elsewhere bool
	}{
		{"alone", 1, false},
		{"alone, through another gateway", 1, true},
		{"packed", 8, false},
		{"packed, through another gateway", 8, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var dead []queue.Task
			onDead := func(name string, task queue.Task) {
				mu.Lock()
				defer mu.Unlock()
				dead = append(dead, task)
			}
			n := startNode(t)
			ncA := connect(t, n)
			cfg := jsqueue.Config{Pack: tc.pack, MaxAttempts: 5, OnDead: onDead}
			cfg.Conn = ncA
			a := newQueues(t, n, cfg)
			cfg.Conn = nil
			b := newQueues(t, n, cfg)
			ids := put(t, a, "jobs", "bad", "good")
			got := get(t, a, "jobs", 1, 1, time.Minute, time.Second)
			if len(got) != 1 || got[0].ID != ids[0] {
				t.Fatalf("got %+v, want the first task", got)
			}
			via := a
			if tc.elsewhere {
				ncA.Close()
				via = b
			}
			if err := via.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ids[0], Error: "bad input", NoRetry: true, Token: got[0].Token}); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			if len(dead) != 1 || dead[0].ID != ids[0] || dead[0].Attempts != 1 || dead[0].LastError != "bad input" {
				t.Errorf("dead %+v: want the task after its first attempt of 5, with its error", dead)
			}
			mu.Unlock()
			if dts, err := b.Peek(queue.DeadLetterName("jobs"), 10); err != nil || len(dts) != 1 || dts[0].ID != ids[0] {
				t.Fatalf("dead-letter queue %+v, %v: want the task", dts, err)
			}
			if tc.elsewhere {
				return // a's pack, with the second task, comes back after its ack wait
			}
			if ts := get(t, a, "jobs", 2, 2, time.Minute, 2*time.Second); len(ts) != 1 || ts[0].ID != ids[1] {
				t.Fatalf("then got %+v, want only the second task", ts)
			}
		})
	}
}
