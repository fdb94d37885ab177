package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/pflag"
)

func TestBuiltinSquareDrainsQueueAndIdleExits(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	const n = 20
	items := make([]any, n)
	for i := range items {
		items[i] = i
	}
	ids := put(t, c, "tasks", items)

	code, p := runQworker(t, env(keyEnv), "--server", addr, "--builtin", "square", "--idle-exit", "500ms", "--concurrency", "3", "--get-timeout", "200ms")
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	want := map[uint64]int64{}
	for i, id := range ids {
		want[id] = int64(i * i)
	}
	for _, r := range results(t, c, "results", n, 5*time.Second) {
		v, err := wire.DecodeValue(r.Value)
		if err != nil || v != want[r.TaskID] {
			t.Errorf("task %d: %v, %v; want %d", r.TaskID, v, err, want[r.TaskID])
		}
		delete(want, r.TaskID)
	}
	if len(want) != 0 {
		t.Errorf("no results for %v", want)
	}
	if !strings.Contains(p.stderr.String(), "idle; stopping") {
		t.Errorf("stderr does not log the idle exit:\n%s", p.stderr.String())
	}
}

func TestCommandMode(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "jobs", []any{1, 2, "oops"})
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, append(qmtest.Authkey, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	code, p := runQworker(t, env(), "--server", addr, "--authkey-file", keyFile, "--tasks", "jobs", "--results", "out",
		"--max-tasks", "3", "--task-timeout", "5s",
		"--", "sh", "-c", `read x; case $x in *[!0-9]*) echo "not a number: $x" >&2; exit 4;; esac; echo $((x+100))`)
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	got := map[uint64]wire.Result{}
	for _, r := range results(t, c, "out", 2, 5*time.Second) {
		got[r.TaskID] = r
	}
	for i, want := range []int64{101, 102} {
		if v, err := wire.DecodeValue(got[ids[i]].Value); err != nil || v != want {
			t.Errorf("task %d: %v, %v; want %d", ids[i], v, err, want)
		}
	}
	if !strings.Contains(p.stderr.String(), "exit status 4: not a number: oops") {
		t.Errorf("stderr does not log the failure:\n%s", p.stderr.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"builtin and command", env(keyEnv), []string{"--server", "h:1", "--builtin", "square", "--", "cat"}, "not both"},
		{"neither", env(keyEnv), []string{"--server", "h:1"}, "nothing to run: give --builtin NAME (echo, fail, sleep, square) or a command"},
		{"unknown builtin", env(keyEnv), []string{"--server", "h:1", "--builtin", "cube"}, `unknown builtin handler "cube" (have echo, fail, sleep, square)`},
		{"no server", env(keyEnv), []string{"--builtin", "echo"}, "--server is required"},
		{"server without port", env(keyEnv), []string{"--server", "master", "--builtin", "echo"}, `--server "master" is not host:port`},
		{"no key", env(), []string{"--server", "h:1", "--builtin", "echo"}, "no authkey"},
		{"key and insecure", env(), []string{"--server", "h:1", "--authkey", "k", "--insecure-no-auth", "--builtin", "echo"}, "--insecure-no-auth sends no key"},
		{"task timeout with builtin", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--task-timeout", "1s"}, "--task-timeout applies to a command"},
		{"stdio without command", env(keyEnv), []string{"--server", "h:1", "--stdio"}, "--stdio needs a command"},
		{"stdio with builtin", env(keyEnv), []string{"--server", "h:1", "--stdio", "--builtin", "echo"}, "--stdio needs a command"},
		{"zero concurrency", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--concurrency", "0"}, "--concurrency must be at least 1"},
		{"negative prefetch", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--prefetch", "-1"}, "--prefetch must not be negative"},
		{"bad duration", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--idle-exit", "soon"}, `invalid argument "soon" for "--idle-exit"`},
		{"bad log level", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--log-level", "loud"}, "want debug, info, warn or error"},
		{"bad log format", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--log-format", "xml"}, "want text or json"},
		{"command not found", env(keyEnv), []string{"--server", "h:1", "--", "/nonexistent/cmd", "x"}, `cannot run the command: exec: "/nonexistent/cmd": stat /nonexistent/cmd: no such file or directory`},
		{"command not on PATH", env(keyEnv), []string{"--server", "h:1", "--stdio", "--", "no-such-qm-command"}, `cannot run the command: exec: "no-such-qm-command": executable file not found in $PATH`},
		{"unknown flag", env(keyEnv), []string{"--server", "h:1", "--bultin", "echo"}, "unknown flag: --bultin"},
		{"no-retry exit with builtin", env(keyEnv), []string{"--server", "h:1", "--builtin", "echo", "--no-retry-exit", "65"}, "--no-retry-exit applies to a command run per task"},
		{"no-retry exit with stdio", env(keyEnv), []string{"--server", "h:1", "--stdio", "--no-retry-exit", "65", "--", "cat"}, "!fail TEXT instead"},
		{"no-retry exit out of range", env(keyEnv), []string{"--server", "h:1", "--no-retry-exit", "300", "--", "cat"}, "--no-retry-exit must be an exit status, 1 to 255"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, p := runQworker(t, tt.env, tt.args...)
			stderr := p.stderr.String()
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.HasPrefix(stderr, "qworker: ") || !strings.Contains(stderr, tt.want) || !strings.Contains(stderr, "Run 'qworker --help' for usage.") {
				t.Errorf("stderr:\n%s\nwant qworker: ...%s... and a pointer to --help", stderr, tt.want)
			}
			if p.stdout.Len() > 0 {
				t.Errorf("stdout: %q, want nothing", p.stdout.String())
			}
		})
	}
}

func TestWrongAuthkey(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	begin := time.Now()
	code, p := runQworker(t, env("QM_AUTHKEY=wrong"), "--server", addr, "--builtin", "echo")
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, p.stderr.String())
	}
	if !regexp.MustCompile(`(?m)^qworker: .*authentication failed: .*QM_AUTHKEY`).MatchString(p.stderr.String()) {
		t.Errorf("stderr:\n%s\nwant a qworker: ... authentication failed line with a hint", p.stderr.String())
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("took %s to give up", took)
	}
}

func TestHelpExplainsEveryFlag(t *testing.T) {
	code, p := runQworker(t, env(), "--help")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr.String())
	}
	help := p.stdout.String()
	newRootCmd(&factory{}, nil).Flags().VisitAll(func(f *pflag.Flag) {
		// "  --name type   at least three words of explanation"
		if !regexp.MustCompile(`(?m)^ +(-\w, )?--` + regexp.QuoteMeta(f.Name) + `( \S+)? {2,}\S+ \S+ \S+`).MatchString(help) {
			t.Errorf("--help does not explain --%s", f.Name)
		}
	})
	for _, want := range []string{"Examples:", "--builtin square", "-- python3", "square", "echo", "sleep", "fail", "QM_AUTHKEY", "QM_TASK_ID", "SIGTERM", "visible to other users in `ps`"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

// SIGTERM while a task runs: the task finishes, its result is published,
// and qworker exits 0. A hangup does the same.
func TestSIGTERMDrains(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) { testSignalDrains(t, sig) })
	}
}

