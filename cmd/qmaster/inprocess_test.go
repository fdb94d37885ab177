package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// In-process tests: the commands run in this process against a master
// started by qmtest, so the race detector and goleak see their goroutines.

// runInProcess runs qmaster with args in this process, with QM_AUTHKEY set
// to the test key, and returns its exit code.
func runInProcess(ctx context.Context, f *factory, args ...string) int {
	f.Getenv = func(k string) string {
		if k == "QM_AUTHKEY" {
			return testKey
		}
		return ""
	}
	root := newRootCmd(f, nil)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	return exitCode(f.ErrOut, cmd, err)
}

func startInProcessMaster(t *testing.T, cfg master.Config) string {
	cfg.Authkey = []byte(testKey)
	addr, _ := qmtest.StartMaster(t, cfg)
	return addr
}

func TestMapInProcess(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxAttempts: 2})
	runWorker(t, addr, "tasks", func(n int64) (any, error) {
		if n%100 == 0 {
			return nil, fmt.Errorf("%d is round", n)
		}
		return n + 1, nil
	})
	f, out, errOut := testFactory(seq(1000))
	f.StderrTTY = true // draws the progress bar into errOut
	code := runInProcess(context.Background(), f, "map", "--server", addr, "--batch", "64", "--timeout", "30s")
	if code != 1 {
		t.Errorf("exit %d, want 1 (ten tasks fail); stderr:\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d lines, want 1000", len(lines))
	}
	for i, l := range lines {
		n := i + 1
		want := fmt.Sprint(n + 1)
		if n%100 == 0 {
			want = "null"
		}
		if l != want {
			t.Fatalf("line %d: %q, want %q", n, l, want)
		}
	}
	for _, want := range []string{
		"(input line 300: 300) failed after 2 attempts: 300 is round",
		"qmaster map: 10 of 1000 tasks failed",
		"(1000/1000", // the bar, finished
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

// Two maps reading one --results queue at once both finish: each puts
// back the other's results while it waits for its own, rather than hold
// them until it ends (when each waited on the other for ever).
func TestMapsSharingAResultsQueue(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	runWorker(t, addr, "tasks", func(n int64) (any, error) { return -n, nil })
	var wg sync.WaitGroup
	for _, in := range []string{"1\n2\n3\n4\n5\n6\n7\n8\n", "11\n12\n13\n14\n15\n16\n17\n18\n"} {
		wg.Go(func() {
			f, out, errOut := testFactory(in)
			if code := runInProcess(context.Background(), f, "map", "--server", addr, "--results", "shared", "--timeout", "60s", "--batch", "1"); code != 0 {
				t.Errorf("map of %q: exit %d; stderr:\n%s", in, code, errOut)
				return
			}
			if want := strings.ReplaceAll("-"+strings.TrimSuffix(in, "\n"), "\n", "\n-") + "\n"; out.String() != want {
				t.Errorf("map of %q printed %q, want %q", in, out, want)
			}
		})
	}
	wg.Wait()
}

// TestMapPutsBackForeignItems: items of a --results queue that map did not
// submit (a result of another's task, three that are not results, with
// the same task ID of 0, one put while map runs) are put back at its end,
// as they were, and counted right.
func TestMapPutsBackForeignItems(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	enc := encoder(t)
	foreign := []msgpack.RawMessage{enc(wire.Result{TaskID: 999999, Value: []byte{0xc0}}), enc(map[string]int{"foreign": 1}), enc(42), enc(nil)}
	if _, err := c.PutRaw(context.Background(), "shared", foreign, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	late := enc("late")
	var once sync.Once
	runWorker(t, addr, "tasks", func(n int64) (any, error) {
		once.Do(func() {
			if _, err := c.PutRaw(context.Background(), "shared", []msgpack.RawMessage{late}, wire.PutOptions{}); err != nil {
				t.Error(err)
			}
		})
		return -n, nil
	})

	f, out, errOut := testFactory("1\n2\n3\n")
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--results", "shared", "--timeout", "30s"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if out.String() != "-1\n-2\n-3\n" {
		t.Errorf("stdout %q", out)
	}
	if want := "qmaster map: put back 5 items of shared that this map did not submit\n"; errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	back, err := c.Get(context.Background(), "shared", wire.GetOptions{Max: 10, NoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	want := append(foreign, late)
	if len(back) != len(want) {
		t.Fatalf("shared holds %d items, want the %d map did not submit", len(back), len(want))
	}
	for i, task := range back {
		if len(task.Payload) == 0 {
			task.Payload = msgpackNil // as a get hands out nil
		}
		if !bytes.Equal(task.Payload, want[i]) {
			t.Errorf("item %d of shared is %x, want %x", i, task.Payload, want[i])
		}
	}
}

// TestMapTimeoutPrintsWhatCame: a map that times out prints the results
// that came, in input order, with null on the line whose result had not
// come (named on stderr), and counts what came in its message.
func TestMapTimeoutPrintsWhatCame(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() { cancel(); wg.Wait() })
	go func() { // a worker that holds the tasks of inputs 2 and 4 and completes the others
		defer wg.Done()
		var tasks []wire.Task
		for len(tasks) < 4 && ctx.Err() == nil {
			ts, err := c.Get(ctx, "tasks", wire.GetOptions{Max: 4, Timeout: 100 * time.Millisecond, Lease: time.Minute})
			if err != nil {
				return
			}
			tasks = append(tasks, ts...)
		}
		var done []wire.Completion
		for _, task := range tasks {
			v, err := task.Value()
			if n, ok := v.(int64); err == nil && ok && n%2 == 1 {
				b, _ := wire.Encode(n * n)
				done = append(done, wire.Completion{ID: task.ID, Value: b})
			}
		}
		if err := c.Complete(ctx, "tasks", "", done); err != nil && ctx.Err() == nil {
			t.Errorf("complete: %v", err)
		}
	}()
	f, out, errOut := testFactory(seq(4))
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "2s"); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if want := "1\nnull\n9\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
	for _, re := range []string{
		`(?m)^qmaster map: task \d+ \(input line 2: 2\) has no result yet: null printed in its place$`,
		`(?m)^qmaster map: timed out after 2s with 2 of 4 results; 1 line without a result printed as null, so that the others keep their input order \(named above\)$`,
	} {
		if !regexp.MustCompile(re).MatchString(errOut.String()) {
			t.Errorf("stderr lacks %s:\n%s", re, errOut)
		}
	}
}

// startMap runs a map of stdin to tasks at addr in the background, with
// checks of a waiting map every 100ms; its error comes on done.
func startMap(t *testing.T, addr, tasks, stdin string) (out, errOut *syncBuffer, done <-chan error) {
	t.Helper()
	return startMapTo(t, addr, tasks, "", stdin)
}

// startMapTo is startMap with its results to queue results ("": a
// private one).
func startMapTo(t *testing.T, addr, tasks, results, stdin string) (out, errOut *syncBuffer, done <-chan error) {
	t.Helper()
	return startMapAs(t, addr, testKey, tasks, results, stdin)
}

// startMapAs is startMapTo with the authkey key.
func startMapAs(t *testing.T, addr, key, tasks, results, stdin string) (out, errOut *syncBuffer, done <-chan error) {
	t.Helper()
	f, _, _ := testFactory(stdin)
	out, errOut = &syncBuffer{}, &syncBuffer{}
	f.Out, f.ErrOut = out, errOut
	opts := &mapOptions{IO: f, Client: clientOptions{Server: addr, Authkey: key, ConnectTimeout: 5 * time.Second},
		Tasks: tasks, Results: results, Batch: 1000, checkEvery: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	ch, exited := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(exited)
		ch <- mapRun(ctx, opts)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Error("map still running 10s after its cancellation")
		}
	})
	return out, errOut, ch
}

