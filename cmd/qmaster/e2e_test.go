package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/wire"
)

// End-to-end tests: the qmaster binary built by TestMain, run as real
// processes on loopback.

func TestE2EPutInspect(t *testing.T) {
	m := startMaster(t)
	mustQmaster(t, "", "put", "--server", m.addr, "jobs", "1", "2", "3")
	mustQmaster(t, "", "put", "--server", m.addr, "--delay", "1h", "jobs", "later")
	r := mustQmaster(t, "", "put", "--server", m.addr, "--ids", "emails", "hello")
	if r.stdout != "5\n" || !strings.Contains(r.stderr, "put 1 item into emails") {
		t.Errorf("put --ids: stdout %q, stderr %q; want the id 5 and a summary", r.stdout, r.stderr)
	}

	r = mustQmaster(t, "", "inspect", "--server", m.addr, "--json")
	var stats []wire.QueueStats
	if err := json.Unmarshal([]byte(r.stdout), &stats); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, r.stdout)
	}
	ready := map[string]int{}
	for _, s := range stats {
		ready[s.Queue] = s.Ready
	}
	if len(stats) != 2 || ready["jobs"] != 3 || ready["emails"] != 1 {
		t.Errorf("inspect --json: ready %v, want jobs:3 emails:1", ready)
	}

	r = mustQmaster(t, "", "inspect", "--server", m.addr)
	checkGolden(t, "inspect.golden", normaliseAges(r.stdout))
}

func TestE2EInspectEmpty(t *testing.T) {
	m := startMaster(t)
	r := mustQmaster(t, "", "inspect", "--server", m.addr)
	if !strings.HasPrefix(r.stdout, "QUEUE ") || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("stdout %q, want the header alone", r.stdout)
	}
	if r.stderr != "(no queues)\n" {
		t.Errorf("stderr %q, want (no queues)", r.stderr)
	}
}

// ages matches the ages of an inspect table (OLDEST, NEXT DUE).
var ages = regexp.MustCompile(`\b(\d+s|\d+m\d\ds|\d+h\d\dm|\d+d\d+h)\b`)

func normaliseAges(s string) string { return ages.ReplaceAllString(s, "AGE") }

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestE2EPutStdinGet(t *testing.T) {
	m := startMaster(t)
	r := mustQmaster(t, "42\nhello\n\n  \n{\"a\":1}\n", "put", "--server", m.addr, "mixed")
	if r.stdout != "" || !strings.Contains(r.stderr, "put 3 items into mixed") {
		t.Errorf("put: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	r = mustQmaster(t, "", "get", "--server", m.addr, "mixed", "-n", "3")
	if want := "42\n\"hello\"\n{\"a\":1}\n"; r.stdout != want {
		t.Errorf("get -n 3 printed %q, want %q", r.stdout, want)
	}
}

func TestE2EGetEmpty(t *testing.T) {
	m := startMaster(t)
	r := qmaster(t, "", nil, "get", "--server", m.addr, "empty", "--timeout", "200ms")
	if r.code != 1 {
		t.Errorf("exit %d, want 1", r.code)
	}
	if want := "qmaster get: no item in empty within 200ms\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	if r.elapsed > 2*time.Second {
		t.Errorf("took %s, want about 200ms", r.elapsed)
	}

	// A paused queue hands nothing out, though it holds tasks: say so.
	mustQmaster(t, "", "put", "--server", m.addr, "held", "1")
	mustQmaster(t, "", "pause", "--server", m.addr, "held")
	r = qmaster(t, "", nil, "get", "--server", m.addr, "held", "--timeout", "200ms")
	if want := "qmaster get: no item in held within 200ms (the queue is paused, with 1 ready; qmaster resume held)\n"; r.code != 1 || r.stderr != want {
		t.Errorf("get from a paused queue: exit %d, stderr %q; want 1, %q", r.code, r.stderr, want)
	}
}

func TestE2EWrongAuthkey(t *testing.T) {
	m := startMaster(t)
	r := qmaster(t, "", env("QM_AUTHKEY=not-the-key"), "inspect", "--server", m.addr)
	if r.code != 1 {
		t.Errorf("exit %d, want 1", r.code)
	}
	if !strings.HasPrefix(r.stderr, "qmaster: authentication failed: ") || strings.Count(r.stderr, "authentication failed") != 1 {
		t.Errorf("stderr %q, want qmaster: authentication failed: ..., said once", r.stderr)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !regexp.MustCompile(`authentication failed.*remote=127\.0\.0\.1:\d+`).MatchString(m.stderr.String()) {
			return fmt.Errorf("no log line naming the remote address in:\n%s", m.stderr)
		}
		return nil
	})
	for _, out := range []string{r.stdout, r.stderr, m.stderr.String()} {
		if strings.Contains(out, "not-the-key") || strings.Contains(out, testKey) {
			t.Errorf("output shows a key:\n%s", out)
		}
	}
}

