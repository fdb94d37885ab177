package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// ack acks ids for owner and fails the test on an error.
func ackIDs(t *testing.T, q *jsqueue.Queues, name string, owner uint64, ids ...uint64) {
	t.Helper()
	if _, err := q.Ack(queue.AckRequest{Queue: name, Owner: owner, IDs: ids}, nil); err != nil {
		t.Fatalf("ack %v: %v", ids, err)
	}
}

// taskIDs returns the IDs of ts.
func taskIDs(ts []queue.Task) []uint64 {
	out := make([]uint64, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// stored is how many messages the queue's stream holds: a pack is acked,
// and leaves it, once all its tasks are done.
func stored(t *testing.T, q *jsqueue.Queues, name string) int {
	t.Helper()
	n, err := jsqueue.StoredMessages(q, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// storedBecomes waits for queue name to hold want messages, as it does
// once acks have been taken: JetStream answers an ack before it removes
// the message of a work-queue stream. what says when, for the failure.
func storedBecomes(t *testing.T, q *jsqueue.Queues, name string, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := stored(t, q, name)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages stored %s, want %d", n, what, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPackedAndSingleTasksInOrder: tasks stored alone (a put of one task)
// after packs go out after the packs' tasks, in the order stored, in one
// get that takes them all and across smaller gets. Before, a get handed
// out the single tasks it pulled first.
func TestPackedAndSingleTasksInOrder(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	put(t, q, "jobs", "p1", "p2", "p3", "p4", "p5", "p6")
	put(t, q, "jobs", "s1")
	put(t, q, "jobs", "s2")
	put(t, q, "jobs", "p7", "p8", "p9")
	put(t, q, "jobs", "s3")
	want := []string{"p1", "p2", "p3", "p4", "p5", "p6", "s1", "s2", "p7", "p8", "p9", "s3"}
	if got := payloads(get(t, q, "jobs", 1, 100, 0, time.Second)); !slices.Equal(got, want) {
		t.Fatalf("a get of all took %v, want %v", got, want)
	}

	put(t, q, "small", "p1", "p2", "p3", "p4")
	put(t, q, "small", "s1")
	if got := payloads(get(t, q, "small", 1, 2, 0, time.Second)); !slices.Equal(got, []string{"p1", "p2"}) {
		t.Fatalf("a get of 2 took %v, want [p1 p2]", got)
	}
	// The next gets: one, if the first pulled s1 with the pack (it holds
	// both), or two (JetStream may hand a fetch the pack alone).
	var got []string
	for range 2 {
		if got = append(got, payloads(get(t, q, "small", 1, 10, 0, time.Second))...); len(got) >= 3 {
			break
		}
	}
	if !slices.Equal(got, []string{"p3", "p4", "s1"}) {
		t.Fatalf("the next gets took %v, want [p3 p4 s1]", got)
	}
}

// Tasks of one put are packed, and gets of fewer tasks than a pack holds
// take them in order, the pack's rest first.
func TestPackedTasksInOrder(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	putIDs := put(t, q, "jobs", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10")
	if len(putIDs) != 10 || len(slices.Compact(slices.Clone(putIDs))) != 10 {
		t.Fatalf("ids %v: want 10 distinct", putIDs)
	}
	if n := stored(t, q, "jobs"); n != 3 {
		t.Fatalf("%d messages stored, want 3 packs (4, 4 and 2)", n)
	}
	var got []queue.Task
	for _, max := range []int{3, 1, 5, 4} {
		ts := get(t, q, "jobs", 1, max, 0, time.Second)
		if len(ts) > max {
			t.Fatalf("a get of %d took %d", max, len(ts))
		}
		got = append(got, ts...)
	}
	if want := []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}; !slices.Equal(payloads(got), want) {
		t.Fatalf("got %q, want %q", payloads(got), want)
	}
	if !slices.Equal(taskIDs(got), putIDs) {
		t.Fatalf("ids %v, want the put's %v", taskIDs(got), putIDs)
	}
	ackIDs(t, q, "jobs", 1, putIDs[:3]...)
	if n := stored(t, q, "jobs"); n != 3 {
		t.Fatalf("%d messages stored after 3 of the first pack's 4 tasks, want 3", n)
	}
	ackIDs(t, q, "jobs", 1, putIDs[3])
	storedBecomes(t, q, "jobs", 2, "after the first pack was done")
	ackIDs(t, q, "jobs", 1, putIDs[4:]...)
	storedBecomes(t, q, "jobs", 0, "after every task was done")
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: putIDs[:1]}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Errorf("second ack of a packed task: %v, want ErrNotLeased", err)
	}
}

// Tasks of a few MiB are stored whole, the packs of a put within the
// largest message the node takes; a task over it is refused at once, for
// good, where JetStream's refusal read as "unavailable" and a map retried
// it without end.
func TestPacksOfLargeTasksFitAMessage(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	big := func(c byte) string { return strings.Repeat(string(c), 3<<20) }
	putIDs := put(t, q, "jobs", big('a'), big('b'), big('c'), big('d'))
	if n := stored(t, q, "jobs"); n != 2 {
		t.Fatalf("%d messages stored, want 2 packs of two 3 MiB tasks (8 MiB a message)", n)
	}
	got := get(t, q, "jobs", 1, 4, 0, time.Second)
	got = append(got, get(t, q, "jobs", 1, 4, 0, time.Second)...)
	if len(got) != 4 || !slices.Equal(taskIDs(got), putIDs) {
		t.Fatalf("got %d tasks, ids %v, want %v", len(got), taskIDs(got), putIDs)
	}
	for i, c := range "abcd" {
		if string(got[i].Payload) != big(byte(c)) {
			t.Fatalf("task %d's payload changed", i)
		}
	}
	start := time.Now()
	_, err := q.Put(context.Background(), queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: make([]byte, 9<<20)}}})
	if !errors.Is(err, queue.ErrBadArgument) || !strings.Contains(err.Error(), "max_payload") {
		t.Fatalf("put of 9 MiB: %v, want a bad argument naming max_payload", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %v", d)
	}
}

// A packed task that fails goes back in front, counting the attempt,
// then to the dead-letter queue; one whose lease runs out or whose worker
// leaves comes back the same way; one never delivered comes back without
// an attempt counted.
func TestPackedTaskFailures(t *testing.T) {
	var mu sync.Mutex
	var dead []queue.Task
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 8, MaxAttempts: 2, OnDead: func(name string, task queue.Task) {
		mu.Lock()
		defer mu.Unlock()
		dead = append(dead, task)
	}})
	reaping(t, q)
	putIDs := put(t, q, "jobs", "a", "b", "c", "d")
	ts := get(t, q, "jobs", 1, 2, 0, time.Second) // a, b; c, d held
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "boom"}); err != nil {
		t.Fatal(err)
	}
	again := get(t, q, "jobs", 2, 1, 0, time.Second)
	if len(again) != 1 || again[0].ID != putIDs[0] || again[0].Attempts != 2 || again[0].LastError != "boom" {
		t.Fatalf("after a nack got %+v, want task a in front, attempt 2, error boom", again)
	}
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 2, ID: again[0].ID, Error: "boom again"}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(dead) != 1 || dead[0].ID != putIDs[0] || dead[0].Attempts != 2 || dead[0].LastError != "boom again" {
		t.Fatalf("dead %+v: want task a after 2 attempts", dead)
	}
	mu.Unlock()
	if dts, err := q.Peek(queue.DeadLetterName("jobs"), 10); err != nil || len(dts) != 1 || dts[0].ID != putIDs[0] {
		t.Fatalf("dead-letter queue %+v, %v: want task a, with its ID", dts, err)
	}

	// c is handed out and never delivered: back in front, not counted.
	c := get(t, q, "jobs", 3, 1, 0, time.Second)
	q.Unget(queue.GetRequest{Queue: "jobs", Owner: 3}, c)
	c = get(t, q, "jobs", 3, 1, 100*time.Millisecond, time.Second)
	if len(c) != 1 || c[0].ID != putIDs[2] || c[0].Attempts != 1 {
		t.Fatalf("after an unget got %+v, want task c at attempt 1", c)
	}
	d := get(t, q, "jobs", 4, 1, 0, time.Second)
	if len(d) != 1 || d[0].ID != putIDs[3] {
		t.Fatalf("got %+v, want task d", d)
	}
	// c's lease runs out: back, attempt 2.
	c = get(t, q, "jobs", 5, 1, 0, 5*time.Second)
	if len(c) != 1 || c[0].ID != putIDs[2] || c[0].Attempts != 2 || c[0].LastError != "lease expired" {
		t.Fatalf("after its lease ran out got %+v, want task c at attempt 2", c)
	}
	if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 3, IDs: taskIDs(c)}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Errorf("late ack of the expired delivery: %v, want ErrNotLeased", err)
	}
	// Worker 1 leaves holding b: back, attempt 2.
	if n := q.Release(1); n != 1 {
		t.Fatalf("Release = %d, want 1", n)
	}
	b := get(t, q, "jobs", 6, 4, 0, time.Second)
	if len(b) != 1 || b[0].ID != putIDs[1] || b[0].LastError != "worker disconnected" || b[0].Attempts != 2 {
		t.Fatalf("after a release got %+v, want b at attempt 2", b)
	}
	if n := stored(t, q, "jobs"); n != 1 {
		t.Fatalf("%d messages stored with tasks out, want the pack", n)
	}
	ackIDs(t, q, "jobs", 5, c[0].ID)
	ackIDs(t, q, "jobs", 4, d[0].ID)
	ackIDs(t, q, "jobs", 6, b[0].ID)
	storedBecomes(t, q, "jobs", 0, "after every task was done or dead")
}

