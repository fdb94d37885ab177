package jsqueue_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// waitGetting starts a get of one task from q's queue name, which waits
// up to wait, and returns what it got once it returns.
func waitGetting(t *testing.T, q *jsqueue.Queues, name string, owner uint64, wait time.Duration) <-chan []queue.Task {
	got := make(chan []queue.Task, 1)
	go func() {
		ts, err := q.Get(context.Background(), queue.GetRequest{Queue: name, Max: 1, Owner: owner, MaxWait: wait}, nil)
		if err != nil {
			t.Errorf("get: %v", err)
		}
		got <- ts
	}()
	return got
}

// packSizeBecomes waits until q packs queue name's tasks want at a time.
func packSizeBecomes(t *testing.T, q *jsqueue.Queues, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for jsqueue.PackSize(q, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("pack size %d 10s on, want %d", jsqueue.PackSize(q, name), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPacksFollowAGatewayOfOneWorker: a gateway whose one worker takes a
// task at a time says so, and the tasks put through another gateway are
// then stored one a message: what its worker does not take is at once
// another gateway's, where a pack would have held it in the first.
func TestPacksFollowAGatewayOfOneWorker(t *testing.T) {
	n := startNode(t)
	producer := newQueues(t, n, jsqueue.Config{Pack: 8})
	one := newQueues(t, n, jsqueue.Config{Pack: 8, HoldFor: time.Minute})
	other := newQueues(t, n, jsqueue.Config{Pack: 8, HoldFor: time.Minute})
	if got := jsqueue.PackSize(producer, "jobs"); got != 8 {
		t.Fatalf("pack size %d before any gateway said one, want --pack's 8", got)
	}
	got := waitGetting(t, one, "jobs", 1, 20*time.Second)
	packSizeBecomes(t, producer, "jobs", 1)
	put(t, producer, "jobs", "1", "2", "3", "4", "5", "6", "7", "8")
	if ts := <-got; !slices.Equal(payloads(ts), []string{"1"}) {
		t.Fatalf("the one worker got %q, want [1]", payloads(ts))
	}
	var rest []queue.Task
	deadline := time.Now().Add(2 * time.Second) // well within HoldFor
	for len(rest) < 7 && time.Now().Before(deadline) {
		rest = append(rest, get(t, other, "jobs", 2, 8, 0, time.Until(deadline))...)
	}
	if want := []string{"2", "3", "4", "5", "6", "7", "8"}; !slices.Equal(payloads(rest), want) {
		t.Fatalf("the other gateway got %q, want %q", payloads(rest), want)
	}
}

// TestBusyGatewaysKeepFullPacks: gets that want many tasks at once say a
// full pack, and puts stay packed.
func TestBusyGatewaysKeepFullPacks(t *testing.T) {
	n := startNode(t)
	producer := newQueues(t, n, jsqueue.Config{Pack: 8})
	busy := newQueues(t, n, jsqueue.Config{Pack: 8})
	gets := make(chan []queue.Task, 1)
	go func() {
		ts, err := busy.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 8, Owner: 2, MaxWait: 20 * time.Second}, nil)
		if err != nil {
			t.Errorf("get: %v", err)
		}
		gets <- ts
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(jsqueue.PackSizesHeard(producer, "jobs"), []int{8}) {
		if time.Now().After(deadline) {
			t.Fatalf("sizes heard %v 10s on, want the busy gateway's [8]", jsqueue.PackSizesHeard(producer, "jobs"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	items := make([]string, 8)
	for i := range items {
		items[i] = fmt.Sprint(i)
	}
	put(t, producer, "jobs", items...)
	if m := stored(t, producer, "jobs"); m != 1 {
		t.Fatalf("%d messages stored for 8 tasks, want 1 pack", m)
	}
	if got := <-gets; len(got) != 8 {
		t.Fatalf("busy get took %d tasks, want 8", len(got))
	}
}

// TestRequestIDPutKeepsItsFirstLayout: a put with a request ID sent again
// through a gateway that packs smaller now (its one worker takes a task
// at a time) is laid out as its first send was, and so stored once.
func TestRequestIDPutKeepsItsFirstLayout(t *testing.T) {
	n := startNode(t)
	first := newQueues(t, n, jsqueue.Config{Pack: 8})
	second := newQueues(t, n, jsqueue.Config{Pack: 8, HoldFor: time.Minute})
	items := make([]queue.Item, 8)
	for i := range items {
		items[i] = queue.Item{Payload: []byte(fmt.Sprint(i))}
	}
	req := queue.PutRequest{Queue: "jobs", Items: items, RequestID: "run-1/line-1"}
	ctx := context.Background()
	ids, err := first.Put(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if m := stored(t, first, "jobs"); m != 1 {
		t.Fatalf("%d messages stored, want 1 pack", m)
	}
	// The second gateway's worker waits for one task: it says 1, and its
	// other puts are stored one a message.
	got := waitGetting(t, second, "other", 1, 20*time.Second)
	packSizeBecomes(t, second, "other", 1)
	put(t, second, "other", "a", "b")
	if m := stored(t, second, "other"); m != 2 {
		t.Fatalf("%d messages stored for 2 tasks after a size of 1 was said, want 2", m)
	}
	<-got
	// Said of its queue too, the put sent again keeps its pack.
	got = waitGetting(t, second, "jobs", 2, 20*time.Second)
	packSizeBecomes(t, second, "jobs", 1)
	<-got // took the pack's first task: the pack's 7 others are held
	again, err := second.Put(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, ids) {
		t.Fatalf("sent again: ids %v, want the first send's %v", again, ids)
	}
	if m := stored(t, second, "jobs"); m != 1 {
		t.Fatalf("%d messages stored after the put was sent again, want the 1 pack", m)
	}
}