// TestMapTasksQueueDeleted: a map whose tasks queue is deleted fails on
// its next looks (two in a row find it gone), saying so, even when a
// worker's get has made the queue anew.
func TestMapTasksQueueDeleted(t *testing.T) {
	for _, tc := range []struct {
		name   string
		remade bool
	}{
		{"deleted", false},
		{"made anew by a worker's get", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startInProcessMaster(t, master.Config{})
			c := qmtestDial(t, addr)
			ctx := context.Background()
			_, errOut, done := startMap(t, addr, "dq", "1\n2\n3\n")
			qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
				if st, err := c.Stats(ctx, "dq"); err != nil || st[0].Ready != 3 {
					return fmt.Errorf("tasks not submitted yet: %v %v", st, err)
				}
				return nil
			})
			if err := c.Delete(ctx, "dq"); err != nil {
				t.Fatal(err)
			}
			if tc.remade {
				if _, err := c.Get(ctx, "dq", wire.GetOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case err := <-done:
				if want := "tasks queue dq was deleted; 3 tasks of this map went with it"; err == nil || err.Error() != want {
					t.Errorf("map: %v, want %q; stderr:\n%s", err, want, errOut)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("map still waits 5s after its tasks queue was deleted; stderr:\n%s", errOut)
			}
		})
	}
}

