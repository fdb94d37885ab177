package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

func mustBuiltin(t *testing.T, name string) worker.Handler {
	t.Helper()
	h, err := worker.Builtin(name)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestSquareEveryResultOnce(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n = 200
	ids := put(t, c, "tasks", ints(0, n), wire.PutOptions{})

	cfg := testConfig(t, addr, mustBuiltin(t, "square"))
	cfg.Concurrency = 4
	cfg.Logger = slog.New(slog.DiscardHandler) // 600 debug lines help nobody
	startWorker(t, cfg)

	want := make(map[uint64]int64, n)
	for i, id := range ids {
		want[id] = int64(i * i)
	}
	for _, r := range results(t, c, "results", n, 20*time.Second) {
		w, ok := want[r.TaskID]
		if !ok {
			t.Fatalf("result for task %d: unknown or seen twice", r.TaskID)
		}
		delete(want, r.TaskID)
		if r.Error != "" {
			t.Errorf("task %d: error %q", r.TaskID, r.Error)
		}
		if got := value(t, r); got != w {
			t.Errorf("task %d: value %#v, want %d", r.TaskID, got, w)
		}
		if r.Attempt != 1 || r.Worker != cfg.Name {
			t.Errorf("task %d: attempt %d by %q, want 1 by %q", r.TaskID, r.Attempt, r.Worker, cfg.Name)
		}
	}
	noMoreResults(t, c, "results")
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Done != n || st.Ready != 0 || st.Leased != 0 || st.Nacks != 0 {
			return fmt.Errorf("tasks queue: %+v", st)
		}
		return nil
	})
}

// The worker never runs more than Concurrency tasks, nor holds leased more
// than twice that: those running and the results on their way back.
func TestConcurrencyBoundsRunningAndLeased(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	admin := qmtest.Dial(t, addr, "admin")
	const n, conc = 30, 3
	put(t, c, "tasks", ints(0, n), wire.PutOptions{})

	var running, peak atomic.Int32
	var mu sync.Mutex
	var overLeased []int
	h := func(ctx context.Context, task worker.Task) (any, error) {
		cur := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		if st := stats(t, admin, "tasks"); st.Leased > 2*conc {
			mu.Lock()
			overLeased = append(overLeased, st.Leased)
			mu.Unlock()
		}
		time.Sleep(5 * time.Millisecond)
		return nil, nil
	}
	cfg := testConfig(t, addr, h)
	cfg.Concurrency = conc
	cfg.Logger = slog.New(slog.DiscardHandler)
	startWorker(t, cfg)
	results(t, c, "results", n, 20*time.Second)
	if p := peak.Load(); p > conc || p < 2 {
		t.Errorf("peak concurrency %d, want 2..%d", p, conc)
	}
	if len(overLeased) > 0 {
		t.Errorf("leased counts above %d seen: %v", 2*conc, overLeased)
	}
}

// Tasks taken in one get all run at once when their handlers block: a
// blocked handler holds up none of the others, up to Concurrency.
func TestBlockedHandlersHoldUpNoOther(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const conc = 8
	put(t, c, "tasks", ints(0, conc), wire.PutOptions{})

	var started sync.WaitGroup
	started.Add(conc)
	all := make(chan struct{})
	go func() { started.Wait(); close(all) }()
	h := func(ctx context.Context, task worker.Task) (any, error) {
		started.Done()
		select {
		case <-all:
			return "ok", nil
		case <-time.After(5 * time.Second):
			return nil, errors.New("the other tasks did not start within 5s")
		}
	}
	cfg := testConfig(t, addr, h)
	cfg.Concurrency = conc
	startWorker(t, cfg)
	for _, r := range results(t, c, "results", conc, 20*time.Second) {
		if r.Error != "" {
			t.Errorf("task %d: %s", r.TaskID, r.Error)
		}
	}
}