// A get waiting on an empty queue takes a packed task that comes back
// meanwhile, at once.
func TestWaitingGetTakesARequeuedPackedTask(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	put(t, q, "jobs", "a", "b")
	ts := get(t, q, "jobs", 1, 2, 0, time.Second)
	got := make(chan []queue.Task, 1)
	go func() {
		ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 4, Owner: 2, MaxWait: 20 * time.Second}, nil)
		got <- ts
	}()
	time.Sleep(100 * time.Millisecond) // let the get wait (it may also see the nack first)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[1].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	select {
	case again := <-got:
		if len(again) != 1 || again[0].ID != ts[1].ID {
			t.Fatalf("the waiting get took %+v, want task b", again)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting get did not take the task that came back")
	}
}

// Results taken with NoAck: a pack leaves the stream once every task of
// it is delivered.
func TestPackedNoAckGets(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	reaping(t, q)
	put(t, q, "results", "1", "2", "3")
	req := queue.GetRequest{Queue: "results", Max: 2, Owner: 1, NoAck: true}
	first, err := q.Get(context.Background(), req, nil)
	if err != nil || len(first) != 2 {
		t.Fatalf("get: %+v, %v", first, err)
	}
	q.Delivered(req, first)
	// The third is given back undelivered, then taken again.
	third, err := q.Get(context.Background(), req, nil)
	if err != nil || len(third) != 1 || string(third[0].Payload) != "3" {
		t.Fatalf("get: %+v, %v", third, err)
	}
	q.Unget(req, third)
	if n := stored(t, q, "results"); n != 1 {
		t.Fatalf("%d messages stored with a task undelivered, want 1", n)
	}
	third, err = q.Get(context.Background(), req, nil)
	if err != nil || len(third) != 1 || string(third[0].Payload) != "3" {
		t.Fatalf("get after unget: %+v, %v", third, err)
	}
	q.Delivered(req, third)
	storedBecomes(t, q, "results", 0, "after every task was delivered")
}