func testSignalDrains(t *testing.T, sig syscall.Signal) {
	if sig == syscall.SIGHUP && signal.Ignored(syscall.SIGHUP) {
		// This test runs under nohup (as CI may), and qworker would
		// inherit the ignored hangup (TestNohupIgnoresHangup): caught
		// here while qworker starts, it starts with the default.
		caught := make(chan os.Signal, 1)
		signal.Notify(caught, syscall.SIGHUP)
		defer signal.Stop(caught)
	}
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{0.5, 0.5})
	p := start(t, env(keyEnv), "--server", addr, "--builtin", "sleep", "--log-level", "debug")
	qmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := c.Stats(ctx, "tasks")
		if err != nil {
			return err
		}
		if st[0].Leased != 1 {
			return fmt.Errorf("tasks: %+v, want one leased", st[0])
		}
		// Leased at the master is not yet running here: a get cut short
		// by the signal while its reply is on the way gives the task back.
		if !strings.Contains(p.stderr.String(), "task started") {
			return errors.New("the worker has not started the task yet")
		}
		return nil
	})
	begin := time.Now()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after %v, want 0; stderr:\n%s", code, sig, p.stderr.String())
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("took %s to drain a 0.5s task", took)
	}
	r := results(t, c, "results", 1, 5*time.Second)[0]
	if r.TaskID != ids[0] || r.Error != "" {
		t.Fatalf("result %+v, want task %d done", r, ids[0])
	}
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := c.Stats(ctx, "tasks")
		if err != nil {
			return err
		}
		if st[0].Ready != 1 || st[0].Leased != 0 || st[0].Done != 1 {
			return fmt.Errorf("tasks: %+v, want the second task back and ready", st[0])
		}
		return nil
	})
	if !strings.Contains(p.stderr.String(), "draining") {
		t.Errorf("stderr does not log the drain:\n%s", p.stderr.String())
	}
}

