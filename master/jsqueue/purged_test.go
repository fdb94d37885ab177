package jsqueue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// A purge or a deletion through one gateway removes what another holds
// of the queue's packs: it hands none of the held tasks out after, and
// the task it had handed out can no longer be completed.
func TestPurgeDropsWhatOtherGatewaysHold(t *testing.T) {
	node := startNode(t)
	a := newQueues(t, node, jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	b := newQueues(t, node, jsqueue.Config{HoldFor: time.Minute, Pack: 4})
	for _, op := range []string{"purge", "delete"} {
		t.Run(op, func(t *testing.T) {
			name := "jobs-" + op
			put(t, a, name, "1", "2", "3", "4")
			out := get(t, b, name, 1, 1, time.Minute, time.Second) // b holds 2, 3 and 4
			if len(out) != 1 {
				t.Fatalf("got %v, want one task", payloads(out))
			}
			var err error
			if op == "purge" {
				_, err = a.Purge(name)
			} else {
				err = a.Delete(name)
			}
			if err != nil {
				t.Fatal(err)
			}
			ts, err := b.Get(context.Background(), queue.GetRequest{Queue: name, Max: 10, Owner: 1, Lease: time.Minute, MaxWait: 300 * time.Millisecond}, nil)
			if err != nil && !errors.Is(err, queue.ErrUnknownQueue) || len(ts) != 0 {
				t.Fatalf("get through the other gateway after the %s: %v, %v; want nothing", op, payloads(ts), err)
			}
			if _, err := b.Ack(queue.AckRequest{Queue: name, Owner: 1, IDs: []uint64{out[0].ID}}, nil); err == nil {
				t.Fatalf("the task handed out before the %s was completed after it", op)
			}
		})
	}
}
