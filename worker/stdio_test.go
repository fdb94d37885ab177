package worker_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// startStdio starts children running the shell script (sh, unless
// cfg.Command names another shell), stopped at cleanup.
func startStdio(t *testing.T, script string, cfg worker.StdioConfig) *worker.Stdio {
	t.Helper()
	shell := "sh"
	if len(cfg.Command) > 0 {
		shell = cfg.Command[0]
	}
	cfg.Command = []string{shell, "-c", script}
	if cfg.RestartMin == 0 {
		cfg.RestartMin = 10 * time.Millisecond
		cfg.RestartMax = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := worker.NewStdio(cfg)
	if err != nil {
		t.Fatalf("NewStdio: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// echoChild answers each task with its own line.
const echoChild = `while IFS= read -r x; do printf '%s\n' "$x"; done`

func TestStdioRoundTrip(t *testing.T) {
	s := startStdio(t, echoChild, worker.StdioConfig{})
	for _, tt := range []struct {
		name    string
		payload any
		want    any
	}{
		{"number", 42, int64(42)},
		{"string is JSON", "hello \"world\"\n", "hello \"world\"\n"},
		{"map", map[string]any{"a": []any{1, "x"}}, map[string]any{"a": []any{int64(1), "x"}}},
		{"null", nil, nil},
		{"bytes as text", []byte("raw"), "raw"},
		{"line separator", "a\u2028b", "a\u2028b"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Handle(context.Background(), task(t, tt.payload))
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, %v; want %#v", got, err, tt.want)
			}
		})
	}
}

func TestStdioErrorLine(t *testing.T) {
	s := startStdio(t, `while read -r x; do
	case $x in
	*[!0-9]*) echo "!error cannot parse $x" ;;
	*) echo $((x*2)) ;;
	esac
done`, worker.StdioConfig{})
	for range 2 { // the child goes on after an error
		if _, err := s.Handle(context.Background(), task(t, "x")); err == nil || err.Error() != `cannot parse "x"` {
			t.Fatalf("error %v, want cannot parse \"x\"", err)
		}
		if v, err := s.Handle(context.Background(), task(t, 21)); err != nil || v != int64(42) {
			t.Fatalf("got %v, %v; want 42", v, err)
		}
	}
}

// With Envelope, a child gets each task as an object carrying its ID,
// attempt, queue and last error around its payload, and
// QM_STDIO_ENVELOPE=1; here it answers the line it read.
func TestStdioEnvelope(t *testing.T) {
	s := startStdio(t, `[ "$QM_STDIO_ENVELOPE" = 1 ] || { echo '!fail no QM_STDIO_ENVELOPE'; exit 0; }
while IFS= read -r x; do printf '%s\n' "$x"; done`, worker.StdioConfig{Envelope: true})
	tk := task(t, map[string]any{"n": 3})
	tk.Attempt, tk.LastError = 2, "boom\nline 2 \u2028"
	v, err := s.Handle(context.Background(), tk)
	want := map[string]any{"id": int64(7), "attempt": int64(2), "queue": "tasks", "last_error": "boom\nline 2 \u2028", "payload": map[string]any{"n": int64(3)}}
	if err != nil || !reflect.DeepEqual(v, want) {
		t.Fatalf("the child read %#v, %v; want %#v", v, err, want)
	}
	tk = task(t, "plain")
	if v, err := s.Handle(context.Background(), tk); err != nil || !reflect.DeepEqual(v, map[string]any{"id": int64(7), "attempt": int64(1), "queue": "tasks", "payload": "plain"}) {
		t.Fatalf("the child read %#v, %v; want no last_error", v, err)
	}
}

// TestStdioRetryLine: "!retry SECONDS TEXT" fails the attempt with TEXT
// and holds the task back SECONDS before its next delivery.
func TestStdioRetryLine(t *testing.T) {
	s := startStdio(t, `while read -r x; do
	if [ "$x" = '"busy"' ]; then echo "!retry 0.4 rate limited"; else echo "$x"; fi
done`, worker.StdioConfig{})
	if _, err := s.Handle(context.Background(), task(t, "busy")); err == nil || err.Error() != "rate limited" {
		t.Fatalf("error %v, want rate limited", err)
	}
	if v, err := s.Handle(context.Background(), task(t, 5)); err != nil || v != int64(5) {
		t.Fatalf("after a retry line: %v, %v; want 5", v, err)
	}
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{7}, wire.PutOptions{})
	var mu sync.Mutex
	var starts []time.Time
	h := func(ctx context.Context, tk worker.Task) (any, error) {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		if tk.Attempt == 1 {
			return s.Handle(ctx, task(t, "busy"))
		}
		return tk.LastError, nil
	}
	startWorker(t, testConfig(t, addr, h))
	r := results(t, c, "results", 1, 10*time.Second)[0]
	if r.Error != "" || value(t, r) != "rate limited" {
		t.Fatalf("result %+v, want the retry's text as the second attempt's LastError", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(starts) != 2 || starts[1].Sub(starts[0]) < 400*time.Millisecond {
		t.Fatalf("attempts at %v; want the second 400ms after the first", starts)
	}
}

// A child's "!retry 0" retries at once, not after the queue's backoff.
func TestStdioRetryAtOnce(t *testing.T) {
	s := startStdio(t, `while read -r x; do echo "!retry 0 again"; done`, worker.StdioConfig{})
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3, RetryBackoffMin: time.Hour, RetryBackoffMax: time.Hour})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{7}, wire.PutOptions{})
	startWorker(t, testConfig(t, addr, func(ctx context.Context, tk worker.Task) (any, error) {
		if tk.Attempt == 1 {
			return s.Handle(ctx, tk)
		}
		return "done", nil
	}))
	if r := results(t, c, "results", 1, 10*time.Second)[0]; r.Error != "" || r.Attempt != 2 {
		t.Fatalf("result %+v, want done at attempt 2, at once", r)
	}
}