func TestHandlerErrorIsRetried(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"x"}, wire.PutOptions{})

	var mu sync.Mutex
	var lastErrs []string
	h := func(ctx context.Context, task worker.Task) (any, error) {
		mu.Lock()
		lastErrs = append(lastErrs, task.LastError)
		mu.Unlock()
		if task.Attempt < 2 {
			return nil, errors.New("flaky")
		}
		return "ok", nil
	}
	startWorker(t, testConfig(t, addr, h))
	r := results(t, c, "results", 1, 10*time.Second)[0]
	if r.Error != "" || r.Attempt != 2 || value(t, r) != "ok" {
		t.Fatalf("result %+v (value %v), want ok at attempt 2", r, value(t, r))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(lastErrs) != 2 || lastErrs[1] != "flaky" {
		t.Errorf("LastError seen by the attempts: %q, want [\"\" \"flaky\"]", lastErrs)
	}
	if st := stats(t, c, "tasks"); st.Nacks != 1 || st.Done != 1 {
		t.Errorf("tasks queue: %+v, want 1 nack and 1 done", st)
	}
}

// RetryAfter(0) retries at once, not after the queue's backoff (the
// protocol's 0 is "unset"); so do a client's NackAfter(0) and a --stdio
// child's "!retry 0" (TestStdioRetryAtOnce).
func TestRetryAfterZeroIsAtOnce(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3, RetryBackoffMin: time.Hour, RetryBackoffMax: time.Hour})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"x"}, wire.PutOptions{})
	startWorker(t, testConfig(t, addr, func(ctx context.Context, task worker.Task) (any, error) {
		if task.Attempt < 2 {
			return nil, worker.RetryAfter(0, errors.New("again"))
		}
		return "done", nil
	}))
	if r := results(t, c, "results", 1, 10*time.Second)[0]; r.Error != "" || r.Attempt != 2 {
		t.Fatalf("result %+v, want done at attempt 2, at once", r)
	}

	ids := put(t, c, "direct", []any{"y"}, wire.PutOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ts, err := c.Get(ctx, "direct", wire.GetOptions{}); err != nil || len(ts) != 1 {
		t.Fatalf("get: %+v, %v", ts, err)
	}
	if err := c.NackAfter(ctx, "direct", ids[0], "again", 0); err != nil {
		t.Fatal(err)
	}
	if ts, err := c.Get(ctx, "direct", wire.GetOptions{Timeout: 5 * time.Second}); err != nil || len(ts) != 1 || ts[0].Attempt != 2 {
		t.Fatalf("get after NackAfter(0): %+v, %v; want the task again at once, at attempt 2", ts, err)
	}
}

// TestRetryAfter: a handler's worker.RetryAfter holds its task back for
// that long before the next attempt, with the error as its LastError.
func TestRetryAfter(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"x"}, wire.PutOptions{})
	const wait = 300 * time.Millisecond
	var mu sync.Mutex
	var starts []time.Time
	h := func(ctx context.Context, task worker.Task) (any, error) {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		if task.Attempt < 2 {
			return nil, worker.RetryAfter(wait, errors.New("429 too many requests"))
		}
		return task.LastError, nil
	}
	startWorker(t, testConfig(t, addr, h))
	r := results(t, c, "results", 1, 10*time.Second)[0]
	if r.Error != "" || r.Attempt != 2 || value(t, r) != "429 too many requests" {
		t.Fatalf("result %+v (value %v), want the error text at attempt 2", r, value(t, r))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 2 || starts[1].Sub(starts[0]) < wait {
		t.Fatalf("attempts started at %v; want the second %v after the first", starts, wait)
	}
}

// nilDerefError's Error reads through its receiver: a nil one returned
// as a non-nil error panics there.
type nilDerefError struct{ msg string }

func (e *nilDerefError) Error() string { return e.msg }

// panickyResult panics as it is encoded.
type panickyResult struct{}

func (panickyResult) MarshalMsgpack() ([]byte, error) { panic("cannot encode") }