// A gateway that closes with a pack partly done records its done tasks
// and hands the pack back: another gateway runs only the others, with
// their IDs, and before the tasks put after them. Until the twenty-third
// session they were stored again at the end of the queue, behind "5".
func TestClosingGatewayHandsOverAPartlyDonePack(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{HoldFor: time.Minute, Pack: 8})
	b := newQueues(t, n, jsqueue.Config{HoldFor: time.Minute, Pack: 8})
	putIDs := put(t, a, "jobs", "1", "2", "3", "4")
	ts := get(t, a, "jobs", 1, 2, 0, time.Second) // 3 and 4 held
	ackIDs(t, a, "jobs", 1, ts[0].ID)             // 2 still leased
	later := put(t, a, "jobs", "5")
	a.Close()
	rest := getAll(t, b, 7, 4, 5*time.Second)
	if got := payloads(rest); !slices.Equal(got, []string{"2", "3", "4", "5"}) {
		t.Fatalf("after the close got %q, want 2 3 4, then 5", got)
	}
	if want := append(slices.Clone(putIDs[1:]), later...); !slices.Equal(taskIDs(rest), want) {
		t.Errorf("ids %v, want %v", taskIDs(rest), want)
	}
	// The pack's delivery again starts its tasks at attempt 1, as after
	// a gateway's death (unpackLocked).
	if rest[0].Attempts != 1 || rest[1].Attempts != 1 {
		t.Errorf("attempts %d and %d: want 1 for the task that was out and for one held", rest[0].Attempts, rest[1].Attempts)
	}
	ackIDs(t, b, "jobs", 7, taskIDs(rest)...)
	storedBecomes(t, b, "jobs", 0, "after every task was done")

	// A pack none of whose tasks is done goes back whole.
	c := newQueues(t, n, jsqueue.Config{HoldFor: time.Minute, Pack: 8})
	put(t, c, "whole", "x", "y")
	get(t, c, "whole", 1, 1, 0, time.Second)
	c.Close()
	if got := payloads(get(t, b, "whole", 7, 8, 0, 5*time.Second)); !slices.Equal(got, []string{"x", "y"}) {
		t.Fatalf("after the close got %q, want x y", got)
	}
}