// TestStdioFailLine: "!fail TEXT" fails the attempt with TEXT, not to be
// retried: the task is dead-lettered after it, attempts left or not.
func TestStdioFailLine(t *testing.T) {
	s := startStdio(t, `while read -r x; do
	if [ "$x" = '"bad"' ]; then echo "!fail cannot parse"; else echo "$x"; fi
done`, worker.StdioConfig{})
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 5})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{"bad", 7}, wire.PutOptions{ReplyTo: "results"})
	startWorker(t, testConfig(t, addr, s.Handle))
	rs := results(t, c, "results", 2, 10*time.Second)
	slices.SortFunc(rs, func(a, b wire.Result) int { return cmp.Compare(a.TaskID, b.TaskID) })
	if !strings.HasSuffix(rs[0].Error, ": cannot parse") || rs[0].Attempt != 1 {
		t.Fatalf("result %+v, want the error cannot parse after 1 attempt of 5", rs[0])
	}
	if rs[1].Error != "" || value(t, rs[1]) != int64(7) {
		t.Fatalf("result %+v, want 7: the child goes on after a fail line", rs[1])
	}
	if st := stats(t, c, "tasks"); st.Dead != 1 || st.Nacks != 1 {
		t.Errorf("tasks queue: %+v, want 1 dead after 1 nack", st)
	}
}

func TestStdioLongLine(t *testing.T) {
	s := startStdio(t, `while read -r x; do
	if [ "$x" = '"long"' ]; then printf '"%0100000d"\n' 0; else echo "$x"; fi
done`, worker.StdioConfig{MaxLine: 1000})
	if _, err := s.Handle(context.Background(), task(t, "long")); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("error %v, want result line too long", err)
	}
	// The rest of the line was skipped: the child still answers in step.
	if v, err := s.Handle(context.Background(), task(t, 7)); err != nil || v != int64(7) {
		t.Fatalf("got %v, %v; want 7", v, err)
	}
}

func TestStdioStderrIsLogged(t *testing.T) {
	logs := &syncBuffer{}
	s := startStdio(t, `echo "hello from child $QM_CHILD" >&2; `+echoChild, worker.StdioConfig{
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if _, err := s.Handle(context.Background(), task(t, 1)); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if !strings.Contains(logs.String(), `line="hello from child 1"`) {
			return fmt.Errorf("logs %q lack the child's stderr", logs.String())
		}
		return nil
	})
}

