package worker_test

import (
	"bytes"
	"context"
	"errors"

	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// testConfig is a worker config for a test master at addr, with short
// timeouts and logs to the test's output.
func testConfig(t *testing.T, addr string, h worker.Handler) worker.Config {
	return worker.Config{
		Server:       addr,
		Authkey:      qmtest.Authkey,
		Name:         "w-" + t.Name(),
		Handler:      h,
		GetTimeout:   200 * time.Millisecond,
		ReconnectMin: 10 * time.Millisecond,
		ReconnectMax: 100 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// running is a worker started by startWorker.
type running struct {
	cancel context.CancelFunc
	done   chan error
}

// wait returns Run's error, failing the test if Run takes over d.
func (r *running) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(d):
		t.Fatalf("worker.Run did not return within %s", d)
		return nil
	}
}

// startWorker runs worker.Run in the background. Cleanup cancels it and
// waits for it, so it ends before the master that it talks to.
func startWorker(t *testing.T, cfg worker.Config) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- worker.Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Errorf("worker.Run did not return after cancel")
		}
	})
	return r
}

// put appends items to queue and returns their IDs.
func put(t *testing.T, c *wire.Client, queue string, items []any, opts wire.PutOptions) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ids, err := c.Put(ctx, queue, items, opts)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return ids
}

// results takes n results from queue, failing the test if they do not
// arrive within d.
func results(t *testing.T, c *wire.Client, queue string, n int, d time.Duration) []wire.Result {
	t.Helper()
	var out []wire.Result
	deadline := time.Now().Add(d)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d results of %d within %s: %+v", len(out), n, d, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ts, err := c.Get(ctx, queue, wire.GetOptions{Max: n - len(out), Timeout: 100 * time.Millisecond, NoAck: true})
		cancel()
		if err != nil {
			t.Fatalf("get results: %v", err)
		}
		for _, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatalf("decode result: %v", err)
			}
			out = append(out, r)
		}
	}
	return out
}

// noMoreResults fails the test if queue holds anything.
func noMoreResults(t *testing.T, c *wire.Client, queue string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts, err := c.Get(ctx, queue, wire.GetOptions{Max: 10, Timeout: 50 * time.Millisecond, NoAck: true})
	if err != nil {
		t.Fatalf("get results: %v", err)
	}
	if len(ts) > 0 {
		t.Fatalf("%d extra results in %s", len(ts), queue)
	}
}

func stats(t *testing.T, c *wire.Client, queue string) wire.QueueStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Stats(ctx, queue)
	if err != nil {
		t.Fatalf("stats %s: %v", queue, err)
	}
	if len(st) != 1 {
		t.Fatalf("stats %s: %d entries", queue, len(st))
	}
	return st[0]
}

func value(t *testing.T, r wire.Result) any {
	t.Helper()
	v, err := wire.DecodeValue(r.Value)
	if err != nil {
		t.Fatalf("decode value of task %d: %v", r.TaskID, err)
	}
	return v
}

// ownMaster is a master on an address the test chooses, so that a test
// can stop it and start another on the same port.
type ownMaster struct {
	srv    *master.Server
	served chan error
	once   sync.Once
}

func startMasterOn(t *testing.T, addr string, cfg master.Config) *ownMaster {
	t.Helper()
	if len(cfg.Authkey) == 0 {
		cfg.Authkey = qmtest.Authkey
	}
	srv, err := master.New(cfg)
	if err != nil {
		t.Fatalf("master.New: %v", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	m := &ownMaster{srv: srv, served: make(chan error, 1)}
	go func() { m.served <- srv.Serve(ln) }()
	t.Cleanup(func() { m.stop(t) })
	return m
}

func (m *ownMaster) stop(t *testing.T) {
	m.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.srv.Shutdown(ctx); err != nil {
			t.Errorf("master shutdown: %v", err)
		}
		if err := <-m.served; !errors.Is(err, master.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func ints(from, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = from + i
	}
	return out
}

// mostHeldUntilDone polls the master at addr until n tasks of "tasks" are
// done, failing the test after d, and returns the most tasks any worker
// held at once meanwhile.
func mostHeldUntilDone(t *testing.T, addr string, n int, d time.Duration) int {
	t.Helper()
	watch := qmtest.Dial(t, addr, "watch")
	most := 0
	deadline := time.Now().Add(d)
	for stats(t, watch, "tasks").Done < uint64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("tasks queue %+v after %s: want %d done", stats(t, watch, "tasks"), d, n)
		}
		cs, err := watch.Clients(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, ci := range cs {
			if ci.Role == "worker" {
				most = max(most, ci.InFlight)
			}
		}
		time.Sleep(time.Millisecond) // polling pace
	}
	return most
}
