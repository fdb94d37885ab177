package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

func TestPutGetAckInOrder(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	ids := put(t, q, "jobs", "a", "b", "c")
	if !slices.IsSorted(ids) || len(ids) != 3 {
		t.Fatalf("ids %v: want 3 increasing", ids)
	}
	ts := get(t, q, "jobs", 1, 10, 0, 0)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("got %q, want a b c in order", got)
	}
	for i, task := range ts {
		if task.ID != ids[i] || task.Attempts != 1 {
			t.Errorf("task %d: id %d attempts %d, want id %d attempts 1", i, task.ID, task.Attempts, ids[i])
		}
	}
	var published []uint64
	acked, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids, Publish: func(ts []queue.Task) ([]queue.Task, error) {
		for _, t := range ts {
			published = append(published, t.ID)
		}
		return nil, nil
	}}, nil)
	if err != nil || len(acked) != 3 || !slices.Equal(published, ids) {
		t.Fatalf("ack: %d acked, published %v, err %v", len(acked), published, err)
	}
	st, err := q.Stats("jobs")
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready != 0 || st.Leased != 0 || st.Done != 3 || st.Puts != 3 {
		t.Errorf("stats %+v: want 0 ready, 0 leased, 3 done, 3 puts", st)
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids[:1]}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Errorf("second ack: %v, want ErrNotLeased", err)
	}
}

func TestGetWaitsForAPut(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	put(t, q, "jobs") // create the queue
	start := time.Now()
	if ts := get(t, q, "jobs", 1, 4, 0, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("empty queue gave %d tasks", len(ts))
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Errorf("empty get returned after %v, want about its 300ms wait", waited)
	}

	got := make(chan []queue.Task, 1)
	go func() {
		ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 4, Owner: 1, MaxWait: 10 * time.Second}, nil)
		got <- ts
	}()
	put(t, q, "jobs", "x")
	select {
	case ts := <-got:
		if len(ts) != 1 || string(ts[0].Payload) != "x" {
			t.Fatalf("got %q, want x", payloads(ts))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting get did not return once a task came")
	}
}

func TestFailedAttemptsThenDeadLetterAndRequeue(t *testing.T) {
	var mu sync.Mutex
	var dead []queue.Task
	q := newQueues(t, startNode(t), jsqueue.Config{MaxAttempts: 2, OnDead: func(name string, task queue.Task) {
		mu.Lock()
		defer mu.Unlock()
		if name == "jobs" {
			dead = append(dead, task)
		}
	}})
	ids := put(t, q, "jobs", "t", "later")
	ts := get(t, q, "jobs", 1, 1, 0, 0)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	ts = get(t, q, "jobs", 1, 1, 0, 2*time.Second)
	if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 2 || ts[0].LastError != "boom" {
		t.Fatalf("redelivery %+v: want task %d first again, attempt 2, error boom", ts, ids[0])
	}
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom again"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(dead) != 1 || dead[0].ID != ids[0] || dead[0].LastError != "boom again" || dead[0].Attempts != 2 {
		t.Fatalf("dead %+v: want task %d after 2 attempts with its last error", dead, ids[0])
	}
	mu.Unlock()
	st, err := q.Stats("jobs")
	if err != nil || st.Dead != 1 || st.Ready != 1 {
		t.Fatalf("stats %+v, %v: want 1 dead, 1 ready", st, err)
	}
	if n, err := q.Requeue("jobs", []uint64{ids[0], 999}); n != 1 || !errors.Is(err, queue.ErrNoSuchTask) {
		t.Fatalf("requeue: %d, %v; want 1 moved and no such task 999", n, err)
	}
	ts = get(t, q, "jobs", 1, 2, 0, 2*time.Second)
	if got := payloads(ts); !slices.Equal(got, []string{"later", "t"}) {
		t.Fatalf("after requeue got %q, want later then t", got)
	}
	if ts[1].ID != ids[0] || ts[1].Attempts != 1 || ts[1].LastError != "boom again" {
		t.Errorf("requeued task %+v: want its id, attempts anew, its last error", ts[1])
	}
}

