package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
)

// A session renews the leases handed over by a lost one as soon as they
// are due, without waiting for a task of its own to wake its keeper. (It
// once started its keeper before taking them: a keeper that looked first
// slept for an hour, and JetStream handed the tasks out again.) A single
// master holds no delivery another gateway handed out, so it refuses the
// renewal, and the lease ends as lost: proof that it was sent.
func TestSessionRenewsHandedOverLeases(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	cfg := Config{Server: addr, Authkey: qmtest.Authkey, Tasks: "tasks", Name: "w"}
	cfg.setDefaults()
	r := newRunner(context.Background(), cfg)
	t.Cleanup(func() { r.pool.stop(); r.res.stop() })
	old, l := testLease(t)
	old.r = r // a handed-over lease's context is the runner's
	l.handover, l.token, l.length = true, "#1.1.1", time.Minute
	old.mu.Lock()
	l.renewed = time.Now().Add(-time.Minute) // due
	old.mu.Unlock()

	s := r.newSession(qmtest.Dial(t, addr, "worker"), old.handOver())
	defer s.close()
	select {
	case <-l.Done():
		if !errors.Is(context.Cause(l), ErrLeaseLost) {
			t.Fatalf("the handed-over lease ended with %v; want ErrLeaseLost", context.Cause(l))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handed-over lease was not renewed")
	}
}
