package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
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

// A draining worker whose connection closes ends serve even before the
// session's keeper has seen it: a completion cut off with the connection
// is kept for the next one, and the completer hands it back as fast as
// serve passes it on. The two once kept a qworker's only thread busy for
// minutes, and its keeper never ran. Here there is no keeper at all.
func TestServeEndsWhenItsConnectionCloses(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	cfg := Config{Server: addr, Authkey: qmtest.Authkey, Tasks: "tasks", Name: "w"}
	cfg.setDefaults()
	r := newRunner(context.Background(), cfg)
	t.Cleanup(func() { r.pool.stop(); r.res.stop() })
	c := qmtest.Dial(t, addr, "worker")
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	s := &session{r: r, c: c, ctx: ctx, cancel: cancel, kick: make(chan struct{}, 1),
		done: make(chan struct{}), leases: make(map[uint64]*lease)}
	close(s.done) // no keeper
	l := trackOne(s, Task{ID: 1, Token: "#1.1.1", Lease: time.Minute})
	r.res.taken(1)
	r.res.keepForNext([]finished{{s: s, l: l, c: wire.Completion{ID: 1}}}, true)
	c.Close()

	draining, stopWorker := context.WithCancel(context.Background())
	stopWorker()
	type served struct {
		stop bool
		err  error
	}
	done := make(chan served, 1)
	go func() {
		stop, err := r.serve(draining, s)
		done <- served{stop, err}
	}()
	select {
	case got := <-done:
		if got.stop || got.err != nil {
			t.Fatalf("serve returned %v, %v; want to reconnect (false, nil)", got.stop, got.err)
		}
		if again := r.res.takeAgain(); len(again) != 1 || len(again[0]) != 1 || again[0][0].l != l {
			t.Fatalf("kept for the next connection: %v; want the cut-off completion", again)
		}
	case <-time.After(5 * time.Second):
		cancel(ErrLeaseLost) // as the keeper would: serve then ends
		<-done
		t.Fatal("serve went on for 5s after its connection closed")
	}
}