func TestExpiredLeaseIsRedeliveredAndLateAckRefused(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	reaping(t, q)
	ids := put(t, q, "jobs", "t")
	first := get(t, q, "jobs", 1, 1, 100*time.Millisecond, 0)
	if len(first) != 1 {
		t.Fatal("no task")
	}
	again := get(t, q, "jobs", 2, 1, 0, 5*time.Second)
	if len(again) != 1 || again[0].ID != ids[0] || again[0].Attempts != 2 || again[0].LastError != "lease expired" {
		t.Fatalf("after the lease ran out got %+v, want the task again, attempt 2, lease expired", again)
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Errorf("late ack of the superseded delivery: %v, want ErrNotLeased", err)
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 2, IDs: ids}, nil); err != nil {
		t.Errorf("ack of the current delivery: %v", err)
	}
}

func TestExtendKeepsALeaseLongerThanAckWait(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{AckWait: time.Second})
	reaping(t, q)
	ids := put(t, q, "jobs", "t")
	get(t, q, "jobs", 1, 1, 4*time.Second, 0)
	// JetStream would redeliver after 1s unless the gateway renews.
	if ts := get(t, q, "jobs", 2, 1, 0, 2500*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a task leased for 4s was delivered again within 2.5s: %+v", ts)
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseAndPause(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	put(t, q, "jobs", "t")
	get(t, q, "jobs", 1, 1, 0, 0)
	if n := q.LeasedBy(1); n != 1 {
		t.Fatalf("LeasedBy = %d, want 1", n)
	}
	if err := q.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	if n := q.Release(1); n != 1 {
		t.Fatalf("Release = %d, want 1", n)
	}
	if ts := get(t, q, "jobs", 2, 1, 0, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a paused queue handed out %+v", ts)
	}
	st, err := q.Stats("jobs")
	if err != nil || !st.Paused {
		t.Fatalf("stats %+v, %v: want paused", st, err)
	}
	if err := q.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	ts := get(t, q, "jobs", 2, 1, 0, 5*time.Second)
	if len(ts) != 1 || ts[0].LastError != "worker disconnected" || ts[0].Attempts != 2 {
		t.Fatalf("after resume got %+v, want the released task, attempt 2", ts)
	}
}

func TestAdminViews(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	ids := put(t, q, "b.jobs with spaces", "1", "2", "3")
	put(t, q, "a")
	if names, err := q.Queues(); err != nil || !slices.Equal(names, []string{"a", "b.jobs with spaces"}) {
		t.Fatalf("Queues() = %q, %v", names, err)
	}
	ts, err := q.Peek("b.jobs with spaces", 2)
	if err != nil || !slices.Equal(payloads(ts), []string{"1", "2"}) {
		t.Fatalf("peek: %q, %v", payloads(ts), err)
	}
	if n, err := q.Drop("b.jobs with spaces", []uint64{ids[1]}); n != 1 || err != nil {
		t.Fatalf("drop: %d, %v", n, err)
	}
	if n, err := q.Purge("b.jobs with spaces"); n != 2 || err != nil {
		t.Fatalf("purge: %d, %v; want 2", n, err)
	}
	if err := q.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Stats("a"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("stats of a deleted queue: %v", err)
	}
	if err := q.Delete("a"); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Errorf("second delete: %v", err)
	}
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "bad\x00name", Items: []queue.Item{{Payload: []byte("x")}}}); !errors.Is(err, queue.ErrBadQueueName) {
		t.Errorf("bad name: %v", err)
	}
}

