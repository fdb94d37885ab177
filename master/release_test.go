package master_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// A worker gives back tasks it took and did not start: another takes them
// at once, in their place and on the same attempt; a release of a
// delivery that has been superseded changes nothing.
func TestReleaseGivesTasksBack(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	ctx := ctxFor(t, 10*time.Second)
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := qmtest.Dial(t, addr, "worker")
	taken, err := a.Get(ctx, "jobs", wire.GetOptions{Max: 3, Timeout: time.Second})
	if err != nil || len(taken) != 3 {
		t.Fatalf("get: %d tasks, %v", len(taken), err)
	}
	if err := a.Release(ctx, "jobs", taken[1:]); err != nil {
		t.Fatalf("release: %v", err)
	}
	b := qmtest.Dial(t, addr, "worker")
	got, err := b.Get(ctx, "jobs", wire.GetOptions{Max: 3})
	if err != nil || len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] || got[0].Attempt != 1 || got[1].Attempt != 1 {
		t.Fatalf("another worker's get after the release: %+v, %v; want tasks %v on their first attempt", got, err, ids[1:])
	}
	// a's release again, of deliveries now b's: nothing changes.
	if err := a.Release(ctx, "jobs", taken[1:]); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if err := b.Complete(ctx, "jobs", "", []wire.Completion{{ID: got[0].ID}, {ID: got[1].ID}}); err != nil {
		t.Fatalf("b's complete after a's stale release: %v", err)
	}
	if err := a.Complete(ctx, "jobs", "", []wire.Completion{{ID: taken[0].ID}}); err != nil {
		t.Fatalf("a's complete of the task it kept: %v", err)
	}
	if st, err := producer.Stats(ctx, "jobs"); err != nil || st[0].Ready != 0 || st[0].Leased != 0 {
		t.Fatalf("stats %+v, %v; want every task done", st, err)
	}
}

// The same through a cluster's gateway: the tasks given back go to the
// next worker at once (their JetStream delivery counts, so their attempt
// may have risen), and none is left leased or run twice.
func TestReleaseThroughAGateway(t *testing.T) {
	addr := startGateway(t, master.Config{})
	ctx := ctxFor(t, 20*time.Second)
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a := qmtest.Dial(t, addr, "worker")
	taken, err := a.Get(ctx, "jobs", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
	if err != nil || len(taken) != 3 {
		t.Fatalf("get: %d tasks, %v", len(taken), err)
	}
	if err := a.Release(ctx, "jobs", taken[1:]); err != nil {
		t.Fatalf("release: %v", err)
	}
	b := qmtest.Dial(t, addr, "worker")
	got, err := b.Get(ctx, "jobs", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
	if err != nil || len(got) != 2 || got[0].ID != ids[1] || got[1].ID != ids[2] {
		t.Fatalf("another worker's get after the release: %+v, %v; want tasks %v", got, err, ids[1:])
	}
	if err := b.Complete(ctx, "jobs", "", []wire.Completion{{ID: got[0].ID, Token: got[0].Token}, {ID: got[1].ID, Token: got[1].Token}}); err != nil {
		t.Fatalf("b's complete: %v", err)
	}
	if err := a.Complete(ctx, "jobs", "", []wire.Completion{{ID: taken[0].ID, Token: taken[0].Token}}); err != nil {
		t.Fatalf("a's complete of the task it kept: %v", err)
	}
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if st, err := producer.Stats(ctx, "jobs"); err != nil || st[0].Ready != 0 || st[0].Leased != 0 || st[0].Done != 3 {
			return fmt.Errorf("stats %+v, %v; want every task done once", st, err)
		}
		return nil
	})
}