// A gateway that dies holding a pack: JetStream hands the whole pack to
// another gateway after AckWait, done tasks included (what packing gives
// up, see pack.go). The pack's redelivery costs its tasks no attempt: with
// one attempt allowed, neither is dead-lettered, though only one was
// handed out.
func TestDeadGatewaysPackGoesToAnother(t *testing.T) {
	n := startNode(t)
	cfg := jsqueue.Config{HoldFor: time.Minute, Pack: 8, AckWait: 300 * time.Millisecond, MaxAttempts: 1}
	b := newQueues(t, n, cfg)
	cfgA := cfg
	cfgA.Conn = connect(t, n)
	dying, err := jsqueue.New(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	putIDs := put(t, b, "jobs", "1", "2")
	if ts := get(t, dying, "jobs", 1, 1, time.Minute, 0); len(ts) != 1 {
		t.Fatal("no task")
	}
	cfgA.Conn.Close()
	ts := get(t, b, "jobs", 7, 8, 0, 5*time.Second)
	if !slices.Equal(taskIDs(ts), putIDs) || ts[0].Attempts != 1 || ts[1].Attempts != 1 || ts[0].LastError != "lease expired" {
		t.Fatalf("got %+v, want both tasks at attempt 1", ts)
	}
	dying.Close()
}

// Peek lists packed tasks one by one; drop refuses them (their message
// carries others); purge drops what this gateway holds of them.
func TestPackedAdmin(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	putIDs := put(t, q, "jobs", "1", "2", "3")
	ts, err := q.Peek("jobs", 2)
	if err != nil || !slices.Equal(payloads(ts), []string{"1", "2"}) || !slices.Equal(taskIDs(ts), putIDs[:2]) {
		t.Fatalf("peek: %+v, %v", ts, err)
	}
	if _, err := q.Drop("jobs", putIDs[1:2]); !errors.Is(err, queue.ErrBadArgument) {
		t.Errorf("drop of a packed task: %v, want ErrBadArgument", err)
	}
	get(t, q, "jobs", 1, 1, 0, time.Second) // 2 and 3 held
	if n, err := q.Purge("jobs"); err != nil || n != 3 {
		t.Fatalf("purge: %d, %v; want the pack's 3 tasks", n, err)
	}
	if ts := get(t, q, "jobs", 1, 4, 0, 200*time.Millisecond); len(ts) != 0 {
		t.Fatalf("after a purge got %+v", ts)
	}
}

// TestFiguresCountHeldAndRetryingTasks: a gateway's figures count the
// tasks of a pack it holds as ready, those out as leased, those done as
// neither, and a failed task waiting out its retry backoff, packed or
// stored alone, as delayed and retrying. (Done is near, not exact: the
// packs' counts reach their counter in the background.) Before, JetStream's count of the pack's
// delivery made every task of it leased, and a NAK with a delay too.
func TestFiguresCountHeldAndRetryingTasks(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	check := func(name string, ready, leased, retrying int) {
		t.Helper()
		st, err := q.Stats(name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Ready != ready || st.Leased != leased || st.Retrying != retrying || st.Delayed != retrying {
			t.Fatalf("%s: ready %d, leased %d, retrying %d, delayed %d; want %d, %d, %d, %d",
				name, st.Ready, st.Leased, st.Retrying, st.Delayed, ready, leased, retrying, retrying)
		}
	}
	put(t, q, "jobs", "1", "2", "3", "4", "5", "6", "7", "8")
	ts := get(t, q, "jobs", 1, 2, time.Minute, time.Second) // one pack out: 2 tasks leased, 2 held
	check("jobs", 6, 2, 0)
	ackIDs(t, q, "jobs", 1, ts[0].ID)
	check("jobs", 6, 1, 0)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[1].ID, Error: "later", RetryAfter: time.Hour}); err != nil {
		t.Fatal(err)
	}
	check("jobs", 6, 0, 1)

	put(t, q, "solo", "a") // stored alone
	ts = get(t, q, "solo", 1, 1, time.Minute, time.Second)
	check("solo", 0, 1, 0)
	if err := q.Nack(queue.NackRequest{Queue: "solo", Owner: 1, ID: ts[0].ID, Error: "later", RetryAfter: time.Hour}); err != nil {
		t.Fatal(err)
	}
	check("solo", 0, 0, 1)

	// A task stored alone given back with no delay waits for its
	// redelivery, ready, though JetStream counts it as a delivery not
	// yet acked; once a delivery comes after, nothing is known of it here
	// and it counts as JetStream says.
	put(t, q, "back", "b")
	ts = get(t, q, "back", 1, 1, time.Minute, time.Second)
	if err := q.Nack(queue.NackRequest{Queue: "back", Owner: 1, ID: ts[0].ID, Error: "again"}); err != nil {
		t.Fatal(err)
	}
	check("back", 1, 0, 0)
	if ts := get(t, q, "back", 1, 1, time.Minute, time.Second); len(ts) != 1 {
		t.Fatalf("got %d tasks, want the one given back", len(ts))
	}
	check("back", 0, 1, 0)
	if n := q.Release(1); n != 1 { // its worker gone
		t.Fatalf("released %d leases, want 1", n)
	}
	check("back", 1, 0, 0)
}