func TestE2ENoAuthkey(t *testing.T) {
	r := qmaster(t, "", env(), "--addr", "127.0.0.1:0")
	if r.code == 0 {
		t.Fatalf("master started without a key; stderr:\n%s", r.stderr)
	}
	for _, want := range []string{"no authkey", "--authkey-file", "QM_AUTHKEY", "--authkey KEY", "--insecure-no-auth"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr %q does not mention %s", r.stderr, want)
		}
	}
}

func TestE2EUsageError(t *testing.T) {
	for _, args := range [][]string{{"--bogus"}, {"put"}, {"get", "q", "-n", "x"}, {"nosuchcommand"}} {
		r := qmaster(t, "", nil, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "--help") {
			t.Errorf("qmaster %v: exit %d, stderr %q; want 2 and a usage hint", args, r.code, r.stderr)
		}
	}
}

func TestE2ESigtermWithClient(t *testing.T) {
	m := startMaster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: m.addr, Authkey: []byte(testKey), Role: "worker", Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A get blocked in the master is answered at shutdown ("master
	// shutting down", or the connection's end).
	got := make(chan error, 1)
	go func() {
		_, err := c.Get(ctx, "idle", wire.GetOptions{Timeout: time.Minute})
		got <- err
	}()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st, err := c.Stats(ctx, "idle")
		if err != nil || len(st) != 1 || st[0].Consumers != 1 {
			return fmt.Errorf("no get waiting: %v %v", st, err)
		}
		return nil
	})

	start := time.Now()
	if !m.stop(5 * time.Second) {
		t.Fatalf("master still running 5s after SIGTERM; stderr:\n%s", m.stderr)
	}
	if m.err != nil {
		t.Errorf("master exited with %v, want 0; stderr:\n%s", m.err, m.stderr)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	if err := <-got; err != nil && !errors.Is(err, wire.ErrClosed) && !errors.Is(err, wire.ErrShuttingDown) {
		t.Errorf("blocked get: %v", err)
	}
	if !strings.Contains(m.stderr.String(), "msg=stopped") {
		t.Errorf("no stopped line in:\n%s", m.stderr)
	}
}

// runWorker serves queue in the test process until the test ends: it
// takes tasks in batches and completes each with f's value or error,
// in reverse order so that results arrive out of input order.
func runWorker(t *testing.T, addr, queue string, f func(n int64) (any, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(testKey), Role: "worker", Name: t.Name()})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		c.Close()
	})
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			tasks, err := c.Get(ctx, queue, wire.GetOptions{Max: 50, Timeout: 200 * time.Millisecond})
			if err != nil {
				if ctx.Err() == nil {
					t.Errorf("worker get: %v", err)
				}
				return
			}
			done := make([]wire.Completion, 0, len(tasks))
			for i := len(tasks) - 1; i >= 0; i-- {
				task := tasks[i]
				comp := wire.Completion{ID: task.ID}
				v, err := task.Value()
				n, ok := v.(int64)
				if err != nil || !ok {
					comp.Error = fmt.Sprintf("want an integer, got %v (%v)", v, err)
				} else if out, err := f(n); err != nil {
					comp.Error = err.Error()
				} else if comp.Value, err = wire.Encode(out); err != nil {
					comp.Error = err.Error()
				}
				done = append(done, comp)
			}
			if len(done) > 0 {
				if err := c.Complete(ctx, queue, "", done); err != nil && ctx.Err() == nil {
					t.Errorf("worker complete: %v", err)
					return
				}
			}
		}
	}()
}

func seq(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintln(&b, i)
	}
	return b.String()
}