// A gateway that dies holding a lease: JetStream hands the task to
// another gateway once AckWait runs out, as a failed attempt.
func TestDeadGatewaysTaskGoesToAnother(t *testing.T) {
	n := startNode(t)
	cfg := jsqueue.Config{AckWait: 300 * time.Millisecond}
	a := newQueues(t, n, cfg)
	b := newQueues(t, n, cfg)
	ids := put(t, a, "jobs", "t")
	cfgA := cfg
	cfgA.Conn = connect(t, n)
	dying, err := jsqueue.New(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	if ts := get(t, dying, "jobs", 1, 1, time.Minute, 0); len(ts) != 1 {
		t.Fatal("no task")
	}
	cfgA.Conn.Close() // the gateway is gone without a word
	ts := get(t, b, "jobs", 7, 1, 0, 5*time.Second)
	if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 2 {
		t.Fatalf("got %+v, want the dead gateway's task at attempt 2", ts)
	}
	dying.Close()
}

// Results that cannot be stored leave their tasks unacked: they run
// again rather than being lost. While results wait for their queue, the
// lease is renewed, so no other worker gets the task meanwhile.
func TestAckWaitsForResultsAndGivesBackOnFailure(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{AckWait: 300 * time.Millisecond})
	reaping(t, q)
	ids := put(t, q, "jobs", "a", "b")
	get(t, q, "jobs", 1, 2, 100*time.Millisecond, 0)
	another := make(chan []queue.Task, 1)
	_, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids[:1], Publish: func([]queue.Task) ([]queue.Task, error) {
		// Longer than the lease and than AckWait: another get must not
		// see the task (but sees the other, whose lease ran out).
		ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 2, Owner: 2, MaxWait: time.Second}, nil)
		more, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 2, Owner: 2, MaxWait: 700 * time.Millisecond}, nil)
		another <- append(ts, more...)
		return nil, nil
	}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ts := <-another; len(ts) != 1 || ts[0].ID != ids[1] {
		t.Fatalf("while the first task's results were stored another get took %+v, want only task %d", ts, ids[1])
	}

	more := put(t, q, "jobs", "c")
	get(t, q, "jobs", 3, 1, time.Minute, 0)
	ackResultsFailing(t, q, "jobs", 3, more)
	ts := get(t, q, "jobs", 4, 1, 0, 5*time.Second)
	if len(ts) != 1 || ts[0].ID != more[0] || ts[0].Attempts != 2 {
		t.Fatalf("after its results failed got %+v, want task %d again", ts, more[0])
	}
}

// A delivery that never reached its client (Unget) goes back ahead of
// newer tasks, and is no attempt: JetStream counts it, the gateway does
// not. On the last attempt (its earlier ones failed) it is stored again
// instead, uncounted, so that it runs, wherever it is delivered next,
// rather than going to the dead-letter queue.
func TestUngetOnTheLastAttemptRunsAgain(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{MaxAttempts: 2})
	ids := put(t, q, "jobs", "t", "later")
	req := queue.GetRequest{Queue: "jobs", Max: 1, Owner: 1}
	ts := get(t, q, "jobs", 1, 1, 0, 0)
	for range 3 {
		q.Unget(req, ts)
		ts = get(t, q, "jobs", 1, 1, 0, 2*time.Second)
		if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 1 {
			t.Fatalf("after an unget got %+v, want task %d first again, attempt 1", ts, ids[0])
		}
	}
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	ts = get(t, q, "jobs", 1, 1, 0, 2*time.Second)
	if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 2 {
		t.Fatalf("after a failure got %+v, want task %d first again, attempt 2", ts, ids[0])
	}
	q.Unget(req, ts) // its last attempt
	ts = get(t, q, "jobs", 1, 2, 0, 2*time.Second)
	if got := payloads(ts); !slices.Equal(got, []string{"later", "t"}) {
		t.Fatalf("after an unget of the last attempt got %q, want later then t", got)
	}
	if ts[1].ID != ids[0] || ts[1].Attempts != 2 {
		t.Errorf("task ungot on its last attempt came back as %+v, want id %d, attempt 2 again", ts[1], ids[0])
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); err != nil {
		t.Fatal(err)
	}
	st, err := q.Stats("jobs")
	if err != nil || st.Dead != 0 || st.Ready != 0 || st.Leased != 0 {
		t.Fatalf("stats %+v, %v: want nothing dead, ready or leased", st, err)
	}
}