func TestStdioCloseKillsChildThatStays(t *testing.T) {
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:     []string{"sh", "-c", `trap '' TERM; while :; do sleep 1; done`},
		StopTimeout: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Close(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("close: %v, want killed", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("close took %s", took)
	}
}

func TestStdioStartFails(t *testing.T) {
	_, err := worker.NewStdio(worker.StdioConfig{Command: []string{"/nonexistent/qm-child"}})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/qm-child") {
		t.Fatalf("NewStdio: %v, want an error naming the program", err)
	}
}

// stdioRun runs a worker with children of script against a master of
// MaxAttempts 2, and returns its results of the tasks items, by ID.
func stdioRun(t *testing.T, mcfg master.Config, script string, scfg worker.StdioConfig, items []any) ([]uint64, map[uint64]wire.Result, *wire.Client) {
	t.Helper()
	mcfg.MaxAttempts = 2
	addr, _ := qmtest.StartMaster(t, mcfg)
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", items, wire.PutOptions{ReplyTo: "replies"})
	scfg.Children = cmp.Or(scfg.Children, 2)
	s := startStdio(t, script, scfg)
	cfg := testConfig(t, addr, s.Handle)
	cfg.Concurrency, cfg.Capacity = s.Slots(), s.Capacity
	startWorker(t, cfg)
	got := map[uint64]wire.Result{}
	for _, r := range results(t, c, "replies", len(items), 20*time.Second) {
		got[r.TaskID] = r
	}
	return ids, got, c
}

func TestStdioThroughRun(t *testing.T) {
	for _, tt := range []struct{ name, script string }{
		{"lockstep", `while read -r x; do echo $((x*x)); done`},
		{"pipelined", `echo '!pipeline'; while read -r x; do echo $((x*x)); done`},
	} {
		t.Run(tt.name, func(t *testing.T) { squaresThroughRun(t, tt.script) })
	}
}

func squaresThroughRun(t *testing.T, script string) {
	items := ints(0, 200)
	ids, got, c := stdioRun(t, master.Config{}, script, worker.StdioConfig{}, items)
	for i, id := range ids {
		if r := got[id]; r.Error != "" || value(t, r) != int64(i*i) {
			t.Fatalf("task %d: %+v, want %d", i, r, i*i)
		}
	}
	if st := stats(t, c, "tasks"); st.Done != 200 || st.Nacks != 0 {
		t.Errorf("tasks queue: %+v, want 200 done", st)
	}
}

// Slow tasks are not hoarded by a Stdio worker: of two workers with two
// children each, neither holds more tasks than its children run, whether
// they take one task at a time or ask for tasks ahead, and each child
// runs its share. (Before, a worker took a pipeline's worth for each
// child, and one child's owner kept them waiting for that child alone.)
func TestStdioHoardsNoSlowTasks(t *testing.T) {
	for _, tt := range []struct{ name, script string }{
		{"lockstep", `while read -r x; do sleep 0.1; echo "\"$QM_CHILD\""; done`},
		{"pipelined", `echo '!pipeline'; while read -r x; do sleep 0.1; echo "\"$QM_CHILD\""; done`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := qmtest.StartMaster(t, master.Config{})
			c := qmtest.Dial(t, addr, "producer")
			const n = 24
			put(t, c, "tasks", ints(0, n), wire.PutOptions{ReplyTo: "replies"})
			for i := range 2 {
				s := startStdio(t, tt.script, worker.StdioConfig{Children: 2})
				cfg := testConfig(t, addr, s.Handle)
				cfg.Name = fmt.Sprintf("w%d", i)
				cfg.Logger = nil
				cfg.Concurrency, cfg.Capacity = s.Slots(), s.Capacity
				startWorker(t, cfg)
			}
			most := mostHeldUntilDone(t, addr, n, 15*time.Second)
			perChild := map[string]int{}
			for _, r := range results(t, c, "replies", n, 5*time.Second) {
				perChild[r.Worker+"/"+fmt.Sprint(value(t, r))]++
			}
			if most > 4 {
				t.Errorf("a worker with two children held %d slow tasks at once: want at most 4 (two each, as a child that asks for tasks ahead first takes)", most)
			}
			if len(perChild) != 4 {
				t.Errorf("tasks per worker and child: %v; want all four children to run some", perChild)
			}
			for k, v := range perChild {
				if v < n/8 {
					t.Errorf("tasks per worker and child: %v; %s ran only %d of %d", perChild, k, v, n)
				}
			}
		})
	}
}