// While this gateway has paused a queue, it hands out none of the tasks
// it holds.
func TestPausedQueueHoldsPackedTasks(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	put(t, q, "jobs", "1", "2")
	get(t, q, "jobs", 1, 1, 0, time.Second)
	if err := q.SetPaused("jobs", true); err != nil {
		t.Fatal(err)
	}
	if ts := get(t, q, "jobs", 2, 1, 0, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("a paused queue handed out %+v", ts)
	}
	got := make(chan []queue.Task, 1)
	go func() {
		ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: 2, MaxWait: 20 * time.Second}, nil)
		got <- ts
	}()
	if err := q.SetPaused("jobs", false); err != nil {
		t.Fatal(err)
	}
	select {
	case ts := <-got:
		if len(ts) != 1 || string(ts[0].Payload) != "2" {
			t.Fatalf("after resume got %+v, want task 2", ts)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("resuming did not wake the waiting get")
	}
}

// Gets waiting when one of them takes a pack take its other tasks at once.
func TestWaitingGetsShareAPack(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 8})
	put(t, q, "jobs") // create the queue
	const waiting = 3
	var wg sync.WaitGroup
	counts := make([]int, waiting)
	for i := range waiting {
		wg.Go(func() {
			ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: uint64(i + 1), MaxWait: 20 * time.Second}, nil)
			counts[i] = len(ts)
		})
	}
	time.Sleep(200 * time.Millisecond) // let them wait (one may take the pack at once)
	put(t, q, "jobs", "1", "2", "3", "4", "5", "6", "7", "8")
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("gets waited on while the pack's tasks were held")
	}
	if !slices.Equal(counts, []int{1, 1, 1}) {
		t.Fatalf("the waiting gets took %v tasks, want one each", counts)
	}
}

// A task back in front wakes one waiting get, not all of them: each one
// woken drops its pull request's subscription.
func TestRequeueWakesOneGet(t *testing.T) {
	n := startNode(t)
	q := newQueues(t, n, jsqueue.Config{HoldFor: time.Minute, Pack: 2})
	put(t, q, "jobs", "a", "b")
	ts := get(t, q, "jobs", 1, 2, 0, time.Second)
	var wg sync.WaitGroup
	got := make(chan int, 20)
	for i := range 20 {
		wg.Go(func() {
			ts, _ := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: uint64(10 + i), MaxWait: 2 * time.Second}, nil)
			got <- len(ts)
		})
	}
	time.Sleep(300 * time.Millisecond) // let them wait
	before := n.SubscriptionsMade()
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(got)
	took := 0
	for k := range got {
		took += k
	}
	if took != 1 {
		t.Fatalf("%d gets took the task", took)
	}
	// The woken get's subscription, and at most a few more.
	if made := n.SubscriptionsMade() - before; made > 4 {
		t.Errorf("one task back in front made %d subscriptions: it woke many gets", made)
	}
}