// waitStderr waits until a map's stderr, errOut, holds note.
func waitStderr(t *testing.T, errOut *syncBuffer, note string) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(errOut.String(), note) {
			return fmt.Errorf("stderr lacks %q:\n%s", note, errOut)
		}
		return nil
	})
}

// TestMapSaysWhyNoWorkerTakes: a map whose tasks no one takes says why
// on stderr, once, and goes on waiting until a worker serves them.
func TestMapSaysWhyNoWorkerTakes(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	out, errOut, done := startMap(t, addr, "lonely", "1\n2\n")
	noWorker := "qmaster map: waiting: 2 tasks ready in lonely and no worker connected\n"
	waitStderr(t, errOut, noWorker)
	runWorker(t, addr, "other", func(n int64) (any, error) { return n, nil })
	waitStderr(t, errOut, "qmaster map: waiting: 2 tasks ready in lonely and none taken (1 worker connected, none getting from lonely)\n")
	runWorker(t, addr, "lonely", func(n int64) (any, error) { return n * n, nil })
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("map: %v; stderr:\n%s", err, errOut)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("map still waits 10s after a worker came; stderr:\n%s", errOut)
	}
	if out.String() != "1\n4\n" {
		t.Errorf("stdout %q", out)
	}
	if n := strings.Count(errOut.String(), noWorker); n != 1 {
		t.Errorf("said %d times that no worker is connected, want once:\n%s", n, errOut)
	}
}

