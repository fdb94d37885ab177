package master_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestPutOptionsRefused: a put whose delay, time or keys make no sense is
// refused with ErrBadRequest and adds nothing; a put at a past time runs
// at once.
func TestPutOptionsRefused(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ctx := context.Background()
	for _, o := range []wire.PutOptions{
		{Delay: -time.Second},
		{Delay: time.Second, At: time.Now().Add(time.Hour)},
		{Keys: []string{"a"}},
		{Keys: []string{"a", "b"}, RequestID: "r"},
		{Priority: 10},
		{Priority: -1},
	} {
		if _, err := c.Put(ctx, "q", []any{1, 2}, o); !errors.Is(err, wire.ErrBadRequest) {
			t.Errorf("put with %+v: %v, want ErrBadRequest", o, err)
		}
	}
	if qs, err := c.Queues(ctx); err != nil || len(qs) != 0 {
		t.Fatalf("refused puts left queues %v (%v)", qs, err)
	}
	if _, err := c.Put(ctx, "q", []any{"past"}, wire.PutOptions{At: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "q", wire.GetOptions{})
	if err != nil || len(ts) != 1 {
		t.Fatalf("a put at a past time: get %v, %v; want it at once", ts, err)
	}
}

// TestNackRetryAfterOverTheWire: a worker's nack with a retry-after holds
// the task back that long, and Stats and Delayed show it meanwhile.
func TestNackRetryAfterOverTheWire(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "worker")
	ctx := context.Background()
	if _, err := c.Put(ctx, "q", []any{"x"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ts, err := c.Get(ctx, "q", wire.GetOptions{})
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v %v", ts, err)
	}
	nacked := time.Now()
	if err := c.NackAfter(ctx, "q", ts[0].ID, "busy", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Stats(ctx, "q"); err != nil || st[0].Retrying != 1 || st[0].NextDue.IsZero() {
		t.Fatalf("stats after the nack: %+v, %v", st, err)
	}
	if d, err := c.Delayed(ctx, "q", 10); err != nil || len(d) != 1 || d[0].ID != ts[0].ID || d[0].Attempt != 1 {
		t.Fatalf("delayed after the nack: %+v, %v", d, err)
	}
	again, err := c.Get(ctx, "q", wire.GetOptions{Timeout: 5 * time.Second})
	if err != nil || len(again) != 1 || again[0].LastError != "busy" {
		t.Fatalf("get after the retry-after: %+v, %v", again, err)
	}
	if waited := time.Since(nacked); waited < 300*time.Millisecond {
		t.Fatalf("redelivered after %v, before its retry-after", waited)
	}
}

// TestNackNoRetryOverTheWire: a failed attempt marked not to be retried,
// by a nack or in a completion, sends the task to the dead-letter queue
// with an error result, its attempts left unused; on a single master and
// through a gateway alike.
func TestNackNoRetryOverTheWire(t *testing.T) {
	for _, backend := range []string{"single", "gateway"} {
		t.Run(backend, func(t *testing.T) {
			cfg := master.Config{MaxAttempts: 5}
			var addr string
			if backend == "gateway" {
				addr = startGatewayOn(t, startJetStream(t), cfg)
			} else {
				addr, _ = qmtest.StartMaster(t, cfg)
			}
			c := qmtest.Dial(t, addr, "worker")
			ctx := ctxFor(t, 20*time.Second)
			ids, err := c.Put(ctx, "q", []any{"by nack", "by completion", "fine"}, wire.PutOptions{ReplyTo: "r"})
			if err != nil {
				t.Fatal(err)
			}
			ts, err := c.Get(ctx, "q", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
			if err != nil || len(ts) != 3 {
				t.Fatalf("get: %v %v", ts, err)
			}
			if err := c.NackNoRetry(ctx, "q", ts[0].ID, "bad input"); err != nil {
				t.Fatal(err)
			}
			if err := c.Complete(ctx, "q", "", []wire.Completion{
				{ID: ts[1].ID, Token: ts[1].Token, Error: "bad too", NoRetry: true},
				{ID: ts[2].ID, Token: ts[2].Token, Error: "flaky"},
			}); err != nil {
				t.Fatal(err)
			}
			res, err := c.Get(ctx, "r", wire.GetOptions{Max: 2, Timeout: 5 * time.Second, NoAck: true})
			if err != nil || len(res) != 2 {
				t.Fatalf("error results: %+v, %v; want 2", res, err)
			}
			for i, want := range []string{"bad input", "bad too"} {
				r, err := wire.DecodeResult(res[i].Payload)
				if err != nil || r.TaskID != ids[i] || r.Attempt != 1 || !strings.HasSuffix(r.Error, ": "+want) {
					t.Errorf("error result %+v, %v; want task %d's %q after 1 attempt", r, err, ids[i], want)
				}
			}
			again, err := c.Get(ctx, "q", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
			if err != nil || len(again) != 1 || again[0].ID != ids[2] || again[0].Attempt != 2 {
				t.Fatalf("after the failures got %+v, %v; want only the flaky task, at attempt 2", again, err)
			}
			if dead, err := c.Peek(ctx, "q.dead", 5); err != nil || len(dead) != 2 {
				t.Fatalf("dead-letter queue: %+v, %v; want the two tasks", dead, err)
			}
		})
	}
}