// A --stdio command that cannot run (it exits at once, as a script with a
// syntax error does) stops qworker after a few failures, saying why, and
// leaves its queue alone: it failed every task one attempt per restart
// until the queue was dead-lettered; then the attempts of three tasks
// (with --max-attempts 1, three tasks dead); now none, as its children
// read no task.
func TestBrokenStdioCommandStops(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})
	p := start(t, env(keyEnv), "--server", addr, "--stdio", "--concurrency", "2",
		"--", "sh", "-c", `echo "SyntaxError: invalid syntax" >&2; exit 1`)
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, p.stderr.String())
	}
	if s := p.stderr.String(); !strings.Contains(s, "the command failed 3 times before any child answered a task") || !strings.Contains(s, "SyntaxError: invalid syntax") {
		t.Errorf("stderr does not say why it stopped:\n%s", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qs, err := c.Stats(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range qs {
		if st.Queue == "tasks" && (st.Ready != 10 || st.Leased != 0 || st.Nacks != 0) || st.Queue != "tasks" && st.Ready != 0 {
			t.Errorf("queue %s: %+v; want every task ready, none failed", st.Queue, st)
		}
	}
}

// A --stdio command found broken during a drain that a signal began
// still makes qworker exit 1, saying why; it exited 0, the signal's cause
// read first.
func TestBrokenStdioCommandAfterASignal(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{1})
	flag := filepath.Join(t.TempDir(), "broken")
	// The children wait, reading nothing, until the flag is made; then
	// each exits at once, as a command that cannot start does.
	p := start(t, env(keyEnv), "--server", addr, "--stdio", "--log-level", "debug",
		"--", "sh", "-c", `while [ ! -e "$0" ]; do sleep 0.01; done; echo "SyntaxError: invalid syntax" >&2; exit 1`, flag)
	// Its handler runs (waiting for a child): the drain waits for it. (A
	// signal before that gives the task back, and no child fails.)
	p.waitStderr(t, "task started")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitStderr(t, "draining")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, p.stderr.String())
	}
	if s := p.stderr.String(); !strings.Contains(s, "the command failed 3 times before any child answered a task") {
		t.Errorf("stderr does not say why it stopped:\n%s", s)
	}
}

// Started to ignore hangups (nohup), qworker goes on through one.
func TestNohupIgnoresHangup(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	p := startCmd(t, exec.Command("nohup", qworkerBin, "--server", addr, "--builtin", "square"), env(keyEnv))
	p.waitStderr(t, "connected to master")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ids := put(t, c, "tasks", []any{7})
	if r := results(t, c, "results", 1, 10*time.Second)[0]; r.TaskID != ids[0] || r.Error != "" {
		t.Fatalf("result %+v after a hangup, want task %d done", r, ids[0])
	}
	if strings.Contains(p.stderr.String(), "draining") {
		t.Errorf("a worker started with nohup drained on a hangup:\n%s", p.stderr.String())
	}
}

// A second signal exits at once and kills the command still running,
// with all it started: its task runs again elsewhere, and must not go on
// here as well.
func TestSecondSignalKillsCommands(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	put(t, c, "tasks", []any{1})
	pgidFile := filepath.Join(t.TempDir(), "pgid")
	p := start(t, env(keyEnv), "--server", addr, "--", "sh", "-c", "echo $$ > "+pgidFile+"; sleep 60; cat")
	pgid := readPgid(t, pgidFile)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.waitStderr(t, "draining")
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code == 0 {
		t.Errorf("exit 0 after a second signal; stderr:\n%s", p.stderr.String())
	}
	waitGroupGone(t, pgid)
}

// TestDrainTimeoutGivesBackRunningTasks: with --drain-timeout, a drain
// that outlasts it kills the command still running, with all it started,
// gives its task back for other workers at once (not after its lease,
// and unattempted), and exits 0.
func TestDrainTimeoutGivesBackRunningTasks(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{1})
	pgidFile := filepath.Join(t.TempDir(), "pgid")
	p := start(t, env(keyEnv), "--server", addr, "--drain-timeout", "300ms", "--",
		"sh", "-c", "echo $$ > "+pgidFile+"; sleep 60; cat")
	pgid := readPgid(t, pgidFile)
	begin := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
	if took := time.Since(begin); took < 300*time.Millisecond {
		t.Errorf("exited %v after the signal, before --drain-timeout", took)
	}
	if !strings.Contains(p.stderr.String(), "drain timed out; running tasks cancelled and given back") {
		t.Errorf("stderr does not say the drain timed out:\n%s", p.stderr.String())
	}
	waitGroupGone(t, pgid)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ts, err := c.Get(ctx, "tasks", wire.GetOptions{})
	if err != nil || len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempt != 1 {
		t.Fatalf("get after the drain: %+v, %v; want the task back at once, at attempt 1", ts, err)
	}
}