// TestMapWithoutAdminSaysWhyNoWorkerTakes: a map whose key may not list
// the clients says why no worker takes its tasks as far as it can, and
// does not ask, which the master would count and log as a denial.
func TestMapWithoutAdminSaysWhyNoWorkerTakes(t *testing.T) {
	rules, err := acl.Parse([]byte(`
[[key]]
name = "mapper"
secret = "mapper-secret"
put = ["lonely", "map-*"]
get = ["map-*"]
`), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	addr, _ := qmtest.StartMaster(t, master.Config{ACL: rules, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	_, errOut, _ := startMapAs(t, addr, "mapper-secret", "lonely", "", "1\n")
	waitStderr(t, errOut, "qmaster map: waiting: 1 task ready in lonely and none taken (is a worker serving lonely?)\n")
	if strings.Contains(log.String(), "permission denied") {
		t.Errorf("the master logged a denial of the map's key:\n%s", log.String())
	}
}

// TestMapSaysItsQueueIsPaused: a map whose tasks wait in a paused queue
// says so, workers waiting on the queue or not.
func TestMapSaysItsQueueIsPaused(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	if err := c.Pause(context.Background(), "held"); err != nil {
		t.Fatal(err)
	}
	runWorker(t, addr, "held", func(n int64) (any, error) { return n, nil }) // waits on it, in vain
	_, errOut, _ := startMap(t, addr, "held", "1\n2\n")
	note := "qmaster map: waiting: 2 tasks ready in held, which is paused (qmaster resume held)\n"
	waitStderr(t, errOut, note)
}

// TestMapSaysItsResultsAreHeld: a map whose tasks are all done, and whose
// results were taken by another connection (as through a gateway that
// died), says they come back when their leases run out, not that its
// tasks were purged.
func TestMapSaysItsResultsAreHeld(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	runWorker(t, addr, "sq", func(n int64) (any, error) { return n * n, nil })
	// Another client takes the results first, under a lease, as the dead
	// gateway's connection would have.
	c := qmtestDial(t, addr)
	taken := make(chan int, 1)
	go func() {
		ts, _ := c.Get(context.Background(), "res", wire.GetOptions{Max: 10, Timeout: 5 * time.Second, Lease: time.Minute})
		taken <- len(ts)
	}()
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if st, err := c.Stats(context.Background(), "res"); err != nil || st[0].Consumers != 1 {
			return fmt.Errorf("the taker is not waiting yet: %v %v", st, err)
		}
		return nil
	})
	_, errOut, _ := startMapTo(t, addr, "sq", "res", "3\n")
	if n := <-taken; n != 1 {
		t.Fatalf("the taker got %d results, want 1", n)
	}
	note := "qmaster map: waiting: 1 result due; sq holds none of its tasks, and 1 result waits in res, taken and not acknowledged by another connection (one lost with its gateway, or another client of the queue): it comes back when its lease runs out\n"
	waitStderr(t, errOut, note)
}

// TestMapSaysItsTasksAreGone: a map whose tasks were purged says so once,
// and goes on waiting (until --timeout).
func TestMapSaysItsTasksAreGone(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	_, errOut, done := startMap(t, addr, "purged", "1\n2\n")
	waitStderr(t, errOut, "2 tasks ready in purged")
	f, _, purgeErr := testFactory("")
	if code := runInProcess(context.Background(), f, "purge", "--server", addr, "purged"); code != 0 {
		t.Fatalf("purge: exit %d: %s", code, purgeErr)
	}
	note := "qmaster map: waiting: 2 results due, and purged holds no task, ready, running or delayed (purged, or dropped?); map waits until --timeout\n"
	waitStderr(t, errOut, note)
	select {
	case err := <-done:
		t.Fatalf("map ended (%v) after its tasks were purged; want it to wait", err)
	case <-time.After(300 * time.Millisecond): // three checks: said once
	}
	if n := strings.Count(errOut.String(), note); n != 1 {
		t.Errorf("said %d times that the tasks are gone, want once:\n%s", n, errOut)
	}
}

// TestMapFailedAfterOneAttempt: a task that fails for good at its first
// attempt is reported in the singular.
func TestMapFailedAfterOneAttempt(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxAttempts: 1})
	runWorker(t, addr, "tasks", func(n int64) (any, error) {
		if n == 2 {
			return nil, fmt.Errorf("two is wrong")
		}
		return n, nil
	})
	f, out, errOut := testFactory("1\n2\n")
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "30s"); code != 1 || out.String() != "1\nnull\n" {
		t.Errorf("exit %d, stdout %q; want 1 and a null", code, out)
	}
	if !regexp.MustCompile(`(?m)^qmaster map: task \d+ \(input line 2: 2\) failed after 1 attempt: two is wrong$`).MatchString(errOut.String()) {
		t.Errorf("stderr:\n%s", errOut)
	}
}

func TestMapEmptyInput(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, out, errOut := testFactory("\n\n")
	if code := runInProcess(context.Background(), f, "map", "--server", addr); code != 0 || out.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0 and nothing", code, out, errOut)
	}
}