// Each bad input fails the attempts of the task it hits, with a clear
// error, and loses no other task.
func TestStdioBadInput(t *testing.T) {
	// The children answer 1, 2 and 3 in kind and misbehave on "bad".
	child := func(onBad string) string {
		return `while IFS= read -r x; do
	if [ "$x" = '"bad"' ]; then ` + onBad + `; else printf '%s\n' "$x"; fi
done`
	}
	for _, tt := range []struct {
		name   string
		mcfg   master.Config
		script string
		scfg   worker.StdioConfig
		bad    any
		want   string
		once   bool // not retried: it would fail alike
	}{
		{name: "garbage", script: child("echo garbage"), bad: "bad",
			want: `broke the stdio protocol: output line is not JSON: "garbage" (a stdio child writes only its answers to stdout; banners and logs go to stderr); restarted`},
		{name: "two lines for one task", script: child(`printf '1\n2\n'`), bad: "bad",
			want: `broke the stdio protocol: more than one line for one task; restarted`},
		{name: "empty line", script: child("echo"), bad: "bad", want: `output line is not JSON: ""`},
		{name: "exits", script: child(`echo "cannot go on" >&2; exit 3`), bad: "bad",
			want: "exited (exit status 3): cannot go on"},
		{name: "hangs", script: child("sleep 60"), bad: "bad", scfg: worker.StdioConfig{TaskTimeout: 300 * time.Millisecond},
			want: "timed out after 300ms; restarted"},
		{name: "result larger than the master takes", mcfg: master.Config{MaxMessageSize: 64 << 10},
			script: child(`printf '"%0100000d"\n' 0`), bad: "bad", want: "is over the largest the master takes", once: true},
		{name: "payload the child cannot parse", script: child(`echo "!error cannot parse $x"`), bad: "bad",
			want: `cannot parse "bad"`},
		{name: "payload that is not JSON", script: echoChild, bad: math.NaN(),
			want: "payload cannot be sent as JSON", once: true},
	} {
		for _, pipelined := range []bool{false, true} {
			script, name := tt.script, tt.name
			if pipelined {
				if strings.HasPrefix(name, "two lines") {
					continue // a pipelined child promises one line per task
				}
				script, name = `echo '!pipeline'; `+script, name+" pipelined"
			}
			t.Run(name, func(t *testing.T) {
				items := []any{1, tt.bad, 2, 3}
				ids, got, c := stdioRun(t, tt.mcfg, script, tt.scfg, items)
				for i, want := range map[int]int64{0: 1, 2: 2, 3: 3} {
					if r := got[ids[i]]; r.Error != "" || value(t, r) != want {
						t.Errorf("task %d: %+v, want %d", i, r, want)
					}
				}
				attempts := 2
				if tt.once {
					attempts = 1
				}
				if r := got[ids[1]]; !strings.Contains(r.Error, tt.want) || r.Attempt != attempts {
					t.Errorf("bad task: %+v, want error with %q after %d attempts", r, tt.want, attempts)
				}
				if st := stats(t, c, "tasks"); st.Dead != 1 || st.Done != 3 {
					t.Errorf("tasks queue: %+v, want 3 done and 1 dead", st)
				}
			})
		}
	}
}

// A child that exits at start-up fails the attempts of the tasks it is
// given, with its stderr, and is restarted with backoff.
func TestStdioChildExitsAtStart(t *testing.T) {
	items := []any{1, 2}
	ids, got, _ := stdioRun(t, master.Config{}, `echo "ImportError: no module named foo" >&2; exit 1`, worker.StdioConfig{}, items)
	for _, id := range ids {
		if r := got[id]; !strings.Contains(r.Error, "exited (exit status 1): ImportError: no module named foo") {
			t.Errorf("task %d: %+v, want the child's exit and stderr", id, r)
		}
	}
}

func TestStdioDrain(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", ints(1, 3), wire.PutOptions{})
	s := startStdio(t, `while read -r x; do sleep 0.2; echo "$x"; done`, worker.StdioConfig{})
	r := startWorker(t, testConfig(t, addr, s.Handle))
	results(t, c, "results", 1, 10*time.Second)
	r.cancel()
	if err := r.wait(t, 10*time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The master releases what the worker held when the connection ends.
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st := stats(t, c, "tasks")
		if st.Leased != 0 || int(st.Done)+st.Ready != 3 || st.Nacks != 0 {
			return fmt.Errorf("tasks queue after the drain: %+v, want every task done or ready", st)
		}
		return nil
	})
}