// TestNoRetryExit: a command that exits with the status given to
// --no-retry-exit fails its task not to be retried: dead-lettered after
// that one attempt, with its error result; another failure is retried.
func TestNoRetryExit(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"bad", "flaky"})
	start(t, env(keyEnv), "--server", addr, "--no-retry-exit", "65", "--",
		"sh", "-c", `x=$(cat); [ "$x" = bad ] && { echo "cannot read $x" >&2; exit 65; }; [ "$QM_ATTEMPT" = 1 ] && exit 1; echo "$x"`)
	rs := results(t, c, "results", 2, 10*time.Second)
	byID := map[uint64]wire.Result{}
	for _, r := range rs {
		byID[r.TaskID] = r
	}
	if r := byID[ids[0]]; r.Attempt != 1 || !strings.HasSuffix(r.Error, "exit status 65: cannot read bad") {
		t.Errorf("bad task: %+v; want dead after 1 attempt of 3, with its error", r)
	}
	if r := byID[ids[1]]; r.Attempt != 2 || r.Error != "" {
		t.Errorf("flaky task: %+v; want it done at attempt 2", r)
	}
}

// readPgid waits for the command under test to write its process group
// ID (echo $$) to file, and returns it.
func readPgid(t *testing.T, file string) int {
	t.Helper()
	var pgid int
	qmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		b, err := os.ReadFile(file)
		if err == nil {
			pgid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	return pgid
}

// waitGroupGone waits until process group pgid is gone: killed, and its
// processes reaped.
func waitGroupGone(t *testing.T, pgid int) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("the command's process group %d: %v, want it gone", pgid, err)
		}
		return nil
	})
}

// The flags reach the worker's configuration.
func TestFlagsToConfig(t *testing.T) {
	var got *options
	f := &factory{Out: &bytes.Buffer{}, ErrOut: &bytes.Buffer{}, Getenv: func(string) string { return "" }}
	cmd := newRootCmd(f, func(o *options) error { got = o; return nil })
	cmd.SetArgs([]string{"--server", "m:5000", "--authkey", "k", "--tasks", "in", "--results", "out",
		"--concurrency", "4", "--prefetch", "7", "--get-timeout", "2s", "--idle-exit", "1m", "--drain-timeout", "20s", "--max-tasks", "9", "--lease", "30s",
		"--task-timeout", "10s", "--name", "w1", "--log-level", "debug", "--log-format", "json",
		"grep", "-c", "x"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	cfg := got.config([]byte("k"), nil)
	if cfg.Server != "m:5000" || cfg.Tasks != "in" || cfg.Results != "out" || cfg.Concurrency != 4 ||
		cfg.GetTimeout != 2*time.Second || cfg.IdleExit != time.Minute || cfg.MaxTasks != 9 ||
		cfg.Lease != 30*time.Second || cfg.Name != "w1" || cfg.MaxPrefetch != 7 || cfg.DrainTimeout != 20*time.Second {
		t.Errorf("config %+v", cfg)
	}
	if !slices.Equal(got.Command, []string{"grep", "-c", "x"}) || got.TaskTimeout != 10*time.Second {
		t.Errorf("command %q, timeout %s", got.Command, got.TaskTimeout)
	}
	if got.LogLevel.String() != "debug" || got.LogFormat.String() != "json" {
		t.Errorf("log %s %s", got.LogLevel.String(), got.LogFormat.String())
	}
	key, err := got.key()
	if err != nil || string(key) != "k" {
		t.Errorf("key %q, %v", key, err)
	}
}

// Under --insecure-no-auth, QM_AUTHKEY is ignored rather than sent to a
// master that expects no key.
func TestInsecureNoAuthIgnoresEnvKey(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{InsecureNoAuth: true})
	code, p := runQworker(t, env(keyEnv), "--server", addr, "--insecure-no-auth", "--builtin", "echo", "--idle-exit", "200ms")
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, p.stderr.String())
	}
}

func TestStdioMode(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{1, 2, 3, "oops"})
	p := start(t, env(keyEnv), "--server", addr, "--stdio", "--concurrency", "2", "--get-timeout", "200ms",
		"--", "sh", "-c", `echo "child $QM_CHILD up" >&2
while read -r x; do
	case $x in *[!0-9]*) echo "!error not a number: $x"; continue;; esac
	echo $((x*x))
done`)
	got := map[uint64]wire.Result{}
	for _, r := range results(t, c, "results", 4, 10*time.Second) {
		got[r.TaskID] = r
	}
	for i, want := range []int64{1, 4, 9} {
		if v, err := wire.DecodeValue(got[ids[i]].Value); err != nil || v != want {
			t.Errorf("task %d: %v, %v; want %d", ids[i], v, err, want)
		}
	}
	if r := got[ids[3]]; !strings.HasSuffix(r.Error, `: not a number: "oops"`) {
		t.Errorf("failing task: %+v", r)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0; stderr:\n%s", code, p.stderr.String())
	}
	for _, want := range []string{`run="stdio sh -c`, `line="child 1 up"`, `line="child 2 up"`} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("stderr lacks %s:\n%s", want, p.stderr.String())
		}
	}
}