// A packed task in the dead-letter queue is stored alone there: it can be
// dropped.
func TestDeadPackedTaskCanBeDropped(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 2, MaxAttempts: 1})
	put(t, q, "jobs", "a", "b")
	ts := get(t, q, "jobs", 1, 1, 0, time.Second)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: "x"}); err != nil {
		t.Fatal(err)
	}
	if n, err := q.Drop(queue.DeadLetterName("jobs"), taskIDs(ts)); n != 1 || err != nil {
		t.Fatalf("drop from the dead-letter queue: %d, %v", n, err)
	}
}

// A pack's tasks that no get through its gateway takes within HoldFor are
// stored again, alone, for every gateway: another gateway's worker takes
// them, with their IDs, and the pack is acked once its tasks are done or
// moved.
func TestHeldTasksMoveToAnotherGateway(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{Pack: 8, HoldFor: 200 * time.Millisecond})
	reaping(t, a)
	b := newQueues(t, n, jsqueue.Config{Pack: 8, HoldFor: time.Minute})
	putIDs := put(t, a, "jobs", "1", "2", "3", "4")
	first := get(t, a, "jobs", 1, 1, 0, time.Second)
	var rest []queue.Task
	deadline := time.Now().Add(10 * time.Second)
	for len(rest) < 3 && time.Now().Before(deadline) {
		rest = append(rest, get(t, b, "jobs", 2, 8, 0, time.Until(deadline))...)
	}
	if got := payloads(rest); !slices.Equal(got, []string{"2", "3", "4"}) {
		t.Fatalf("the other gateway got %q, want the held 2 3 4", got)
	}
	if !slices.Equal(taskIDs(rest), putIDs[1:]) || rest[0].Attempts != 1 {
		t.Fatalf("moved tasks %+v: want their IDs %v, attempt 1", rest, putIDs[1:])
	}
	ackIDs(t, a, "jobs", 1, first[0].ID)
	ackIDs(t, b, "jobs", 2, taskIDs(rest)...)
	// The pack is acked by its last task's settle: the ack, or the move,
	// which may count its tasks done just after b took them.
	deadline = time.Now().Add(5 * time.Second)
	for stored(t, a, "jobs") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d messages stored 5s after every task was done", stored(t, a, "jobs"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Stored again, not put again: Puts and Done count each task once
	// (the counters are added to every 100ms).
	for {
		st, err := b.Stats("jobs")
		if err == nil && st.Puts == 4 && st.Done == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, %v; want 4 put and 4 done", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A get that takes tasks for good (map's results) takes a task JetStream
// delivered past its last attempt rather than dead-letter it: its count
// is of deliveries whose acks JetStream did not see, and only a lease can
// fail. A leased get hands it out as its last attempt: the delivery past
// it was lost with its gateway, not failed (a failed last attempt is
// dead-lettered by the gateway it failed through).
func TestTakingForGoodIgnoresAttempts(t *testing.T) {
	n := startNode(t)
	cfg := jsqueue.Config{Pack: 1, AckWait: 300 * time.Millisecond, MaxAttempts: 1}
	b := newQueues(t, n, cfg)
	for _, noAck := range []bool{true, false} {
		cfgA := cfg
		cfgA.Conn = connect(t, n)
		dying, err := jsqueue.New(cfgA)
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("results-%v", noAck)
		ids := put(t, b, name, "r")
		if ts := get(t, dying, name, 1, 1, time.Minute, time.Second); len(ts) != 1 {
			t.Fatal("no task")
		}
		cfgA.Conn.Close() // its ack never comes
		ts, err := b.Get(context.Background(), queue.GetRequest{Queue: name, Max: 1, Owner: 7, NoAck: noAck, Lease: time.Minute, MaxWait: 5 * time.Second}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(ts) != 1 || ts[0].ID != ids[0] || !noAck && ts[0].Attempts != 1 {
			t.Fatalf("after its holder died got %+v, want task %d (leased: at attempt 1, its last)", ts, ids[0])
		}
		dying.Close()
	}
}

// A task delivered more than three times the attempts allowed, packed or
// stored alone, counts every delivery: a task that brings down each
// gateway holding it is dead-lettered rather than passed on for ever.
func TestDeliveredTooOftenIsDeadLettered(t *testing.T) {
	for _, pack := range []int{8, 1} {
		t.Run(fmt.Sprintf("pack %d", pack), func(t *testing.T) {
			n := startNode(t)
			cfg := jsqueue.Config{HoldFor: time.Minute, Pack: pack, AckWait: 300 * time.Millisecond, MaxAttempts: 1}
			b := newQueues(t, n, cfg)
			items := []string{"1", "2"}[:min(pack, 2)] // one message
			put(t, b, "jobs", items...)
			for i := range 3 { // deliveries 1 to 3, each to a gateway that dies holding it
				cfgA := cfg
				cfgA.Conn = connect(t, n)
				dying, err := jsqueue.New(cfgA)
				if err != nil {
					t.Fatal(err)
				}
				if ts := get(t, dying, "jobs", 1, 1, time.Minute, 5*time.Second); len(ts) != 1 || ts[0].Attempts != 1 {
					t.Fatalf("delivery %d: got %+v, want a task at attempt 1", i+1, ts)
				}
				cfgA.Conn.Close()
				dying.Close()
			}
			// Dead-lettering the redelivery does not end the get: it
			// waits on for a task to hand out.
			wait := 1500 * time.Millisecond
			start := time.Now()
			if ts := get(t, b, "jobs", 7, 8, time.Minute, wait); len(ts) != 0 {
				t.Fatalf("the fourth delivery handed out %+v, want its tasks dead-lettered", ts)
			}
			if took := time.Since(start); took < wait-50*time.Millisecond {
				t.Fatalf("the get returned empty after %v, before its wait of %v", took, wait)
			}
			st, err := b.Stats(queue.DeadLetterName("jobs"))
			if err != nil || st.Ready != len(items) {
				t.Fatalf("dead letters: %+v, %v; want the %d tasks", st, err, len(items))
			}
		})
	}
}

// Gets of a packed queue waiting on one gateway send only as many pull
// requests as the packs they need: the others wait for the tasks those
// bring. Each pulled a pack of its own before, and with many single-task
// workers a gateway held hundreds of tasks for over a second.
func TestWaitingGetsPullOnlyThePacksTheyNeed(t *testing.T) {
	node := startNode(t)
	g := newQueues(t, node, jsqueue.Config{Pack: 4, HoldFor: time.Minute})
	reaping(t, g)
	p := newQueues(t, node, jsqueue.Config{Pack: 4})
	if ts := get(t, g, "jobs", 1, 1, time.Minute, 10*time.Millisecond); len(ts) != 0 {
		t.Fatalf("took %v from a new queue", payloads(ts))
	}
	const gets = 6
	took := make(chan []queue.Task, gets)
	for i := range gets {
		go func() {
			ts, _ := g.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: uint64(i + 1), Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
			took <- ts
		}()
	}
	waitFor(t, "two pull requests for six gets, packs of four", func() bool {
		w, _, err := jsqueue.Waiting(p, "jobs")
		return err == nil && w == 2
	})
	time.Sleep(50 * time.Millisecond) // no more come
	if w, _, err := jsqueue.Waiting(p, "jobs"); err != nil || w != 2 {
		t.Fatalf("%d pull requests waiting for six gets, %v; want 2", w, err)
	}
	put(t, p, "jobs", "1", "2", "3", "4", "5", "6") // two packs: 4 and 2
	var got []string
	for range gets {
		select {
		case ts := <-took:
			if len(ts) != 1 {
				t.Fatalf("a get took %v, want one task", payloads(ts))
			}
			got = append(got, string(ts[0].Payload))
		case <-time.After(5 * time.Second):
			t.Fatalf("only %v taken within 5s by %d gets", got, gets)
		}
	}
	slices.Sort(got)
	if want := []string{"1", "2", "3", "4", "5", "6"}; !slices.Equal(got, want) {
		t.Fatalf("the gets took %v, want %v", got, want)
	}

	// Gets of a whole pack each leave nothing for others: each pulls.
	for i := range 3 {
		go func() {
			ts, _ := g.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 4, Owner: uint64(10 + i), Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
			took <- ts
		}()
	}
	waitFor(t, "three pull requests for three gets of a pack", func() bool {
		w, _, err := jsqueue.Waiting(p, "jobs")
		return err == nil && w == 3
	})
	for range 3 {
		put(t, p, "jobs", "a", "b", "c", "d")
	}
	for range 3 {
		select {
		case ts := <-took:
			if len(ts) != 4 {
				t.Fatalf("a get of four took %v", payloads(ts))
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a get of four took nothing within 5s")
		}
	}
}

// A task's last error goes with it in a header when it is moved (to the
// dead-letter queue here): a worker's multi-line error, or a long one,
// must neither break the message's headers nor its size.
func TestMovedTaskKeepsAnUnwieldyError(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: 8, MaxAttempts: 1})
	reaping(t, q)
	putIDs := put(t, q, "jobs", "a", "b")
	ts := get(t, q, "jobs", 1, 1, 0, time.Second)
	reason := "Traceback (most recent call last):\n  File \"w.py\"\r\nNats-Msg-Id: forged\r\n" + strings.Repeat("x", 4000)
	if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ts[0].ID, Error: reason}); err != nil {
		t.Fatal(err)
	}
	var dts []queue.Task
	deadline := time.Now().Add(5 * time.Second)
	for len(dts) == 0 && time.Now().Before(deadline) {
		var err error
		if dts, err = q.Peek(queue.DeadLetterName("jobs"), 10); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(dts) != 1 || dts[0].ID != putIDs[0] {
		t.Fatalf("dead-letter queue %+v: want task a", dts)
	}
	e := dts[0].LastError
	if strings.ContainsAny(e, "\r\n") || len(e) > 1024 || !strings.HasPrefix(e, "Traceback (most recent call last):") {
		t.Fatalf("its error, %d bytes: %.200q; want the first line on, on one line, at most 1 KiB", len(e), e)
	}
}