// A NoAck get's tasks are taken for good once the server says their reply
// was written (Delivered); a reply that was not goes back ahead of newer
// tasks (Unget); and a delivery the server says nothing of is taken when
// its lease runs out.
func TestNoAckTakenOnceDelivered(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	reaping(t, q)
	put(t, q, "results", "a", "b")
	req := queue.GetRequest{Queue: "results", Max: 2, Owner: 1, NoAck: true}
	ts, err := q.Get(context.Background(), req, nil)
	if err != nil || len(ts) != 2 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	put(t, q, "results", "c")
	q.Unget(req, ts)
	req.Max = 3
	ts, err = q.Get(context.Background(), req, nil)
	if got := payloads(ts); err != nil || !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("after an unget got %q (%v), want a b c: a and b back in front", got, err)
	}
	q.Delivered(req, ts) // acked in the background
	var st queue.Stats
	waitFor(t, "all 3 taken, none leased", func() bool {
		st, err = q.Stats("results")
		return err == nil && st.Ready == 0 && st.Leased == 0 && st.Done == 3
	})

	put(t, q, "results", "d")
	req.Lease = 100 * time.Millisecond
	if ts, err := q.Get(context.Background(), req, nil); err != nil || len(ts) != 1 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := q.Stats("results")
		if err == nil && st.Leased == 0 && st.Done == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, %v: a NoAck delivery never confirmed still not taken after its 100ms lease", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An admin walk gives each request the request timeout, not the walk as
// a whole: a dead-letter queue that takes longer than one timeout to
// walk is requeued whole, in one call.
func TestRequeueOfALongDeadLetterQueue(t *testing.T) {
	node := startNode(t)
	// Each request of the walk has 300ms, which a busy machine can take
	// (at 100ms it failed at load 10); the walk takes a few of them.
	const timeout = 300 * time.Millisecond
	q := newQueues(t, node, jsqueue.Config{RequestTimeout: timeout})
	// A walk reads 64 messages at once and moves 256 at a time: 4,000
	// took about 0.5 s here.
	const n = 4000
	items := make([]string, n)
	for i := range items {
		items[i] = "t"
	}
	// Put through a gateway with the default timeout: 4,000 at once may
	// take longer than the walk's here.
	put(t, newQueues(t, node, jsqueue.Config{}), queue.DeadLetterName("jobs"), items...)
	start := time.Now()
	moved, err := q.Requeue("jobs", nil)
	took := time.Since(start)
	if err != nil || moved != n {
		t.Fatalf("requeue in %v: %d moved, %v; want all %d", took, moved, err, n)
	}
	st, err := q.Stats("jobs")
	if err != nil || st.Ready != n || st.Dead != 0 {
		t.Fatalf("stats %+v, %v: want %d ready, none dead", st, err, n)
	}
	if took < timeout {
		t.Logf("the walk took %v, less than one request timeout: this run did not test what it means to", took)
	}
}

// With a max length a put waits until its batch fits, or fails with
// ErrQueueFull having added nothing; results are never refused.
func TestMaxLen(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{MaxLen: 2})
	reaping(t, q)
	put(t, q, "jobs", "a", "b")
	one := []queue.Item{{Payload: []byte("c")}}
	if _, err := q.Put(queue.NoWait, queue.PutRequest{Queue: "jobs", Items: one}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("put into a full queue without waiting: %v, want ErrQueueFull", err)
	}
	start := time.Now()
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: one, MaxWait: 200 * time.Millisecond}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("put into a full queue: %v, want ErrQueueFull", err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond || waited > 5*time.Second {
		t.Errorf("a put with 200ms to wait gave up after %v", waited)
	}
	three := []queue.Item{{Payload: []byte("x")}, {Payload: []byte("y")}, {Payload: []byte("z")}}
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: three, MaxWait: time.Minute}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("a batch longer than the max length: %v, want ErrQueueFull at once", err)
	}
	if _, err := q.Put(queue.NoWait, queue.PutRequest{Queue: "jobs", Items: one, Results: true}); err != nil {
		t.Fatalf("results into a full queue: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: one, MaxWait: 10 * time.Second})
		done <- err
	}()
	ts := get(t, q, "jobs", 1, 2, 0, 0)
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a waiting put once there was room: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting put did not go in once there was room")
	}
	st, err := q.Stats("jobs")
	if err != nil || st.Ready != 2 || st.MaxLen != 2 || st.Puts != 4 {
		t.Fatalf("stats %+v, %v: want 2 ready (the result and the waiting put), max length 2, 4 puts", st, err)
	}
}

