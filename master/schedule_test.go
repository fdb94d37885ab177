package master_test

import (
	"context"
	"errors"
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