// A master with a data directory that stops gracefully, its workers still
// on their tasks, gives those tasks back unattempted: restarting it (an
// upgrade) does not use up their attempts and dead-letter long tasks.
func TestShutdownGivesLeasesBackUnattempted(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxFor(t, 20*time.Second)
	addr, srv := qmtest.StartMaster(t, master.Config{DataDir: dir, MaxAttempts: 2})
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "jobs", []any{1}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for restart := range 3 {
		w := qmtest.Dial(t, addr, "worker")
		ts, err := w.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second})
		if err != nil || len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempt != 1 || ts[0].LastError != "" {
			t.Fatalf("get after %d restarts: %+v, %v; want task %d at attempt 1, no error", restart, ts, err, ids[0])
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = srv.Shutdown(sctx) // the worker is still on its task
		cancel()
		addr, srv = qmtest.StartMaster(t, master.Config{DataDir: dir, MaxAttempts: 2})
	}
}

// TestCrashOnLastAttemptPublishesItsError: a task out on its last
// attempt when its master crashed is dead-lettered at the next start, and
// its error result reaches the result queue its queue's workers name,
// though the restarted master learns that queue only from a later
// completion.
func TestCrashOnLastAttemptPublishesItsError(t *testing.T) {
	dir := t.TempDir()
	ctx := ctxFor(t, 20*time.Second)
	addr, _ := qmtest.StartMaster(t, master.Config{DataDir: dir, MaxAttempts: 1})
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 1, Timeout: time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != ids[0] {
		t.Fatalf("get: %+v, %v", ts, err)
	}
	written(ctx, t, producer)
	// The master dies with task 1 out on its only attempt: its directory,
	// as a kill -9 leaves it, is copied while it runs.
	crashed := t.TempDir()
	copyFiles(t, dir, crashed)

	addr2, _ := qmtest.StartMaster(t, master.Config{DataDir: crashed, MaxAttempts: 1})
	c := qmtest.Dial(t, addr2, "worker")
	dead, err := c.Peek(ctx, "jobs.dead", 10)
	if err != nil || len(dead) != 1 || dead[0].ID != ids[0] {
		t.Fatalf("jobs.dead after the restart: %+v, %v; want task %d", dead, err, ids[0])
	}
	ts, err = c.Get(ctx, "jobs", wire.GetOptions{Max: 1, Timeout: time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != ids[1] {
		t.Fatalf("get after the restart: %+v, %v; want task %d", ts, err, ids[1])
	}
	if err := c.Complete(ctx, "jobs", "results", []wire.Completion{{ID: ts[0].ID, Value: []byte{0x02}}}); err != nil {
		t.Fatal(err)
	}
	waitResults(ctx, t, c, "results", map[uint64]string{}, map[uint64]bool{ids[0]: true, ids[1]: false})
}

// copyFiles copies the files of directory src into dst.
func copyFiles(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A worker that disconnects holding a task fails its attempt, and the
// queue's figures count it, as they count nacks and expired leases (a
// failure rate from them missed killed workers). Tasks it gave back
// before do not count.
func TestDisconnectCountsAFailedAttempt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(*testing.T) string
	}{
		{"single master", func(t *testing.T) string { addr, _ := qmtest.StartMaster(t, master.Config{}); return addr }},
		{"gateway", func(t *testing.T) string { return startGateway(t, master.Config{}) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.start(t)
			ctx := ctxFor(t, 20*time.Second)
			producer := qmtest.Dial(t, addr, "producer")
			if _, err := producer.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			w, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: qmtest.Authkey, Role: "worker"})
			if err != nil {
				t.Fatal(err)
			}
			taken, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
			if err != nil || len(taken) != 3 {
				t.Fatalf("get: %d tasks, %v", len(taken), err)
			}
			if err := w.Release(ctx, "jobs", taken[2:]); err != nil {
				t.Fatal(err)
			}
			w.Close()
			qmtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
				st, err := producer.Stats(ctx, "jobs")
				if err != nil || st[0].Disconnected != 2 || st[0].Leased != 0 {
					return fmt.Errorf("stats %+v, %v; want the 2 tasks held at the disconnect counted", st, err)
				}
				return nil
			})
		})
	}
}