// Children that fail BrokenAfter times before any answer call Broken
// once, naming the last failure; children that have answered a task do
// not, however often they fail after.
func TestStdioBroken(t *testing.T) {
	calls, answered, last := brokenCalls(t, `echo "cannot import numpy" >&2; exit 1`, 0, worker.BrokenAfter+2)
	if answered != 0 {
		t.Fatalf("%d tasks answered by a child that exits", answered)
	}
	if calls != 1 || !strings.Contains(fmt.Sprint(last), "cannot import numpy") {
		t.Fatalf("Broken called %d times, last with %v; want once, naming the child's stderr", calls, last)
	}
	if calls, _, _ := brokenCalls(t, `read -r x && echo $x; exit 1`, 0, worker.BrokenAfter+2); calls != 0 { // answers one task, then exits
		t.Fatalf("Broken called %d times for children that answer", calls)
	}
	// Slow is not broken: timeouts before any answer do not count.
	if calls, _, _ := brokenCalls(t, `read -r x; sleep 60`, 50*time.Millisecond, worker.BrokenAfter+1); calls != 0 {
		t.Fatalf("Broken called %d times for children that time out", calls)
	}
}

// TestStdioUnreadTaskFailsNoAttempt: while no child has answered, a child
// that exits without reading its task (a command that cannot start) does
// not fail the task: it waits for the child restarted, and Broken is
// called first. A child that read its task and exited fails it at once.
func TestStdioUnreadTaskFailsNoAttempt(t *testing.T) {
	if first, err := brokenFirst(t, []string{"sh", "-c", `echo "ModuleNotFoundError: No module named 'nosuchmod'" >&2; exit 1`}, nil); !first {
		t.Fatalf("a child that never read its task: the task failed (%v) before Broken was called", err)
	}
	if first, err := brokenFirst(t, []string{"sh", "-c", `read -r x; exit 1`}, nil); first || err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("a child that read its task and died: Broken first %v, Handle %v; want the task failed with the child's exit", first, err)
	}
}

// TestStdioCommandGoneFailsNoAttempt: a command that can no longer be
// started (removed after the first start) fails no attempt either while
// no child has answered: Broken is called first.
func TestStdioCommandGoneFailsNoAttempt(t *testing.T) {
	script := filepath.Join(t.TempDir(), "task.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	remove := func() {
		if err := os.Remove(script); err != nil {
			t.Fatal(err)
		}
	}
	if first, err := brokenFirst(t, []string{script}, remove); !first {
		t.Fatalf("the task failed (%v) before Broken was called", err)
	}
}