func TestE2EMapInOrder(t *testing.T) {
	m := startMaster(t)
	for range 3 { // several workers, so results interleave
		runWorker(t, m.addr, "squares", func(n int64) (any, error) { return n * n, nil })
	}
	r := mustQmaster(t, seq(200), "map", "--server", m.addr, "--tasks", "squares", "--batch", "37", "--timeout", "30s")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 200 {
		t.Fatalf("map printed %d lines, want 200:\n%s", len(lines), r.stdout)
	}
	for i, l := range lines {
		if want := strconv.Itoa((i + 1) * (i + 1)); l != want {
			t.Fatalf("line %d: %q, want %q", i+1, l, want)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr %q, want nothing", r.stderr)
	}
	// The private result queue is gone.
	r = mustQmaster(t, "", "queues", "--server", m.addr)
	if r.stdout != "squares\n" {
		t.Errorf("queues after map: %q, want squares alone", r.stdout)
	}
}

// TestE2EMapBatchOverMaxQueueLen: a batch larger than the queue's max
// length is put in parts instead of refused for ever.
func TestE2EMapBatchOverMaxQueueLen(t *testing.T) {
	m := startMaster(t, "--max-queue-len", "20")
	runWorker(t, m.addr, "tasks", func(n int64) (any, error) { return n * 2, nil })
	r := mustQmaster(t, seq(300), "map", "--server", m.addr, "--batch", "1000", "--timeout", "30s")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 300 || lines[299] != "600" {
		t.Fatalf("map printed %d lines ending %q, want 300 ending 600", len(lines), lines[len(lines)-1])
	}
}

func TestE2EMapFailure(t *testing.T) {
	m := startMaster(t, "--max-attempts", "2")
	runWorker(t, m.addr, "tasks", func(n int64) (any, error) {
		if n == 5 {
			return nil, errors.New("five is right out")
		}
		return n * 10, nil
	})
	r := qmaster(t, "1\n\n5\n7\n", nil, "map", "--server", m.addr, "--timeout", "30s")
	if r.code != 1 {
		t.Errorf("exit %d, want 1; stderr:\n%s", r.code, r.stderr)
	}
	if want := "10\nnull\n70\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	re := regexp.MustCompile(`(?m)^qmaster map: task \d+ \(input line 3: 5\) failed after 2 attempts: five is right out$`)
	if !re.MatchString(r.stderr) {
		t.Errorf("stderr does not name the failed task:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "qmaster map: 1 of 3 tasks failed") {
		t.Errorf("stderr has no summary:\n%s", r.stderr)
	}
}

func TestE2EMapTimeout(t *testing.T) {
	m := startMaster(t)
	r := qmaster(t, "1\n2\n", nil, "map", "--server", m.addr, "--timeout", "300ms")
	if r.code != 1 || !strings.Contains(r.stderr, "qmaster map: timed out after 300ms with 0 of 2 results") {
		t.Errorf("exit %d, stderr %q; want a timeout", r.code, r.stderr)
	}
	if r.elapsed > 5*time.Second {
		t.Errorf("took %s", r.elapsed)
	}
}

// TestE2EMapQworker runs map against the real worker binary.
func TestE2EMapQworker(t *testing.T) {
	if qworkerErr != nil {
		t.Skipf("cmd/qworker does not build yet, so map is tested with an in-test worker only: %v", qworkerErr)
	}
	m := startMaster(t)
	w := exec.Command(qworkerBin, "--server", m.addr, "--builtin", "square", "--concurrency", "4")
	w.Env = env("QM_AUTHKEY=" + testKey)
	var wout syncBuffer
	w.Stdout, w.Stderr = &wout, &wout
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- w.Wait() }()
	t.Cleanup(func() {
		_ = w.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = w.Process.Kill()
			<-exited
		}
	})

	r := qmaster(t, seq(50), nil, "map", "--server", m.addr, "--timeout", "30s")
	if r.code != 0 {
		t.Fatalf("map: exit %d; stderr:\n%s\nqworker:\n%s", r.code, r.stderr, wout.String())
	}
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if len(lines) != 50 {
		t.Fatalf("map printed %d lines, want 50:\n%s", len(lines), r.stdout)
	}
	for i, l := range lines {
		if want := strconv.Itoa((i + 1) * (i + 1)); l != want {
			t.Fatalf("line %d: %q, want %q", i+1, l, want)
		}
	}
}

// A --data-dir that does not exist is made, and the master says so: a
// mistyped path on a restart starts a master without its tasks.
func TestE2EDataDirMadeSaysSo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet")
	m := startMaster(t, "--data-dir", dir)
	if !strings.Contains(m.stderr.String(), "the data directory does not exist; it is made, empty") {
		t.Errorf("no word of the made data directory:\n%s", m.stderr)
	}
	m.stop(10 * time.Second)
	again := startMaster(t, "--data-dir", dir)
	if strings.Contains(again.stderr.String(), "does not exist") {
		t.Errorf("the existing data directory said to be made:\n%s", again.stderr)
	}
}

