package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// TestIdempotentPut: a put with a key JetStream saw within the dedup
// window adds nothing and returns the first task's ID, through another
// gateway and after the task is done too; delays and priorities are
// refused with a clear error, not ignored.
func TestIdempotentPut(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{})
	b := newQueues(t, node, jsqueue.Config{})
	ctx := context.Background()
	keyed := func(p, k string) queue.Item { return queue.Item{Payload: []byte(p), Key: k} }
	first, err := a.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("a", "k1"), keyed("b", "")}})
	if err != nil {
		t.Fatal(err)
	}
	repeats := -1
	again, err := b.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("a again", "k1"), keyed("c", "k2")}, Repeats: &repeats})
	if err != nil {
		t.Fatal(err)
	}
	if again[0] != first[0] {
		t.Fatalf("repeated key through another gateway: id %d, want %d", again[0], first[0])
	}
	if repeats != 1 {
		t.Fatalf("Repeats = %d, want 1", repeats)
	}
	ts := get(t, a, "jobs", 1, 10, 0, 0)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("queue holds %v, want [a b c]", got)
	}
	if _, err := a.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID, ts[2].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	late, err := b.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("a, late retry", "k1")}, Repeats: &repeats})
	if err != nil || late[0] != first[0] || repeats != 1 {
		t.Fatalf("retry after the task was done: %v, %v, %d repeats; want id %d, 1 repeat", late, err, repeats, first[0])
	}
	if _, err := b.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("d", "k3")}, Repeats: &repeats}); err != nil || repeats != 0 {
		t.Fatalf("a new key: Repeats = %d (%v), want 0", repeats, err)
	}
	if ts := get(t, a, "jobs", 1, 10, 0, 300*time.Millisecond); len(ts) != 1 || string(ts[0].Payload) != "d" {
		t.Fatalf("after the late retry and a new key the queue held %v, want [d]", payloads(ts))
	}
	// Delays and priorities are kept (scheduling_test.go,
	// priority_test.go); a priority out of range is refused.
	prio := queue.Item{Payload: []byte("x"), Priority: queue.MaxPriority + 1}
	if _, err := a.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{prio}}); !errors.Is(err, queue.ErrBadArgument) {
		t.Errorf("put %+v: %v, want ErrBadArgument", prio, err)
	}
}

// TestRequestIDPacksAndPutsOnce: a put with a request ID is packed, and
// sent again through another gateway it adds nothing and gets the first
// send's IDs; sent again through a gateway that packs otherwise it is
// stored again, whole, rather than taken for other tasks.
func TestRequestIDPacksAndPutsOnce(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{Pack: 32})
	b := newQueues(t, node, jsqueue.Config{Pack: 32})
	unpacked := newQueues(t, node, jsqueue.Config{Pack: 1})
	ctx := context.Background()
	const n = 70 // two full packs and a part
	items := make([]queue.Item, n)
	for i := range items {
		items[i] = queue.Item{Payload: []byte{byte(i)}}
	}
	req := queue.PutRequest{Queue: "jobs", Items: items, RequestID: "run-1/line-1"}
	// A task whose key reads as the ID of the put's first pack does not
	// take its place.
	if _, err := a.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte("keyed"), Key: req.RequestID + "/0+32"}}}); err != nil {
		t.Fatal(err)
	}
	first, err := a.Put(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if first[0] < 1<<52 {
		t.Fatalf("first ID %d: the put was not packed", first[0])
	}
	again, err := b.Put(ctx, req)
	if err != nil || !slices.Equal(again, first) {
		t.Fatalf("the put again through another gateway: IDs from %d (%v); want the first's, from %d", again[0], err, first[0])
	}
	if st, err := a.Stats("jobs"); err != nil || st.Ready != n+1 {
		t.Fatalf("after the repeat: %+v, %v; want %d ready", st, err, n+1)
	}
	other, err := unpacked.Put(ctx, req)
	if err != nil || len(other) != n || slices.Contains(first, other[0]) {
		t.Fatalf("the put again, unpacked: %v, %v; want %d new IDs", other, err, n)
	}
	ts := getAll(t, a, 1, 2*n+1, 10*time.Second)
	seen := make(map[string]int)
	for _, p := range payloads(ts) {
		seen[p]++
	}
	for i := range n {
		if c := seen[string([]byte{byte(i)})]; c != 2 {
			t.Fatalf("task %d is stored %d times, want twice (packed, then unpacked)", i, c)
		}
	}
	bad := req
	bad.Items = []queue.Item{{Payload: []byte("x"), Key: "k"}}
	if _, err := a.Put(ctx, bad); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("a request ID with item keys: %v, want ErrBadArgument", err)
	}
}