func TestFailingTaskIsDeadLettered(t *testing.T) {
	for _, tt := range []struct {
		name    string
		handler worker.Handler
		want    string
	}{
		{"error", mustBuiltin(t, "fail"), "fail: always fails"},
		{"panic", func(context.Context, worker.Task) (any, error) { panic("boom") }, "panic: boom"},
		// Panics past the handler's return, and a handler that ends its
		// goroutine: each fails its attempt, and the worker goes on.
		{"nil error of a pointer type", func(context.Context, worker.Task) (any, error) {
			var err *nilDerefError
			return nil, err
		}, "panic: runtime error: invalid memory address"},
		{"result whose encoding panics", func(context.Context, worker.Task) (any, error) {
			return panickyResult{}, nil
		}, "panic: cannot encode"},
		{"runtime.Goexit", func(context.Context, worker.Task) (any, error) {
			runtime.Goexit() // what a test's t.FailNow does
			return nil, nil
		}, "runtime.Goexit"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3})
			c := qmtest.Dial(t, addr, "producer")
			// The master publishes a dead task's error to its reply-to queue.
			put(t, c, "tasks", []any{1}, wire.PutOptions{ReplyTo: "replies"})
			cfg := testConfig(t, addr, tt.handler)
			cfg.Concurrency = 2
			startWorker(t, cfg)
			r := results(t, c, "replies", 1, 10*time.Second)[0]
			if !strings.Contains(r.Error, tt.want) || r.Attempt != 3 {
				t.Fatalf("result %+v, want error with %q after 3 attempts", r, tt.want)
			}
			st := stats(t, c, "tasks")
			if st.Dead != 1 || st.Nacks != 3 || st.Done != 0 {
				t.Errorf("tasks queue: %+v, want 1 dead after 3 nacks", st)
			}
			noMoreResults(t, c, "results")
		})
	}
}

// TestNoRetry: a task whose attempt would fail however often it ran goes
// to the dead-letter queue after that attempt, its reply queue told,
// whatever attempts it has left: the handler said so (NoRetry), or its
// result cannot be sent.
func TestNoRetry(t *testing.T) {
	for _, tt := range []struct {
		name    string
		handler worker.Handler
		want    string
	}{
		{"said so", func(context.Context, worker.Task) (any, error) {
			return nil, worker.NoRetry(errors.New("not an image"))
		}, "not an image"},
		{"result not encodable", func(context.Context, worker.Task) (any, error) {
			return make(chan int), nil
		}, "result: "},
		{"result nested too deep", func(context.Context, worker.Task) (any, error) {
			var v any = 1
			for range wire.MaxResultDepth + 1 {
				v = []any{v}
			}
			return v, nil
		}, fmt.Sprintf("result nests more than %d arrays and maps", wire.MaxResultDepth)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 5})
			c := qmtest.Dial(t, addr, "producer")
			ids := put(t, c, "tasks", []any{1}, wire.PutOptions{ReplyTo: "replies"})
			startWorker(t, testConfig(t, addr, tt.handler))
			r := results(t, c, "replies", 1, 10*time.Second)[0]
			if r.TaskID != ids[0] || !strings.Contains(r.Error, tt.want) || r.Attempt != 1 {
				t.Fatalf("result %+v, want error with %q after 1 attempt of 5", r, tt.want)
			}
			if st := stats(t, c, "tasks"); st.Dead != 1 || st.Nacks != 1 || st.Ready != 0 {
				t.Errorf("tasks queue: %+v, want 1 dead after 1 nack", st)
			}
			dead, err := c.Peek(context.Background(), "tasks.dead", 1)
			if err != nil || len(dead) != 1 || dead[0].ID != ids[0] || !strings.Contains(dead[0].LastError, tt.want) {
				t.Errorf("dead-letter queue: %+v, %v; want the task with its error", dead, err)
			}
		})
	}
}