// TestGetsKeepTheirSubscriptions: gets pull through inboxes that outlive
// them, not through a subscription made and dropped per get (as
// jetstream's Fetch does), which changes the server's subject index and
// flushes its cache every time. A get that gives up before JetStream has
// answered drops its inbox, so that JetStream drops its request too, and
// the task that comes next is delivered to the next get, its first
// attempt.
func TestGetsKeepTheirSubscriptions(t *testing.T) {
	node := startNode(t)
	q := newQueues(t, node, jsqueue.Config{})
	put(t, q, "jobs", "warm")
	get(t, q, "jobs", 1, 1, 0, 0)
	before := node.SubscriptionsMade()
	gets := 0
	for i := range 20 {
		put(t, q, "jobs", "a", "b")
		// A get returns once one task comes, with what else is there
		// then: the second may not be yet, on a busy machine.
		for got := 0; got < 2; gets++ {
			ts := get(t, q, "jobs", 1, 10, 0, time.Second)
			if len(ts) == 0 {
				t.Fatalf("round %d: nothing after %d of 2 tasks", i, got)
			}
			got += len(ts)
		}
		if ts, err := q.Get(queue.NoWait, queue.GetRequest{Queue: "jobs", Max: 10, Owner: 1}, nil); len(ts) != 0 || err != nil {
			t.Fatalf("get of an empty queue: %v, %v", payloads(ts), err)
		}
		get(t, q, "jobs", 1, 10, 0, 100*time.Millisecond) // empty, waits
		gets += 2
	}
	if made := node.SubscriptionsMade() - before; made > 10 {
		t.Fatalf("%d gets made %d subscriptions, want a few at most", gets, made)
	}

	ctx, cancel := context.WithCancel(context.Background())
	gave := make(chan struct{})
	go func() {
		defer close(gave)
		_, _ = q.Get(ctx, queue.GetRequest{Queue: "jobs", Max: 1, Owner: 2, MaxWait: time.Minute}, nil)
	}()
	time.Sleep(50 * time.Millisecond) // its request is at the server
	cancel()
	<-gave
	put(t, q, "jobs", "late")
	ts := get(t, q, "jobs", 3, 1, 0, 2*time.Second)
	if len(ts) != 1 || string(ts[0].Payload) != "late" || ts[0].Attempts != 1 {
		t.Fatalf("after a get gave up, the next got %v (%+v), want the task on its first attempt", payloads(ts), ts)
	}
}

// TestConcurrentAcks: acks of many clients at once, on one connection,
// each confirmed by its last ack's answer, each return once their own
// acks are stored: every task is done once, and none is left ready or
// leased.
func TestConcurrentAcks(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	const n, clients = 400, 8
	items := make([]string, n)
	for i := range items {
		items[i] = strconv.Itoa(i)
	}
	put(t, q, "jobs", items...)
	var wg sync.WaitGroup
	var done atomic.Int64
	deadline := time.Now().Add(30 * time.Second)
	for c := range clients {
		owner := uint64(c + 1)
		wg.Go(func() {
			for done.Load() < n {
				ts, err := q.Get(queue.NoWait, queue.GetRequest{Queue: "jobs", Max: 1 + c%4, Owner: owner}, nil)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ts) == 0 {
					// The others hold the rest, or a get found none at
					// the moment: only the count says when all are done.
					if time.Now().After(deadline) {
						t.Errorf("client %d: %d of %d acked after 30s", owner, done.Load(), n)
						return
					}
					time.Sleep(5 * time.Millisecond)
					continue
				}
				ids := make([]uint64, len(ts))
				for i, task := range ts {
					ids[i] = task.ID
				}
				acked, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: owner, IDs: ids}, nil)
				if err != nil || len(acked) != len(ids) {
					t.Errorf("ack of %d: %d acked, %v", len(ids), len(acked), err)
					return
				}
				done.Add(int64(len(acked)))
			}
		})
	}
	wg.Wait()
	st, err := q.Stats("jobs")
	if err != nil || done.Load() != n || st.Ready != 0 || st.Leased != 0 || st.Done != n {
		t.Fatalf("%d acked; stats %+v, %v; want all %d done, none ready or leased", done.Load(), st, err, n)
	}
}