// TestResultsOfTheSameDeliveriesAreStoredOnce: the results of the same
// deliveries, put again through another gateway (a completion that
// reached two), are stored once, packed alike or not packed; those of
// other deliveries of the same tasks (their tasks run again), of another
// queue's tasks, or of tasks with the same IDs and tokens in a queue
// made again, are not taken for them.
func TestResultsOfTheSameDeliveriesAreStoredOnce(t *testing.T) {
	node := startNode(t)
	ctx := context.Background()
	// results of tasks ids of queue from, in their delivery at (a count), of
	// messages stored at stored.
	stored := time.Now()
	results := func(from string, stored time.Time, at int, ids ...uint64) queue.PutRequest {
		items := make([]queue.Item, len(ids))
		of := queue.ResultsOf{Queue: from, Tasks: make([]queue.Task, len(ids))}
		for i, id := range ids {
			items[i] = queue.Item{Payload: []byte{byte(id)}}
			of.Tasks[i] = queue.Task{ID: id, Token: fmt.Sprintf("#%d.%d.1", at, id), Enqueued: stored}
		}
		return queue.PutRequest{Queue: "mine", Items: items, Results: true, ResultsOf: of}
	}
	for _, pack := range []int{32, 1} {
		a := newQueues(t, node, jsqueue.Config{Pack: pack})
		b := newQueues(t, node, jsqueue.Config{Pack: pack})
		if err := a.Delete("mine"); err != nil && !errors.Is(err, queue.ErrUnknownQueue) {
			t.Fatal(err)
		}
		ready := 0
		for _, c := range []struct {
			name        string
			first, next queue.PutRequest // through a, then through b
			adds        int
		}{
			{"a completion of three", results("jobs", stored, 1, 1, 2, 3), results("jobs", stored, 1, 1, 2, 3), 3},
			{"a completion of one", results("jobs", stored, 1, 4), results("jobs", stored, 1, 4), 1},
			{"another delivery of the three", results("jobs", stored, 2, 1, 2, 3), results("jobs", stored, 2, 1, 2, 3), 3},
			{"the three of another queue", results("other", stored, 1, 1, 2, 3), results("other", stored, 1, 1, 2, 3), 3},
			{"the three, in a queue deleted and made again", results("jobs", stored.Add(time.Second), 1, 1, 2, 3), results("jobs", stored.Add(time.Second), 1, 1, 2, 3), 3},
			// Sent again along with another, stored once: a result of a
			// plain delivery has a message of its own, however the
			// gateway packs (packResults).
			{"three, then again after a fourth", results("jobs", stored, 3, 1, 2, 3), results("jobs", stored, 3, 5, 1, 2, 3), 4},
		} {
			first, err := a.Put(ctx, c.first)
			if err != nil {
				t.Fatalf("pack %d, %s: %v", pack, c.name, err)
			}
			again, err := b.Put(ctx, c.next)
			if err != nil || len(c.next.Items) == len(c.first.Items) && !slices.Equal(again, first) {
				t.Fatalf("pack %d, %s, through another gateway: %v, %v; want the first's IDs %v", pack, c.name, again, err, first)
			}
			ready += c.adds
			if st, err := a.Stats("mine"); err != nil || st.Ready != ready {
				t.Fatalf("pack %d, %s: %+v, %v; want %d results", pack, c.name, st, err, ready)
			}
		}
	}
}
