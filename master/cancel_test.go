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

// A get whose context ends before its timeout is cancelled at the master:
// it takes nothing afterwards (a task it took would be handed to nobody:
// lost if taken for good, an attempt spent if leased), and it frees its
// place among the connection's streams at once. On a single master and
// through a gateway.
func TestCancelledGetTakesNothing(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(t *testing.T, cfg master.Config) string
	}{
		{"single master", func(t *testing.T, cfg master.Config) string {
			addr, _ := qmtest.StartMaster(t, cfg)
			return addr
		}},
		{"gateway", startGateway},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const maxStreams = 4
			addr := tc.start(t, master.Config{MaxStreams: maxStreams})
			c := qmtest.Dial(t, addr, "worker")
			for i := range maxStreams + 1 {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				start := time.Now()
				ts, err := c.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: time.Minute, NoAck: i%2 == 0})
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) || len(ts) != 0 {
					t.Fatalf("get %d: %+v, %v; want nothing and the context's error", i, ts, err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Fatalf("get %d returned %s after its context ended", i, d)
				}
			}
			// The connection's streams are free: the cancelled gets hold none.
			ctx := ctxFor(t, 2*time.Second)
			ids, err := c.Put(ctx, "jobs", []any{"precious"}, wire.PutOptions{})
			if err != nil {
				t.Fatalf("put after the cancelled gets: %v", err)
			}
			ts, err := c.Get(ctxFor(t, 10*time.Second), "jobs", wire.GetOptions{Max: 10, Timeout: 5 * time.Second})
			if err != nil || len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempt != 1 {
				t.Fatalf("get: %+v, %v; want task %d at its first attempt, taken by no cancelled get", ts, err, ids[0])
			}
		})
	}
}