// A task that runs for three leases is not redelivered: its lease is
// renewed while it runs.
func TestLeaseIsExtended(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{DefaultLease: 300 * time.Millisecond})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{1.0}, wire.PutOptions{})
	cfg := testConfig(t, addr, mustBuiltin(t, "sleep"))
	cfg.Concurrency = 2 // a second slot that would take a redelivery
	startWorker(t, cfg)

	r := results(t, c, "results", 1, 10*time.Second)[0]
	if r.TaskID != ids[0] || r.Attempt != 1 || r.Error != "" {
		t.Fatalf("result %+v, want task %d done at attempt 1", r, ids[0])
	}
	noMoreResults(t, c, "results")
	if st := stats(t, c, "tasks"); st.Expired != 0 || st.Gets != 1 || st.Done != 1 {
		t.Fatalf("tasks queue %+v: want one get, no expiry", st)
	}
}

// Cancelling Run's ctx lets the running task finish, with its ctx intact,
// and complete; the next task stays in the queue.
func TestDrainOnCancel(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"a", "b"}, wire.PutOptions{})

	started := make(chan struct{}, 2)
	var ctxErr atomic.Value
	h := func(ctx context.Context, task worker.Task) (any, error) {
		started <- struct{}{}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
		ctxErr.Store(fmt.Sprint(ctx.Err()))
		return "finished", nil
	}
	w := startWorker(t, testConfig(t, addr, h))
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("handler never started")
	}
	begin := time.Now()
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("Run returned %s after cancel, before its handler finished", took)
	}
	if got := ctxErr.Load(); got != "<nil>" {
		t.Errorf("handler ctx err = %v, want nil (drain must not cancel it)", got)
	}
	r := results(t, c, "results", 1, 5*time.Second)[0]
	if r.TaskID != ids[0] || value(t, r) != "finished" {
		t.Fatalf("result %+v, want task %d finished", r, ids[0])
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Ready != 1 || st.Leased != 0 || st.Done != 1 {
			return fmt.Errorf("tasks queue %+v: want 1 done, 1 ready", st)
		}
		return nil
	})
	if len(started) != 0 {
		t.Error("a second task was started during the drain")
	}
}

// A drain takes no task put after it began, though a free slot's get was
// waiting at the master then: the get is cancelled there, and a task it
// took just before would be given back unrun. The task stays for
// another worker, at its first attempt.
func TestDrainTakesNoTaskPutAfterwards(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"slow"}, wire.PutOptions{})
	started, finish := make(chan struct{}), make(chan struct{})
	var ranLate atomic.Bool
	cfg := testConfig(t, addr, func(_ context.Context, task worker.Task) (any, error) {
		if v, _ := task.Value(); v == "slow" {
			close(started)
			<-finish
		} else {
			ranLate.Store(true)
		}
		return "done", nil
	})
	cfg.Concurrency = 2
	cfg.GetTimeout = 20 * time.Second
	w := startWorker(t, cfg)
	<-started
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Consumers != 1 {
			return fmt.Errorf("tasks queue %+v: want the free slot's get waiting", st)
		}
		return nil
	})
	w.cancel()
	late := put(t, c, "tasks", []any{"late"}, wire.PutOptions{})
	close(finish)
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if ranLate.Load() {
		t.Fatal("the drain ran a task put after it began")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts, err := c.Get(ctx, "tasks", wire.GetOptions{Max: 10})
	if err != nil || len(ts) != 1 || ts[0].ID != late[0] || ts[0].Attempt != 1 {
		t.Fatalf("get: %+v, %v; want task %d at its first attempt", ts, err, late[0])
	}
}