// brokenFirst hands one task to a Stdio running command (after prepare,
// if not nil, once its first child started) and reports whether
// StdioConfig.Broken was called before the task's Handle returned, with
// what Handle returned if it did.
func brokenFirst(t *testing.T, command []string, prepare func()) (first bool, handleErr error) {
	t.Helper()
	brokenAt := make(chan bool, 1)
	var returned atomic.Bool
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:    command,
		RestartMin: time.Millisecond,
		Broken: func(error) {
			select {
			case brokenAt <- !returned.Load():
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if prepare != nil {
		prepare()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	handled := make(chan error, 1)
	go func() {
		_, err := s.Handle(ctx, task(t, 1))
		returned.Store(true)
		handled <- err
	}()
	select {
	case first := <-brokenAt:
		return first, nil
	case err := <-handled:
		select {
		case first := <-brokenAt:
			return first, err
		default:
			return false, err
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Broken not called, and the task not failed")
	}
	return false, nil
}

// TestStdioErrorTellsEarlierStderrApart: a child that dies on a task has
// the end of its stderr in the task's error, with what it wrote before
// that task's turn told apart: an earlier task's traceback is not this
// one's.
func TestStdioErrorTellsEarlierStderrApart(t *testing.T) {
	logs := &syncBuffer{}
	s := startStdio(t, `while read -r x; do
	case "$x" in
	'"handled"') echo "Traceback: ValueError: a handled error" >&2; echo "!error handled";;
	'"quiet"') exit 3;;
	'"loud"') echo "MemoryError in this task" >&2; exit 4;;
	'"verbose"') i=0; while [ $i -lt 100 ]; do echo "a long traceback, line $i" >&2; i=$((i+1)); done; exit 5;;
	*) echo "$x";;
	esac
done`, worker.StdioConfig{RestartMin: time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	for i, tc := range []struct{ payload, want string }{
		{"quiet", "exited (exit status 3): Traceback: ValueError: a handled error\n--- (written before this task's turn; nothing since) ---"},
		{"loud", "exited (exit status 4): Traceback: ValueError: a handled error\n--- (the lines above were written before this task's turn) ---\nMemoryError in this task"},
		{"verbose", "a long traceback, line 99"}, // its own, over the 2 KiB kept: no line of before
	} {
		if _, err := s.Handle(context.Background(), task(t, "handled")); err == nil || err.Error() != "handled" {
			t.Fatalf("handled: %v", err)
		}
		// The next task's turn begins as it is written to the idle child:
		// once the line is logged, it was written before.
		qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			if n := strings.Count(logs.String(), "a handled error"); n != i+1 {
				return fmt.Errorf("%d stderr lines logged, want %d", n, i+1)
			}
			return nil
		})
		_, err := s.Handle(context.Background(), task(t, tc.payload))
		if err == nil || !strings.HasSuffix(err.Error(), tc.want) || tc.payload == "verbose" && strings.Contains(err.Error(), "---") {
			t.Errorf("%s: error %q, want it to end %q", tc.payload, err, tc.want)
		}
	}
}

// TestStdioBadTaskIsNotABrokenCommand: one task that kills its child on
// every attempt, before any other task was answered, counts once towards
// a broken command: it is a bad task, and the tasks behind it run.
func TestStdioBadTaskIsNotABrokenCommand(t *testing.T) {
	var calls atomic.Int32
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:    []string{"sh", "-c", `while read -r x; do [ "$x" = '"crash"' ] && exit 3; echo "$x"; done`},
		RestartMin: time.Millisecond,
		Broken:     func(error) { calls.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bad := task(t, "crash")
	for range worker.BrokenAfter + 1 { // its attempts
		if _, err := s.Handle(context.Background(), bad); err == nil {
			t.Fatal("the bad task was answered")
		}
	}
	good := task(t, 5)
	good.ID = 8
	if v, err := s.Handle(context.Background(), good); err != nil || v != int64(5) {
		t.Fatalf("the task behind: %v, %v", v, err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("Broken called %d times for one bad task", n)
	}
}

// Two bad tasks written ahead together to a child that fails holding both
// are still two bad tasks, not three failures of a broken command: the
// failure that ran them again one at a time counts as the first's.
func TestStdioBadTasksAheadAreNotABrokenCommand(t *testing.T) {
	var calls atomic.Int32
	s, err := worker.NewStdio(worker.StdioConfig{
		// The pause lets both bad tasks be written before it reads.
		Command:    []string{"sh", "-c", `echo '!pipeline'; sleep 0.3; while IFS= read -r x; do [ "$x" = '"crash"' ] && exit 3; printf '%s\n' "$x"; done`},
		RestartMin: time.Millisecond,
		Broken:     func(error) { calls.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, payload := range []any{"crash", "crash", 5} {
		tk := task(t, payload)
		tk.ID = uint64(i + 1)
		wg.Go(func() { _, errs[i] = s.Handle(context.Background(), tk) })
		time.Sleep(50 * time.Millisecond) // in this order
	}
	wg.Wait()
	if errs[0] == nil || errs[1] == nil || errs[2] != nil {
		t.Fatalf("errors %v; want the two bad tasks failed and the good one answered", errs)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("Broken called %d times for two bad tasks", n)
	}
}

// brokenCalls runs tasks tasks, one after another, through a child running
// script (with taskTimeout), and returns how often StdioConfig.Broken was
// called, how many tasks were answered, and what Broken was called with
// last.
func brokenCalls(t *testing.T, script string, taskTimeout time.Duration, tasks int) (calls, answered int, last error) {
	t.Helper()
	var mu sync.Mutex
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:     []string{"sh", "-c", script},
		TaskTimeout: taskTimeout,
		RestartMin:  time.Millisecond,
		Broken: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			calls, last = calls+1, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range tasks {
		tk := task(t, 1)
		tk.ID = uint64(i + 1) // each a task of its own: a task's failures count once
		if _, err := s.Handle(context.Background(), tk); err == nil {
			answered++
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return calls, answered, last
}

// TestStdioGivenUpTaskStopsItsChild: a task whose handler no one waits for
// any more (its lease lost, a drain timed out) does not run on in its
// child beside another worker's run of it: the child is stopped, and the
// next task runs on a new one at once.
func TestStdioGivenUpTaskStopsItsChild(t *testing.T) {
	on := filepath.Join(t.TempDir(), "on")
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:    []string{"sh", "-c", `while read -r x; do [ "$x" = '"block"' ] && { touch "$0"; sleep 60; }; echo "$x"; done`, on},
		RestartMin: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := s.Handle(ctx, task(t, "block"))
		done <- err
	}()
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		_, err := os.Stat(on) // the child is on it
		return err
	})
	cancel(worker.ErrDrainTimeout)
	if err := <-done; !errors.Is(err, worker.ErrDrainTimeout) {
		t.Fatalf("the given-up task: %v", err)
	}
	next := task(t, 5)
	next.ID = 8
	hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer hcancel()
	if v, err := s.Handle(hctx, next); err != nil || v != int64(5) {
		t.Fatalf("the next task: %v, %v; want it answered by a new child at once", v, err)
	}
}

// A child that asked for tasks ahead and writes its answers together, as
// the Python helper does, then exits or hangs on a bad task, had run the
// tasks before it, their answers lost in its buffer: the first of them
// was failed for it, dead-lettered at the last attempt, and the bad one
// ran again at no cost. The tasks it held run again one at a time, and
// only the bad one pays its attempts.
func TestStdioFailureHoldingTasksAheadBlamesTheBadTask(t *testing.T) {
	// Answers go out once no more input waits (read -t 0), as the helper
	// answers a whole read at once; "bad" loses those not yet written.
	child := func(onBad string) string {
		return `echo '!pipeline'; buf=''
while IFS= read -r x; do
	if [ "$x" = '"bad"' ]; then ` + onBad + `; fi
	buf+="$x"$'\n'
	if ! read -t 0; then printf '%s' "$buf"; buf=''; fi
done
printf '%s' "$buf"`
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("the child is a bash script:", err)
	}
	for _, tt := range []struct {
		name, onBad, want string
		scfg              worker.StdioConfig
		n, bad            int // tasks, of them bad
	}{
		{name: "exits", onBad: "exit 3", want: "exited (exit status 3)", n: 400, bad: 16},
		{name: "hangs", onBad: "sleep 60", want: "timed out after 300ms", scfg: worker.StdioConfig{TaskTimeout: 300 * time.Millisecond}, n: 150, bad: 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			items := ints(0, tt.n)
			bad := map[int]bool{}
			for i := tt.n / tt.bad / 2; i < tt.n; i += tt.n / tt.bad {
				items[i], bad[i] = "bad", true
			}
			tt.scfg.Command, tt.scfg.Children = []string{"bash"}, 1
			ids, got, c := stdioRun(t, master.Config{}, child(tt.onBad), tt.scfg, items)
			for i, id := range ids {
				r := got[id]
				switch {
				case bad[i] && (!strings.Contains(r.Error, tt.want) || r.Attempt != 2):
					t.Errorf("bad task %d: %+v, want %q after 2 attempts", i, r, tt.want)
				case !bad[i] && (r.Error != "" || value(t, r) != int64(i) || r.Attempt != 1):
					t.Errorf("task %d: %+v, want %d at its first attempt", i, r, i)
				}
			}
			// Only the bad tasks' attempts failed: an innocent task
			// blamed once would still be done, at its second attempt.
			if st := stats(t, c, "tasks"); int(st.Dead) != len(bad) || int(st.Done) != len(items)-len(bad) || int(st.Nacks) != 2*len(bad) {
				t.Errorf("tasks queue: %+v, want %d done, %d dead and %d nacks", st, len(items)-len(bad), len(bad), 2*len(bad))
			}
		})
	}
}
