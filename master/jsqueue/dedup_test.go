package jsqueue_test

import (
	"context"
	"errors"
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
	again, err := b.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("a again", "k1"), keyed("c", "k2")}})
	if err != nil {
		t.Fatal(err)
	}
	if again[0] != first[0] {
		t.Fatalf("repeated key through another gateway: id %d, want %d", again[0], first[0])
	}
	ts := get(t, a, "jobs", 1, 10, 0, 0)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("queue holds %v, want [a b c]", got)
	}
	if _, err := a.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID, ts[2].ID}}, nil); err != nil {
		t.Fatal(err)
	}
	late, err := b.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{keyed("a, late retry", "k1")}})
	if err != nil || late[0] != first[0] {
		t.Fatalf("retry after the task was done: %v, %v; want id %d", late, err, first[0])
	}
	if ts := get(t, a, "jobs", 1, 10, 0, 300*time.Millisecond); len(ts) != 0 {
		t.Fatalf("the late retry added %v", payloads(ts))
	}
	for _, it := range []queue.Item{
		{Payload: []byte("x"), Due: time.Now().Add(time.Hour)},
		{Payload: []byte("x"), Priority: 3},
	} {
		if _, err := a.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{it}}); !errors.Is(err, queue.ErrBadArgument) {
			t.Errorf("put %+v: %v, want ErrBadArgument", it, err)
		}
	}
}