// TestDrainTimeout: a drain that runs past DrainTimeout cancels the
// handlers still running, with cause ErrDrainTimeout, gives their tasks
// back to the master at once, unattempted, drops what the handlers then
// return, and ends; a handler that finished in time has its result sent.
func TestDrainTimeout(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"quick", "slow"}, wire.PutOptions{})

	started := make(chan struct{}, 2)
	var cause atomic.Value
	h := func(ctx context.Context, task worker.Task) (any, error) {
		started <- struct{}{}
		if v, _ := task.Value(); v == "quick" {
			<-time.After(100 * time.Millisecond) // finishes during the drain, in time
			return "done", nil
		}
		<-ctx.Done()
		cause.Store(context.Cause(ctx))
		return "too late", nil
	}
	cfg := testConfig(t, addr, h)
	cfg.Concurrency = 2
	cfg.DrainTimeout = 300 * time.Millisecond
	w := startWorker(t, cfg)
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("handlers never started")
		}
	}
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if got, _ := cause.Load().(error); !errors.Is(got, worker.ErrDrainTimeout) || !errors.Is(got, worker.ErrLeaseLost) {
		t.Errorf("slow handler's ctx cause = %v, want ErrDrainTimeout (an ErrLeaseLost)", got)
	}
	r := results(t, c, "results", 1, 5*time.Second)[0]
	if r.TaskID != ids[0] || value(t, r) != "done" {
		t.Fatalf("result %+v, want the quick task's", r)
	}
	noMoreResults(t, c, "results")
	// Given back: ready at once, not after its lease (30s), unattempted.
	if st := stats(t, c, "tasks"); st.Ready != 1 || st.Leased != 0 || st.Done != 1 {
		t.Fatalf("tasks queue %+v: want the slow task ready again, the quick one done", st)
	}
	ts, err := c.Get(context.Background(), "tasks", wire.GetOptions{})
	if err != nil || len(ts) != 1 || ts[0].ID != ids[1] || ts[0].Attempt != 1 {
		t.Fatalf("get after the drain: %+v, %v; want the slow task at attempt 1", ts, err)
	}
}

// TestGiveBackNow: Run's ctx cancelled with a cause marked by GiveBackNow
// gives the running tasks back at once, unattempted, though DrainTimeout
// is zero (wait for the handlers however long).
func TestGiveBackNow(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"a", "b"}, wire.PutOptions{})
	started := make(chan struct{}, 2)
	h := func(ctx context.Context, task worker.Task) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		return "too late", nil
	}
	cfg := testConfig(t, addr, h)
	cfg.Concurrency = 2
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- worker.Run(ctx, cfg) }()
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("handlers never started")
		}
	}
	why := errors.New("the handlers cannot run")
	if g := worker.GiveBackNow(why); g.Error() != why.Error() || !errors.Is(g, why) {
		t.Fatalf("GiveBackNow(%v) = %v, want its text, wrapping it", why, g)
	}
	cancel(worker.GiveBackNow(why))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run still waits for its handlers")
	}
	noMoreResults(t, c, "results")
	if st := stats(t, c, "tasks"); st.Ready != 2 || st.Leased != 0 || st.Nacks != 0 {
		t.Fatalf("tasks queue %+v: want both tasks ready again, unattempted", st)
	}
	ts, err := c.Get(context.Background(), "tasks", wire.GetOptions{Max: 2})
	if err != nil || len(ts) != 2 || ts[0].ID != ids[0] || ts[0].Attempt != 1 || ts[1].Attempt != 1 {
		t.Fatalf("get after: %+v, %v; want both tasks, in order, at attempt 1", ts, err)
	}
}

func TestIdleExit(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")

	t.Run("empty queue", func(t *testing.T) {
		cfg := testConfig(t, addr, mustBuiltin(t, "echo"))
		cfg.IdleExit = 200 * time.Millisecond
		cfg.GetTimeout = 5 * time.Second // idle exit must not wait for a whole get
		begin := time.Now()
		w := startWorker(t, cfg)
		if err := w.wait(t, 3*time.Second); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		if took := time.Since(begin); took < 200*time.Millisecond || took > 2*time.Second {
			t.Errorf("Run returned after %s, want about 200ms", took)
		}
	})
	t.Run("after work", func(t *testing.T) {
		put(t, c, "work", []any{"a", "b", "c"}, wire.PutOptions{})
		cfg := testConfig(t, addr, mustBuiltin(t, "echo"))
		cfg.Tasks, cfg.Results = "work", "work-results"
		cfg.IdleExit = 200 * time.Millisecond
		cfg.GetTimeout = 5 * time.Second
		w := startWorker(t, cfg)
		if err := w.wait(t, 3*time.Second); err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
		results(t, c, "work-results", 3, time.Second)
	})
}