// A walk of a queue reads many messages at once, and steps over gaps
// wider than that: peek and requeue keep the tasks' order, across gaps
// and requeues of more than one batch.
func TestWalksKeepOrderAcrossGaps(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	dead := queue.DeadLetterName("jobs")
	items := make([]string, 700)
	for i := range items {
		items[i] = strconv.Itoa(i)
	}
	ids := put(t, q, dead, items...)
	// Gaps: 200 tasks in a row (wider than a walk reads at once) and
	// every third of the last hundred.
	var gone []uint64
	want := []string{}
	for i, id := range ids {
		if i >= 100 && i < 300 || i >= 600 && i%3 == 0 {
			gone = append(gone, id)
		} else {
			want = append(want, items[i])
		}
	}
	if n, err := q.Drop(dead, gone); err != nil || n != len(gone) {
		t.Fatalf("drop: %d, %v; want %d", n, err, len(gone))
	}
	peeked, err := q.Peek(dead, len(items))
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(peeked); !slices.Equal(got, want) {
		t.Fatalf("peek: %d tasks %v...; want %d %v...", len(got), got[:min(5, len(got))], len(want), want[:5])
	}
	if first, err := q.Peek(dead, 3); err != nil || !slices.Equal(payloads(first), want[:3]) {
		t.Fatalf("peek of 3: %v, %v; want %v", payloads(first), err, want[:3])
	}
	// Two named tasks, on either side of the wide gap, then the rest.
	if n, err := q.Requeue("jobs", []uint64{ids[99], ids[300]}); err != nil || n != 2 {
		t.Fatalf("requeue of two: %d, %v", n, err)
	}
	moved, err := q.Requeue("jobs", nil)
	if err != nil || moved != len(want)-2 {
		t.Fatalf("requeue: %d, %v; want %d", moved, err, len(want)-2)
	}
	wantOrder := append([]string{"99", "300"}, slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == "99" || s == "300" })...)
	var got []string
	for len(got) < len(wantOrder) {
		ts := get(t, q, "jobs", 1, 1000, time.Minute, time.Second)
		if len(ts) == 0 {
			break
		}
		got = append(got, payloads(ts)...)
	}
	if !slices.Equal(got, wantOrder) {
		t.Fatalf("requeued in the order %v; want %v", got, wantOrder)
	}
	if st, err := q.Stats(dead); err != nil || st.Ready != 0 {
		t.Fatalf("dead letters left: %+v, %v", st, err)
	}
}