// Done counts the tasks that were done: not those purged, nor those
// moved to the dead-letter queue, packed or not.
func TestPurgedAndDeadTasksAreNotDone(t *testing.T) {
	for _, pack := range []int{1, 4} {
		t.Run(fmt.Sprintf("pack %d", pack), func(t *testing.T) {
			q := newQueues(t, startNode(t), jsqueue.Config{HoldFor: time.Minute, Pack: pack, MaxAttempts: 1})
			reaping(t, q)
			put(t, q, "jobs", "a", "b", "c", "d", "e", "f")
			a := get(t, q, "jobs", 1, 1, 0, time.Second)
			if _, err := q.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: taskIDs(a)}, nil); err != nil {
				t.Fatal(err)
			}
			b := get(t, q, "jobs", 1, 1, 0, time.Second)
			if err := q.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: b[0].ID, Error: "boom"}); err != nil {
				t.Fatal(err)
			}
			if n, err := q.Purge("jobs"); err != nil || n != 4 {
				t.Fatalf("purge: %d, %v; want 4", n, err)
			}
			qmtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
				st, err := q.Stats("jobs")
				if err != nil {
					return err
				}
				if st.Done != 1 || st.Acks != 1 || st.Dead != 1 || st.Puts != 6 || st.Ready != 0 {
					return fmt.Errorf("done %d, acks %d, dead %d, puts %d, ready %d; want 1, 1, 1, 6, 0", st.Done, st.Acks, st.Dead, st.Puts, st.Ready)
				}
				return nil
			})
		})
	}
}