func TestMapInterrupted(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	f, _, _ := testFactory("1\n2\n")
	errOut := &syncBuffer{}
	f.ErrOut = errOut
	done := make(chan int, 1)
	go func() { done <- runInProcess(ctx, f, "map", "--server", addr) }()
	c := qmtestDial(t, addr)
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st, err := c.Stats(context.Background(), "tasks")
		if err != nil || st[0].Ready != 2 {
			return fmt.Errorf("tasks not submitted yet: %v %v", st, err)
		}
		return nil
	})
	cancel()
	// "of 0": the put may have been cancelled before map counted it.
	if code := <-done; code != 1 || !regexp.MustCompile(`qmaster map: interrupted with 0 of [02] results`).MatchString(errOut.String()) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	names, err := c.Queues(context.Background())
	if err != nil || len(names) != 1 || names[0] != "tasks" {
		t.Errorf("queues after map %v, %v: want the private result queue deleted", names, err)
	}
	// Its tasks went with it: no worker runs them for no one.
	gctx, gcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer gcancel()
	if ts, err := c.Get(gctx, "tasks", wire.GetOptions{Max: 10, Timeout: 200 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Errorf("get after map: %d tasks, %v; want its tasks cancelled", len(ts), err)
	}
}

func TestPutBatches(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, out, errOut := testFactory(seq(2500))
	if code := runInProcess(context.Background(), f, "put", "--server", addr, "--batch", "1000", "--ids", "big"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if n := strings.Count(out.String(), "\n"); n != 2500 {
		t.Errorf("%d ids printed, want 2500", n)
	}
	st, err := qmtestDial(t, addr).Stats(context.Background(), "big")
	if err != nil || st[0].Ready != 2500 {
		t.Errorf("stats %v, %v; want 2500 ready", st, err)
	}
}

// TestPutQueueFull: a batch larger than the room in a queue at its max
// length puts what fits, in parts, and then, without --timeout, fails at
// once saying what to do.
func TestPutQueueFull(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxQueueLen: 3})
	f, out, errOut := testFactory(seq(5))
	start := time.Now()
	code := runInProcess(context.Background(), f, "put", "--server", addr, "--ids", "small")
	want := "qmaster put: put into small: queue small is full (its --max-queue-len); put waits for room with --timeout (after 3 items were put)\n"
	if code != 1 || errOut.String() != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, errOut, want)
	}
	if n := strings.Count(out.String(), "\n"); n != 3 {
		t.Errorf("%d ids printed, want the 3 put", n)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("took %s, want a failure at once", d)
	}
}

// TestPutWaitsForRoom: a batch larger than a queue's max length, into an
// empty queue, goes in as room is made within --timeout.
func TestPutWaitsForRoom(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxQueueLen: 3})
	c := qmtestDial(t, addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	taken := make(chan int, 1)
	go func() { // a slow consumer
		n := 0
		defer func() { taken <- n }()
		for n < 5 && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
			ts, err := c.Get(ctx, "small", wire.GetOptions{NoAck: true, Timeout: 100 * time.Millisecond})
			if err != nil {
				return
			}
			n += len(ts)
		}
	}()
	f, _, errOut := testFactory(seq(5))
	if code := runInProcess(context.Background(), f, "put", "--server", addr, "--timeout", "10s", "small"); code != 0 || errOut.String() != "put 5 items into small\n" {
		t.Fatalf("exit %d, stderr %q; want 0 and 5 items put", code, errOut)
	}
	select {
	case n := <-taken:
		if n != 5 {
			t.Errorf("the consumer took %d items, want 5", n)
		}
	case <-time.After(10 * time.Second):
		t.Error("the consumer did not get the 5 items")
	}
}