// A get with a bounded wait answers by its wait's end, or by half the
// request timeout if that is later, while its node is down: its client
// allows it only a few seconds over its wait. Each call to JetStream
// bounded by the request timeout alone took it longer (opening the queue
// took the whole timeout, and the wait came on top), and so did the acks
// of the tasks its client's call before took with NoAck.
func TestGetsAnswerInTimeWhileTheNodeIsDown(t *testing.T) {
	const requestTimeout = 6 * time.Second
	n := startNode(t)
	q := newQueues(t, n, jsqueue.Config{RequestTimeout: requestTimeout})
	put(t, q, "known", "1")
	if _, err := q.Put(context.Background(), queue.PutRequest{Queue: "levels",
		Items: []queue.Item{{Payload: []byte("urgent"), Priority: 7}}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"known", "levels"} {
		if ts := get(t, q, name, 1, 1, time.Minute, time.Second); len(ts) != 1 {
			t.Fatalf("get from %s: %d tasks; want 1", name, len(ts))
		}
	}
	put(t, q, "results", "r")
	noAck := queue.GetRequest{Queue: "results", Max: 1, Owner: 3, NoAck: true}
	received, err := q.Get(context.Background(), noAck, nil)
	if err != nil || len(received) != 1 {
		t.Fatalf("NoAck get: %d tasks, %v; want 1", len(received), err)
	}
	n.Shutdown()

	// The server says a NoAck get's tasks were delivered before it reads
	// the client's next call: that must not wait for their acks.
	start := time.Now()
	q.Delivered(noAck, received)
	if took := time.Since(start); took > time.Second {
		t.Errorf("Delivered took %v with the node down; want at once", took)
	}

	// The answer is due by half the request timeout: allow 1.5 s more.
	const due = requestTimeout/2 + 1500*time.Millisecond
	for _, c := range []struct {
		name string
		ctx  context.Context
		wait time.Duration
	}{
		{"unopened", context.Background(), 300 * time.Millisecond},
		{"known", context.Background(), 300 * time.Millisecond},
		{"levels", context.Background(), 300 * time.Millisecond},
		{"known", queue.NoWait, 0},
	} {
		start := time.Now()
		ts, err := q.Get(c.ctx, queue.GetRequest{Queue: c.name, Max: 4, Owner: 2, MaxWait: c.wait}, nil)
		if took := time.Since(start); took > due {
			t.Errorf("get from %s (wait %v) answered after %v; want by %v", c.name, c.wait, took, due)
		}
		if len(ts) > 0 || err != nil && !errors.Is(err, queue.ErrUnavailable) {
			t.Errorf("get from %s (wait %v): %d tasks, %v; want none, and no error but unavailable", c.name, c.wait, len(ts), err)
		}
	}
}

// A queue paused and resumed through one gateway serves the gets waiting
// on it through another at once. JetStream's resume of a consumer wakes
// none of the pull requests waiting at it: a get waiting when the queue
// was resumed got its task only when its request expired (19.5 s of its
// 20 s). Gateways now wake their gets on the advisory of the resume.
func TestResumeServesWaitingGets(t *testing.T) {
	node := startNode(t)
	q := newQueues(t, node, jsqueue.Config{})
	admin := newQueues(t, node, jsqueue.Config{})
	put(t, q, "jobs", "warm-up")
	ackIDs(t, q, "jobs", 1, taskIDs(get(t, q, "jobs", 1, 1, 0, time.Second))...)
	if err := admin.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	put(t, q, "jobs", "x")
	const wait = 20 * time.Second
	got := make(chan []queue.Task, 1)
	go func() {
		ts, err := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: 2, MaxWait: wait}, nil)
		if err != nil && !errors.Is(err, queue.ErrClosed) { // closed: the test gave up on it
			t.Error(err)
		}
		got <- ts
	}()
	// The get's request waits at the consumer once the consumer counts it.
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st, err := q.Stats("jobs")
		if err != nil {
			return err
		}
		if st.Consumers < 1 {
			return fmt.Errorf("%d gets waiting", st.Consumers)
		}
		return nil
	})
	if err := admin.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	select {
	case ts := <-got:
		if len(ts) != 1 || string(ts[0].Payload) != "x" {
			t.Fatalf("got %q, want x", payloads(ts))
		}
		t.Logf("served %v after the resume", time.Since(resumed).Round(time.Millisecond))
	case <-time.After(wait / 4):
		t.Fatalf("the waiting get got nothing %v after the resume", wait/4)
	}
}

// Listing the queues fails while JetStream does not answer, rather than
// list none: an operator's inspect said "(no queues)" while the cluster
// had lost its quorum.
func TestListingFailsWithoutJetStream(t *testing.T) {
	n := startNode(t)
	q := newQueues(t, n, jsqueue.Config{RequestTimeout: time.Second})
	put(t, q, "jobs", "1")
	if names, err := q.Queues(); err != nil || !slices.Equal(names, []string{"jobs"}) {
		t.Fatalf("Queues() = %q, %v", names, err)
	}
	n.Shutdown()
	if names, err := q.Queues(); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("Queues() with the node down = %q, %v; want ErrUnavailable", names, err)
	}
	if all, err := q.AllStats(); !errors.Is(err, queue.ErrUnavailable) {
		t.Errorf("AllStats() with the node down = %v, %v; want ErrUnavailable", all, err)
	}
}

