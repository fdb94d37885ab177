package jsqueue_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
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
	// Its gateway has one task running and a get waiting: it says 1 at
	// its next look, and goes on saying it while the task runs.
	put(t, producer, "jobs", "0")
	running := get(t, one, "jobs", 1, 1, time.Minute, 5*time.Second)
	got := waitGetting(t, one, "jobs", 1, 20*time.Second)
	packSizeBecomes(t, producer, "jobs", 1)
	// It hands out nothing while its task runs, and says 1 all the same.
	for end := time.Now().Add(2500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if got := jsqueue.PackSize(producer, "jobs"); got != 1 {
			t.Fatalf("pack size %d while the one worker's task runs, want 1", got)
		}
	}
	put(t, producer, "jobs", "1", "2", "3", "4", "5", "6", "7", "8")
	first := <-got
	if !slices.Equal(payloads(first), []string{"1"}) {
		t.Fatalf("the one worker got %q, want [1]", payloads(first))
	}
	var rest []queue.Task
	deadline := time.Now().Add(2 * time.Second) // well within HoldFor
	for len(rest) < 7 && time.Now().Before(deadline) {
		rest = append(rest, get(t, other, "jobs", 2, 8, 0, time.Until(deadline))...)
	}
	if want := []string{"2", "3", "4", "5", "6", "7", "8"}; !slices.Equal(payloads(rest), want) {
		t.Fatalf("the other gateway got %q, want %q", payloads(rest), want)
	}
	// Their tasks done, handing out none, the gateways take their sizes
	// back.
	ackIDs(t, one, "jobs", 1, taskIDs(append(running, first...))...)
	ackIDs(t, other, "jobs", 2, taskIDs(rest)...)
	packSizeBecomes(t, producer, "jobs", 8)
}

// TestBusyGatewaysKeepFullPacks: a gateway whose gets take many tasks at
// once says a full pack, and puts stay packed; an idle gateway says
// nothing.
func TestBusyGatewaysKeepFullPacks(t *testing.T) {
	n := startNode(t)
	producer := newQueues(t, n, jsqueue.Config{Pack: 8})
	busy := newQueues(t, n, jsqueue.Config{Pack: 8})
	idle := newQueues(t, n, jsqueue.Config{Pack: 8})
	items := make([]string, 8)
	for i := range items {
		items[i] = fmt.Sprint(i)
	}
	put(t, producer, "jobs", items...)
	ackIDs(t, busy, "jobs", 1, taskIDs(get(t, busy, "jobs", 1, 8, 0, 5*time.Second))...)
	var gets sync.WaitGroup
	defer gets.Wait() // before the gateways close
	for _, q := range []*jsqueue.Queues{busy, idle} {
		gets.Go(func() {
			_, err := q.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 8, Owner: 2, MaxWait: 3 * time.Second}, nil)
			if err != nil {
				t.Errorf("get: %v", err)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(jsqueue.PackSizesHeard(producer, "jobs"), []int{8}) {
		if time.Now().After(deadline) {
			t.Fatalf("sizes heard %v 10s on, want the busy gateway's [8]", jsqueue.PackSizesHeard(producer, "jobs"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	put(t, producer, "jobs", items...)
	if m := stored(t, producer, "jobs"); m != 1 {
		t.Fatalf("%d messages stored for 8 tasks, want 1 pack", m)
	}
}

// TestRequestIDPutKeepsItsFirstLayout: a put with a request ID sent again
// through a gateway that packs otherwise now is laid out as its first
// send was, and so stored once: a full pack sent again through a gateway
// that packs one task a message now, and single-task messages sent again
// through a gateway of fixed packs.
func TestRequestIDPutKeepsItsFirstLayout(t *testing.T) {
	n := startNode(t)
	full := newQueues(t, n, jsqueue.Config{Pack: 8, PackSpan: -1})
	thin := newQueues(t, n, jsqueue.Config{Pack: 8})
	jsqueue.HearPackSize(thin, "jobs", 1)
	jsqueue.HearPackSize(thin, "other", 1)
	items := make([]queue.Item, 8)
	for i := range items {
		items[i] = queue.Item{Payload: []byte(fmt.Sprint(i))}
	}
	ctx := context.Background()
	sendTwice := func(name, rid string, first, again *jsqueue.Queues, wantStored int) {
		t.Helper()
		req := queue.PutRequest{Queue: name, Items: items, RequestID: rid}
		ids, err := first.Put(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if m := stored(t, first, name); m != wantStored {
			t.Fatalf("%s: %d messages stored, want %d", name, m, wantStored)
		}
		req.Resent = true
		resent, err := again.Put(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(resent, ids) {
			t.Fatalf("%s sent again: ids %v, want the first send's %v", name, resent, ids)
		}
		if m := stored(t, again, name); m != wantStored {
			t.Fatalf("%s: %d messages stored after the put was sent again, want %d", name, m, wantStored)
		}
	}
	sendTwice("jobs", "run-1/line-1", full, thin, 1)
	sendTwice("other", "run-1/line-1", thin, full, 8)
}