// A worker that never reaches the master within its idle exit time fails
// with why, rather than end as an idle worker does: a batch job started
// against a master that is down must not look done.
func TestIdleExitWithoutAMaster(t *testing.T) {
	cfg := testConfig(t, qmtest.FreeAddrs(t, 1)[0], mustBuiltin(t, "echo")) // nothing listens there
	cfg.IdleExit = 300 * time.Millisecond
	err := startWorker(t, cfg).wait(t, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "master not reached within the idle exit time (300ms)") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("Run = %v, want the failure to reach the master", err)
	}
}

func TestMaxTasks(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", ints(1, 10), wire.PutOptions{})
	cfg := testConfig(t, addr, mustBuiltin(t, "square"))
	cfg.MaxTasks = 3
	cfg.Concurrency = 2
	w := startWorker(t, cfg)
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	results(t, c, "results", 3, time.Second)
	noMoreResults(t, c, "results")
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if st := stats(t, c, "tasks"); st.Ready != 7 || st.Leased != 0 || st.Gets != 3 {
			return fmt.Errorf("tasks queue %+v: want 7 ready, 3 gets", st)
		}
		return nil
	})
}

// A master that goes away and comes back on the same address gets the
// worker back.
func TestReconnectsToRestartedMaster(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	m1 := startMasterOn(t, addr, master.Config{})
	cfg := testConfig(t, addr, mustBuiltin(t, "square"))
	cfg.Concurrency = 2
	w := startWorker(t, cfg)

	c1 := qmtest.Dial(t, addr, "producer")
	put(t, c1, "tasks", ints(1, 5), wire.PutOptions{})
	results(t, c1, "results", 5, 5*time.Second)
	c1.Close()
	m1.stop(t)

	startMasterOn(t, addr, master.Config{})
	c2 := qmtest.Dial(t, addr, "producer")
	ids := put(t, c2, "tasks", ints(10, 5), wire.PutOptions{})
	rs := results(t, c2, "results", 5, 10*time.Second)
	for _, r := range rs {
		if r.Error != "" || r.TaskID < ids[0] || r.TaskID > ids[4] {
			t.Errorf("result after restart: %+v", r)
		}
	}
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
}

// The worker waits for a master that is not up yet.
func TestRetriesUntilMasterIsUp(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	logs := &syncBuffer{}
	cfg := testConfig(t, addr, mustBuiltin(t, "echo"))
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	startWorker(t, cfg)
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := strings.Count(logs.String(), "retrying"); n < 2 {
			return fmt.Errorf("%d retries logged", n)
		}
		return nil
	})
	startMasterOn(t, addr, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"hi"}, wire.PutOptions{})
	if r := results(t, c, "results", 1, 5*time.Second)[0]; value(t, r) != "hi" {
		t.Fatalf("result %+v", r)
	}
}

func TestWrongAuthkeyIsNotRetried(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	logs := &syncBuffer{}
	cfg := testConfig(t, addr, mustBuiltin(t, "echo"))
	cfg.Authkey = []byte("not the key")
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	begin := time.Now()
	w := startWorker(t, cfg)
	err := w.wait(t, 5*time.Second)
	if !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("Run = %v, want auth.ErrAuthFailed", err)
	}
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Run took %s to give up", took)
	}
	if strings.Contains(logs.String(), "retrying") {
		t.Errorf("a wrong authkey was retried:\n%s", logs)
	}
}