// getWaiting starts a get of one task from q's queue name, waiting up to
// 20 s, and returns once the queue counts it waiting; what it takes
// comes on the channel.
func getWaiting(t *testing.T, q *jsqueue.Queues, name string) <-chan []queue.Task {
	t.Helper()
	got := make(chan []queue.Task, 1)
	go func() {
		ts, err := q.Get(context.Background(), queue.GetRequest{Queue: name, Max: 1, Owner: 2, MaxWait: 20 * time.Second}, nil)
		if err != nil && !errors.Is(err, queue.ErrClosed) { // closed: the test gave up on it
			t.Error(err)
		}
		got <- ts
	}()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st, err := q.Stats(name); err != nil || st.Consumers < 1 {
			return fmt.Errorf("stats %+v, %v; want a get waiting", st, err)
		}
		return nil
	})
	return got
}

// The same when the gateway serving the get opened the queue after it was
// paused (it took the pause's advisory for no queue of its own), and when
// the resume goes through the gateway serving the get: a sweep's worker
// waited out its get (3-13 s) in 13 runs of 14.
func TestResumeServesGetsOfAnyGateway(t *testing.T) {
	for _, through := range []string{"another gateway", "the same gateway"} {
		t.Run(through, func(t *testing.T) {
			node := startNode(t)
			admin := newQueues(t, node, jsqueue.Config{})
			if err := admin.SetPaused("jobs", true); err != nil {
				t.Fatal(err)
			}
			put(t, admin, "jobs", "x")
			q := newQueues(t, node, jsqueue.Config{}) // opens the queue paused
			resumer := admin
			if through == "the same gateway" {
				resumer = q
			}
			got := getWaiting(t, q, "jobs")
			if ts := get(t, admin, "jobs", 1, 1, time.Minute, 300*time.Millisecond); len(ts) != 0 {
				t.Fatalf("paused, handed out %v", payloads(ts))
			}
			if err := resumer.SetPaused("jobs", false); err != nil {
				t.Fatal(err)
			}
			select {
			case ts := <-got:
				if len(ts) != 1 || string(ts[0].Payload) != "x" {
					t.Fatalf("got %q, want x", payloads(ts))
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the waiting get got nothing 3s after the resume")
			}
		})
	}
}

// A task stored alone whose results could not be stored on its last
// attempt is dead-lettered when it comes again, as a packed task is: the
// failure is marked in the deliveries' record as the task is given back.
// Unmarked, the redelivery past the last attempt would run once more, as
// one whose delivery was lost does.
func TestResultsNotStoredOnTheLastAttemptIsDeadLettered(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{MaxAttempts: 1})
	ids := put(t, q, "jobs", "t")
	get(t, q, "jobs", 1, 1, time.Minute, 0)
	ackResultsFailing(t, q, "jobs", 1, ids)
	if ts := get(t, q, "jobs", 2, 1, time.Minute, 1500*time.Millisecond); len(ts) != 0 {
		t.Fatalf("after its results failed on its last attempt got %+v, want it dead-lettered", ts)
	}
	if st, err := q.Stats(queue.DeadLetterName("jobs")); err != nil || st.Ready != 1 {
		t.Fatalf("dead letters: %+v, %v; want the task", st, err)
	}
}

// ackResultsFailing acks tasks ids of queue name, leased to owner, with
// results that cannot be stored (their queue unavailable), and checks that
// the ack says so.
func ackResultsFailing(t *testing.T, q *jsqueue.Queues, name string, owner uint64, ids []uint64) {
	t.Helper()
	if _, err := q.Ack(queue.AckRequest{Queue: name, Owner: owner, IDs: ids, Publish: func([]queue.Task) ([]queue.Task, error) {
		return nil, queue.ErrUnavailable
	}}, nil); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("ack whose results failed: %v", err)
	}
}