func TestInspectWatch(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, _, _ := testFactory("")
	out := &syncBuffer{}
	f.Out = out
	var wg sync.WaitGroup
	wg.Add(1)
	var code int
	go func() {
		defer wg.Done()
		code = runInProcess(ctx, f, "inspect", "--server", addr, "--watch", "--interval", "10ms")
	}()
	c := qmtestDial(t, addr)
	if _, err := c.Put(ctx, "watched", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := strings.Count(out.String(), "watched "); n < 2 {
			return fmt.Errorf("%d tables show the queue:\n%s", n, out)
		}
		return nil
	})
	cancel()
	wg.Wait()
	if code != 0 {
		t.Errorf("watch ended with %d, want 0", code)
	}
	if strings.Contains(out.String(), clearScreen) {
		t.Errorf("cleared the screen of a non-terminal")
	}
}

func TestClientsTable(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	qmtestDial(t, addr)
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "clients", "--server", addr); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID  ADDR") || !strings.Contains(out.String(), "qmaster clients (") {
		t.Errorf("clients table:\n%s", out)
	}
}

func TestConnectRefused(t *testing.T) {
	f, _, errOut := testFactory("")
	// Port 1 on loopback: nothing listens there.
	code := runInProcess(context.Background(), f, "queues", "--server", "127.0.0.1:1", "--connect-timeout", "1s")
	if msg := errOut.String(); code != 1 || !strings.HasPrefix(msg, "qmaster: ") || !strings.Contains(msg, "127.0.0.1:1") || !strings.Contains(msg, "refused") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// TestPlaintextAtTLSMaster: a client without --tls at a TLS master is
// asked whether the master requires TLS, whichever ends the handshake
// first: the master's handshake timeout (EOF), the client's
// --connect-timeout, or both at once.
func TestPlaintextAtTLSMaster(t *testing.T) {
	ca := qmtest.NewCA(t, "qm-test")
	certFile, keyFile := ca.Issue(t, "master")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	const handshake = 400 * time.Millisecond
	addr := startInProcessMaster(t, master.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, HandshakeTimeout: handshake})
	for _, tc := range []struct {
		name    string
		timeout time.Duration
	}{
		{"client times out first", handshake / 2},
		{"same timeout", handshake},
		{"master closes first", 4 * handshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _, errOut := testFactory("")
			code := runInProcess(context.Background(), f, "inspect", "--server", addr, "--connect-timeout", tc.timeout.String())
			if code != 1 || !strings.Contains(errOut.String(), "does the master require TLS? see --tls and --tls-ca") {
				t.Errorf("exit %d, stderr %q; want 1 and the TLS question", code, errOut)
			}
		})
	}
}

func TestUnknownQueue(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, _, errOut := testFactory("")
	code := runInProcess(context.Background(), f, "delete", "--server", addr, "nope")
	if code != 1 || errOut.String() != "qmaster delete: queue nope: unknown queue\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// delete --cancel-tasks cancels the tasks that reply to the queue, even
// one never made, and says so.
func TestDeleteCancelTasks(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "jobs", []any{1, 2}, wire.PutOptions{ReplyTo: "mine"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{3}, wire.PutOptions{ReplyTo: "theirs"}); err != nil {
		t.Fatal(err)
	}
	f, _, errOut := testFactory("")
	code := runInProcess(context.Background(), f, "delete", "--server", addr, "--cancel-tasks", "mine")
	if want := "no queue mine to delete; the tasks waiting to reply to it are cancelled\n"; code != 0 || errOut.String() != want {
		t.Errorf("exit %d, stderr %q; want 0, %q", code, errOut, want)
	}
	ts, err := c.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: time.Second})
	if err != nil || len(ts) != 1 || ts[0].ReplyTo != "theirs" {
		t.Errorf("get: %+v, %v; want the task replying to theirs alone", ts, err)
	}
}

