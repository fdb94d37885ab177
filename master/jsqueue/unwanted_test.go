package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// TestResultsOfADeletedReplyQueueGoNowhere: results whose reply queue
// another gateway deleted after their tasks were put (a map that ended)
// are dropped when their gateway finds the queue gone, whether it learns
// of the deletion before the put or while the put waits, rather than
// stored in the queue made anew for no one after the request timeout,
// which held the worker's completion up that long. Results still wanted
// make the queue anew, as before.
func TestResultsOfADeletedReplyQueueGoNowhere(t *testing.T) {
	node := startNode(t)
	ctx := context.Background()
	const timeout = 20 * time.Second
	for _, c := range []struct {
		name   string
		told   int  // the call of Unwanted that first says true; 0: none does
		opened bool // the putting gateway had opened the queue before
	}{
		{"told before the put", 1, true},
		{"told while the put waits", 2, true},
		{"told before the put, not opened", 1, false},
		{"told while the put waits, not opened", 2, false},
		{"wanted", 0, true},
		{"wanted, not opened", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newQueues(t, node, jsqueue.Config{RequestTimeout: timeout})
			b := newQueues(t, node, jsqueue.Config{})
			put(t, b, "replies", "made by the producer")
			if c.opened {
				if _, err := a.Stats("replies"); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Delete("replies"); err != nil {
				t.Fatal(err)
			}
			calls := 0
			req := queue.PutRequest{Queue: "replies", Results: true, ResultsOf: queue.ResultsOf{Queue: "jobs"},
				Unwanted: func() bool { calls++; return c.told > 0 && calls >= c.told }}
			for id := range uint64(3) {
				req.Items = append(req.Items, queue.Item{Payload: []byte{byte(id)}})
				req.ResultsOf.Tasks = append(req.ResultsOf.Tasks, queue.Task{ID: id + 1, Token: fmt.Sprintf("#1.%d.1", id+1),
					ReplyTo: "replies", Enqueued: time.Now()})
			}
			start := time.Now()
			ids, err := a.Put(ctx, req)
			if took := time.Since(start); took > timeout/4 {
				t.Errorf("the put took %v: it waited for the request timeout", took)
			}
			if err != nil {
				t.Fatalf("put: %v", err)
			}
			st, err := b.Stats("replies")
			switch {
			case c.told > 0 && (ids != nil || !errors.Is(err, queue.ErrUnknownQueue)):
				t.Fatalf("put: IDs %v; the queue after: %+v, %v; want none stored, and no queue made anew", ids, st, err)
			case c.told == 0 && (len(ids) != 3 || err != nil || st.Ready != 3):
				t.Fatalf("put: IDs %v; the queue after: %+v, %v; want it made anew with the 3 results", ids, st, err)
			}
			if c.told > 0 && calls != c.told {
				t.Errorf("Unwanted asked %d times, want %d", calls, c.told)
			}
		})
	}
}