func TestNoAuthMaster(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{InsecureNoAuth: true})
	cfg := testConfig(t, addr, mustBuiltin(t, "square"))
	cfg.Authkey = nil
	cfg.IdleExit = 300 * time.Millisecond
	w := startWorker(t, cfg)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Role: "producer"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	put(t, c, "tasks", []any{"7"}, wire.PutOptions{})
	if r := results(t, c, "results", 1, 5*time.Second)[0]; value(t, r) != int64(49) {
		t.Fatalf("result %+v", r)
	}
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

func TestCommandThroughRun(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{1, 2, 3, "x"}, wire.PutOptions{ReplyTo: "replies"})
	cfg := testConfig(t, addr, worker.Command([]string{"sh", "-c", `read x; test "$x" != x || { echo "bad input" >&2; exit 3; }; echo $((x*2))`}, 5*time.Second))
	cfg.Concurrency = 2
	startWorker(t, cfg)
	got := map[uint64]wire.Result{}
	for _, r := range results(t, c, "replies", 4, 10*time.Second) {
		got[r.TaskID] = r
	}
	for i, want := range []int64{2, 4, 6} {
		if r := got[ids[i]]; r.Error != "" || value(t, r) != want {
			t.Errorf("task %d: %+v, want %d", ids[i], r, want)
		}
	}
	if r := got[ids[3]]; !strings.Contains(r.Error, "exit status 3: bad input") {
		t.Errorf("failing task: %+v, want exit status 3: bad input", r)
	}
}

func TestConfigValidate(t *testing.T) {
	h := mustBuiltin(t, "echo")
	for _, tt := range []struct {
		name  string
		cfg   worker.Config
		field string
	}{
		{"no server", worker.Config{Handler: h}, "Server"},
		{"no port", worker.Config{Server: "localhost", Handler: h}, "Server"},
		{"no handler", worker.Config{Server: "h:1"}, "Handler"},
		{"negative concurrency", worker.Config{Server: "h:1", Handler: h, Concurrency: -1}, "Concurrency"},
		{"negative get timeout", worker.Config{Server: "h:1", Handler: h, GetTimeout: -1}, "GetTimeout"},
		{"tiny lease", worker.Config{Server: "h:1", Handler: h, Lease: time.Millisecond}, "Lease"},
		{"negative idle", worker.Config{Server: "h:1", Handler: h, IdleExit: -1}, "IdleExit"},
		{"negative max", worker.Config{Server: "h:1", Handler: h, MaxTasks: -1}, "MaxTasks"},
		{"backoff order", worker.Config{Server: "h:1", Handler: h, ReconnectMin: time.Second, ReconnectMax: time.Millisecond}, "ReconnectMin"},
		{"tasks queue with a line's end", worker.Config{Server: "h:1", Handler: h, Tasks: "jobs\n"}, "Tasks"},
		{"results queue with a line's end", worker.Config{Server: "h:1", Handler: h, Results: "out\r\n"}, "Results"},
		{"results queue not UTF-8", worker.Config{Server: "h:1", Handler: h, Results: "out\xff"}, "Results"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("Validate() = %v, want an error naming %s", err, tt.field)
			}
			if err := worker.Run(context.Background(), tt.cfg); err == nil || err.Error() != tt.cfg.Validate().Error() {
				t.Fatalf("Run = %v, want the Validate error", err)
			}
		})
	}
	ok := worker.Config{Server: "127.0.0.1:5000", Handler: h}
	if err := ok.Validate(); err != nil {
		t.Fatalf("Validate(minimal config) = %v", err)
	}
}