func qmtestDial(t *testing.T, addr string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(testKey), Role: "admin", Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pythonPayloads are what Python clients send for the types of
// docs/VALUES.md (pyproto's corpus checks that they do).
var pythonPayloads = []string{
	"c70901010000000000000001",             // 2**64 + 1
	"c70d01f360d3632fb98b1215c0000000",     // -10**30
	"c70302920102",                         // {1, 2}
	"d7029192019202c40178",                 // {(1, (2, b'x'))}
	"c7050391d5039102",                     // frozenset({frozenset({2})})
	"d5046162",                             // bytearray(b'ab')
	"c7030400ff00",                         // bytearray(b'\x00\xff\x00')
	"c70a0707e80102030405000006",           // datetime(2024, 1, 2, 3, 4, 5, 6)
	"d7ff00005dc065937d25",                 // the same with tzinfo=timezone.utc
	"d807270f0c1f173b3b0f423fffffb2a80058", // datetime(9999, 12, 31, 23, 59, 59, 999999, timezone(-5:30, 'X'))
	"d60507e8021d",                         // date(2024, 2, 29)
	"c70606010203000004",                   // time(1, 2, 3, 4)
	"c70a06173b3b0f423f00001c20",           // time(23, 59, 59, 999999, tzinfo=timezone(+2:00))
	"c70c08ffffffff0000000500000007",       // timedelta(days=-1, seconds=5, microseconds=7)
	"d609312e3530",                         // Decimal('1.50')
	"c703094e614e",                         // Decimal('NaN')
	"d80a3ff8000000000000c000000000000000", // complex(1.5, -2)
	"81a16bd5029101",                       // {'k': {1}}
}

func pythonRaw(t *testing.T) []msgpack.RawMessage {
	t.Helper()
	raw := make([]msgpack.RawMessage, len(pythonPayloads))
	for i, h := range pythonPayloads {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		raw[i] = b
	}
	return raw
}

// TestPythonValuesPrinted: qmaster get and qmaster map print the Python
// types as docs/VALUES.md says, the same way.
func TestPythonValuesPrinted(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	raw := pythonRaw(t)
	if _, err := c.PutRaw(context.Background(), "py", raw, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "get", "--server", addr, "py", "-n", fmt.Sprint(len(raw))); code != 0 {
		t.Fatalf("get: exit %d; stderr:\n%s", code, errOut)
	}
	checkGolden(t, "values.golden", out.String())

	runWorker(t, addr, "tasks", func(n int64) (any, error) { return raw[n-1], nil })
	f, out, errOut = testFactory(seq(len(raw)))
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "30s"); code != 0 {
		t.Fatalf("map: exit %d; stderr:\n%s", code, errOut)
	}
	checkGolden(t, "values.golden", out.String())
}

// unavailableOnce is queues whose first put stores its tasks and then
// answers, as a gateway may while its engine elects a leader, that the
// queues are unavailable.
type unavailableOnce struct {
	*queue.Manager
	refused atomic.Bool
}

func (q *unavailableOnce) Put(ctx context.Context, req queue.PutRequest) ([]uint64, error) {
	ids, err := q.Manager.Put(ctx, req)
	if err == nil && !req.Results && q.refused.CompareAndSwap(false, true) {
		return nil, queue.ErrUnavailable
	}
	return ids, err
}

// A map through one master puts a batch again when it is told the queues
// are unavailable, under the same request ID: the batch, stored the first
// time, is stored once, and no result is ignored as foreign.
func TestMapPutAgainAfterUnavailableStoresOnce(t *testing.T) {
	var qs *unavailableOnce
	addr := startInProcessMaster(t, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		m, err := queue.New(qc)
		qs = &unavailableOnce{Manager: m}
		return qs, err
	}})
	runWorker(t, addr, "tasks", func(n int64) (any, error) { return n * n, nil })
	f, out, errOut := testFactory(seq(100))
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "30s"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if !qs.refused.Load() {
		t.Fatal("no put was refused")
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr %q, want nothing", errOut)
	}
	var want strings.Builder
	for n := 1; n <= 100; n++ {
		fmt.Fprintln(&want, n*n)
	}
	if out.String() != want.String() {
		t.Errorf("stdout %q", out)
	}
	st, err := qmtestDial(t, addr).Stats(context.Background(), "tasks")
	if err != nil || len(st) != 1 || st[0].Puts != 100 {
		t.Fatalf("tasks: %+v, %v; want 100 puts", st, err)
	}
}