// A task stored alone whose worker went away on its last attempt is
// dead-lettered when it is delivered again, through any gateway: the
// gateway it left marks the failure in the deliveries' record as it
// gives the task back. Unmarked, the redelivery past the last attempt
// would run once more, as one whose delivery was lost does.
func TestReleaseOnTheLastAttemptIsDeadLettered(t *testing.T) {
	n := startNode(t)
	cfg := jsqueue.Config{Pack: 1, MaxAttempts: 1}
	a, b := newQueues(t, n, cfg), newQueues(t, n, cfg)
	for _, next := range []*jsqueue.Queues{a, b} {
		name := fmt.Sprintf("jobs-%p", next)
		ids := put(t, a, name, "t")
		if ts := get(t, a, name, 1, 1, time.Minute, 5*time.Second); len(ts) != 1 || ts[0].Attempts != 1 {
			t.Fatalf("got %+v, want the task at attempt 1", ts)
		}
		if n := a.Release(1); n != 1 {
			t.Fatalf("released %d leases, want 1", n)
		}
		if ts := get(t, next, name, 2, 1, time.Minute, 1500*time.Millisecond); len(ts) != 0 {
			t.Fatalf("after its worker left on its last attempt got %+v, want it dead-lettered", ts)
		}
		waitFor(t, "the task in the dead-letter queue", func() bool {
			st, err := a.Stats(queue.DeadLetterName(name))
			return err == nil && st.Ready == 1
		})
		dead, err := a.Peek(queue.DeadLetterName(name), 10)
		if err != nil || len(dead) != 1 || dead[0].ID != ids[0] || dead[0].Attempts != 1 {
			t.Fatalf("dead letters %+v, %v; want task %d at attempt 1", dead, err, ids[0])
		}
	}
}