// When the connection drops, a running task's ctx is cancelled with
// ErrLeaseLost (the master has requeued the task) and its result dropped;
// the worker carries on with the next master.
func TestConnectionLossCancelsRunningTasks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	m1 := startMasterOn(t, addr, master.Config{})
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	h := func(ctx context.Context, task worker.Task) (any, error) {
		v, _ := task.Value()
		if v != "block" {
			return v, nil
		}
		started <- struct{}{}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		return nil, ctx.Err()
	}
	cfg := testConfig(t, addr, h)
	cfg.Concurrency = 1
	w := startWorker(t, cfg)

	c1 := qmtest.Dial(t, addr, "producer")
	put(t, c1, "tasks", []any{"block"}, wire.PutOptions{})
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("handler never started")
	}
	c1.Close()
	m1.stop(t)
	select {
	case cause := <-causes:
		if !errors.Is(cause, worker.ErrLeaseLost) {
			t.Fatalf("handler ctx cause = %v, want ErrLeaseLost", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler ctx not cancelled after the connection dropped")
	}

	startMasterOn(t, addr, master.Config{})
	c2 := qmtest.Dial(t, addr, "producer")
	put(t, c2, "tasks", []any{"next"}, wire.PutOptions{})
	if r := results(t, c2, "results", 1, 10*time.Second)[0]; value(t, r) != "next" {
		t.Fatalf("result %+v, want next", r)
	}
	w.cancel()
	if err := w.wait(t, 5*time.Second); err != nil {
		t.Fatalf("Run = %v", err)
	}
}

// refusingGets is a master's queues that refuse every get of tasks after
// the first, as a master does a get it cannot serve (wire.ErrBadRequest).
type refusingGets struct {
	*queue.Manager
	gets atomic.Int32
}

func (q *refusingGets) Get(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	if req.Queue == "tasks" && q.gets.Add(1) > 1 {
		return nil, fmt.Errorf("%w: refused by the test", queue.ErrBadArgument)
	}
	return q.Manager.Get(ctx, req, dst)
}

// A worker whose get is refused stops taking tasks and waits for its
// running handler. If its connection is lost meanwhile, it stops with the
// get's error rather than connect again.
func TestWorkerStoppingForARefusedGetDoesNotReconnect(t *testing.T) {
	addr := qmtest.FreeAddrs(t, 1)[0]
	m := startMasterOn(t, addr, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		q, err := queue.New(qc)
		if err != nil {
			return nil, err
		}
		return &refusingGets{Manager: q}, nil
	}})
	started, release := make(chan struct{}, 1), make(chan struct{})
	logs := &syncBuffer{}
	cfg := testConfig(t, addr, func(ctx context.Context, _ worker.Task) (any, error) {
		started <- struct{}{}
		select {
		case <-release:
			return "done", nil
		case <-ctx.Done(): // the lease is lost with the connection
			return nil, ctx.Err()
		}
	})
	cfg.Concurrency = 2 // a second get goes out while the handler runs
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	defer close(release)
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"x"}, wire.PutOptions{})
	w := startWorker(t, cfg)
	<-started
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), "get refused") {
			return errors.New("the refused get is not logged")
		}
		return nil
	})
	c.Close()
	m.stop(t) // the connection is lost while the worker waits for its handler
	err := w.wait(t, 10*time.Second)
	if !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("Run = %v, want the refused get's error; logs:\n%s", err, logs)
	}
	if strings.Contains(logs.String(), "retrying") {
		t.Errorf("the worker connected again:\n%s", logs)
	}
}

// A worker whose key may not get from its queue stops with the denial,
// rather than connect again and again, saying that the connection was
// lost.
func TestWorkerWithoutPermissionStops(t *testing.T) {
	rules, err := acl.Parse([]byte("[[key]]\nname = \"nobody\"\nsecret = \"nobody-secret\"\nput = [\"tasks\"]\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := qmtest.StartMaster(t, master.Config{ACL: rules})
	logs := &syncBuffer{}
	cfg := testConfig(t, addr, func(context.Context, worker.Task) (any, error) { return nil, nil })
	cfg.Authkey = []byte("nobody-secret")
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	err = startWorker(t, cfg).wait(t, 10*time.Second)
	if !errors.Is(err, wire.ErrPermissionDenied) || !strings.Contains(err.Error(), "key nobody may not get from tasks") {
		t.Fatalf("Run = %v, want the denial", err)
	}
	if strings.Contains(logs.String(), "reconnecting") {
		t.Errorf("the worker connected again:\n%s", logs)
	}
}