// A map whose output's reader goes away (| head) or whose terminal goes
// (SIGHUP) ends as an interrupted one does, its result queue deleted and
// its tasks cancelled, rather than die with them left; | head exits as a
// shell reports SIGPIPE (141), Ctrl-C as it reports SIGINT (130), so that
// a script's loop stops.
func TestE2EMapEndsCleanlyOnSignals(t *testing.T) {
	m := startMaster(t)
	runWorker(t, m.addr, "tasks", func(n int64) (any, error) {
		time.Sleep(time.Millisecond)
		return n, nil
	})
	input := strings.Repeat("1\n", 2000)
	// Under nohup (a CI's runner may be), the map inherits SIGHUP ignored,
	// and a hang-up is then no end: it finishes.
	hupCode := 1
	if signal.Ignored(syscall.SIGHUP) {
		hupCode = 0
	}
	for _, tc := range []struct {
		name string
		end  func(cmd *exec.Cmd, stdout io.ReadCloser)
		code int
	}{
		{"its reader goes", func(_ *exec.Cmd, stdout io.ReadCloser) { stdout.Close() }, 141},
		{"SIGHUP", func(cmd *exec.Cmd, _ io.ReadCloser) { _ = cmd.Process.Signal(syscall.SIGHUP) }, hupCode},
		{"SIGINT", func(cmd *exec.Cmd, _ io.ReadCloser) { _ = cmd.Process.Signal(os.Interrupt) }, 130},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, stdout, stderr := startReadingFirstLine(t, input, "1\n", "map", "--server", m.addr, "--batch", "10")
			tc.end(cmd, stdout)
			err := cmd.Wait()
			var ee *exec.ExitError
			if code := cmd.ProcessState.ExitCode(); code != tc.code || code != 0 && !errors.As(err, &ee) {
				t.Fatalf("map: %v, want exit %d; stderr:\n%s", err, tc.code, stderr.String())
			}
			if tc.code == 141 && stderr.String() != "" {
				t.Errorf("map said something though its reader went: %q", stderr.String())
			}
			c := qmtestDial(t, m.addr)
			qs, err := c.Queues(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range qs {
				if strings.HasPrefix(q, "map-") {
					t.Fatalf("queues %v: the map's result queue was left", qs)
				}
			}
		})
	}
}

// A get whose reader goes away (| head) gives back the items it could
// not write, rather than lose them, and exits 141.
func TestE2EGetGivesBackWhatItCouldNotWrite(t *testing.T) {
	m := startMaster(t)
	c := qmtestDial(t, m.addr)
	items := make([]any, 5000)
	for i := range items {
		items[i] = fmt.Sprintf("%d-%s", i, strings.Repeat("z", 100)) // far more than a pipe holds
	}
	ctx := context.Background()
	if _, err := c.Put(ctx, "hq", items, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	cmd, stdout, stderr := startReadingFirstLine(t, "", `"0-`, "get", "hq", "-n", "5000", "--server", m.addr)
	stdout.Close()
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 141 || stderr.String() != "" {
		t.Fatalf("get: %v, stderr %q; want exit 141, silently", err, stderr.String())
	}
	st, err := c.Stats(ctx, "hq")
	if err != nil || st[0].Ready != 5000 || st[0].Leased != 0 {
		t.Fatalf("hq: %+v, %v; want all 5000 back, ready", st, err)
	}
}

// startReadingFirstLine starts qmaster with args and stdin, reads the first
// line of its stdout, which must start with first, and returns the
// running command, its stdout's reading end and its stderr.
func startReadingFirstLine(t *testing.T, stdin, first string, args ...string) (*exec.Cmd, io.ReadCloser, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(qmasterBin, args...)
	cmd.Env = env("QM_AUTHKEY=" + testKey)
	cmd.Stdin = strings.NewReader(stdin)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || !strings.HasPrefix(line, first) {
		t.Fatalf("first line %q, %v; want it to start with %q; stderr:\n%s", line, err, first, stderr)
	}
	return cmd, stdout, stderr
}

// A map interrupted while it connects again to its master, down, exits
// at once rather than after its tries to connect again (a minute).
func TestE2EMapInterruptedWhileConnectingAgain(t *testing.T) {
	m := startMaster(t, "--data-dir", t.TempDir())
	cmd := exec.Command(qmasterBin, "map", "--server", m.addr)
	cmd.Env = env("QM_AUTHKEY=" + testKey)
	cmd.Stdin = strings.NewReader("1\n2\n")
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	c := qmtestDial(t, m.addr)
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if st, err := c.Stats(context.Background(), "tasks"); err != nil || len(st) != 1 || st[0].Ready != 2 {
			return fmt.Errorf("tasks: %+v, %v; want map's 2", st, err)
		}
		return nil
	})
	m.kill()
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(stderr.String(), "connecting again") {
			return fmt.Errorf("map does not connect again yet: %q", stderr.String())
		}
		return nil
	})
	start := time.Now()
	_ = cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Fatalf("map: %v, want exit 130; stderr:\n%s", err, stderr)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("map took %s to exit after its interrupt", d)
	}
}
