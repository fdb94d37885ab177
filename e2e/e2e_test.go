// Package e2e runs the real qmaster and qworker binaries against each
// other on loopback, as a user would.
package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qm-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-race", "-o", dir+"/", "../cmd/qmaster", "../cmd/qworker")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const authkey = "e2e-secret"

// proc is a binary running for one test; Cleanup kills what is left.
type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
	err    error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

func (p *proc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("%s still running after %s; stderr:\n%s", p.cmd.Path, d, p.logs())
	}
	if p.err == nil {
		return 0
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("%s: %v", p.cmd.Path, p.err)
	return -1
}

func start(t *testing.T, stdin io.Reader, stdout io.Writer, name string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, name), args...), done: make(chan struct{})}
	dieWithTests(p.cmd)
	p.cmd.Env = append(os.Environ(), "QM_AUTHKEY="+authkey)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = stdin, stdout, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s %v stderr:\n%s", name, args, p.logs())
		}
	})
	return p
}

var listenRE = regexp.MustCompile(`msg=listening.* addr=(127\.0\.0\.1:\d+)`)

// startMaster runs qmaster on a free loopback port and returns its address.
func startMaster(t *testing.T, args ...string) (*proc, string) {
	t.Helper()
	return startMasterAt(t, "127.0.0.1:0", args...)
}

// startMasterAt runs qmaster on addr and returns the address it listens
// on, once it does.
func startMasterAt(t *testing.T, addr string, args ...string) (*proc, string) {
	t.Helper()
	m := start(t, nil, nil, "qmaster", append([]string{"--addr", addr}, args...)...)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if sub := listenRE.FindStringSubmatch(m.logs()); sub != nil {
			return m, sub[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("qmaster did not report its address:\n%s", m.logs())
	return nil, ""
}

// run runs a qmaster subcommand to its end and returns stdout, stderr and
// the exit code.
func run(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out bytes.Buffer
	p := start(t, strings.NewReader(stdin), &out, "qmaster", args...)
	code := p.wait(t, 60*time.Second)
	return out.String(), p.logs(), code
}

func seq(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintln(&b, i)
	}
	return b.String()
}

// TestClassicFlow: 1000 ints squared by three qworker processes through
// qmaster map; every result present once, in input order.
func TestClassicFlow(t *testing.T) {
	_, addr := startMaster(t)
	for i := range 3 {
		start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--concurrency", "4", "--name", fmt.Sprintf("w%d", i))
	}
	out, stderr, code := run(t, seq(1000), "map", "--server", addr)
	if code != 0 {
		t.Fatalf("map exited %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d result lines, want 1000", len(lines))
	}
	for i, line := range lines {
		if want := strconv.Itoa((i + 1) * (i + 1)); line != want {
			t.Fatalf("line %d = %q, want %s", i+1, line, want)
		}
	}
	stats, _, code := run(t, "", "inspect", "--server", addr, "--json")
	if code != 0 || !strings.Contains(stats, `"queue":"tasks"`) || !strings.Contains(stats, `"done":1000`) {
		t.Errorf("inspect after the run (exit %d): %s", code, stats)
	}
}

// A master with --data-dir restarted (SIGTERM, then started again on the
// same address) in the middle of a map: map, given that one address,
// connects again, since the master said its queues outlive it, and
// prints every result, in order. Before, it exited on "master shutting
// down": it reconnected only when given several addresses.
func TestMapGoesOnThroughARestartedMaster(t *testing.T) {
	addr := qmtest.FreeAddrs(t, 1)[0]
	args := []string{"--data-dir", t.TempDir()}
	m, _ := startMasterAt(t, addr, args...)
	for range 2 {
		start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--concurrency", "4")
	}
	const n = 2000
	feed := newSeqFeed(t)
	out := &syncBuffer{}
	mapper := start(t, feed.r, out, "qmaster", "map", "--server", addr, "--batch", "10")
	t.Cleanup(feed.close) // before the map's own: see newSeqFeed
	feed.write(1, n/2)
	waitFor(t, 60*time.Second, func() bool { return out.lines() >= n/4 })
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := m.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("master exited %d on SIGTERM: %s", code, m.logs())
	}
	startMasterAt(t, addr, args...)
	go func() { // not feed.write: a map that exited would block it
		for i := n/2 + 1; i <= n; i++ {
			if _, err := fmt.Fprintln(feed.w, i); err != nil {
				return
			}
		}
		feed.close()
	}()
	if code := mapper.wait(t, 120*time.Second); code != 0 {
		t.Fatalf("map exited %d: %s", code, mapper.logs())
	}
	wantSquares(t, out.String(), n)
	if !strings.Contains(mapper.logs(), "connecting again") {
		t.Errorf("map did not say it connected again: %s", mapper.logs())
	}
}

// A get waiting on a master with --data-dir that is restarted waits on
// through the restarted master, for the rest of its timeout, and takes
// the item put then. Before, the stopping master ended the wait with no
// item, and get said "no item ... within 30s" after a second or two.
func TestGetWaitsThroughARestartedMaster(t *testing.T) {
	addr := qmtest.FreeAddrs(t, 1)[0]
	args := []string{"--data-dir", t.TempDir()}
	m, _ := startMasterAt(t, addr, args...)
	var out syncBuffer
	getter := start(t, nil, &out, "qmaster", "get", "jobs", "--server", addr, "--timeout", "30s")
	waitFor(t, 10*time.Second, func() bool {
		return slices.ContainsFunc(clientsOf(t, addr, "", "admin"), func(name string) bool { return strings.HasPrefix(name, "qmaster get") })
	})
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := m.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("master exited %d on SIGTERM: %s", code, m.logs())
	}
	startMasterAt(t, addr, args...)
	if _, stderr, code := run(t, "", "put", "jobs", "--server", addr, `"after"`); code != 0 {
		t.Fatalf("put: %s", stderr)
	}
	if code := getter.wait(t, 40*time.Second); code != 0 || strings.TrimSpace(out.String()) != `"after"` {
		t.Fatalf("get exited %d, printed %q: %s", code, out.String(), getter.logs())
	}
}

// TestKilledWorkerTaskRedelivered: a worker SIGKILLed mid-task loses its
// task to another worker, which completes it.
func TestKilledWorkerTaskRedelivered(t *testing.T) {
	_, addr := startMaster(t)
	if _, stderr, code := run(t, "", "put", "tasks", "--server", addr, "--reply-to", "results", "60"); code != 0 {
		t.Fatalf("put: %s", stderr)
	}
	victim := start(t, nil, nil, "qworker", "--server", addr, "--builtin", "sleep", "--name", "victim")
	waitFor(t, 10*time.Second, func() bool {
		out, _, _ := run(t, "", "inspect", "--server", addr, "--json")
		return strings.Contains(out, `"leased":1`)
	})
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.wait(t, 5*time.Second)
	// The rescuer echoes at once rather than sleeping out the minute.
	start(t, nil, nil, "qworker", "--server", addr, "--builtin", "echo", "--name", "rescuer")
	out, stderr, code := run(t, "", "get", "results", "--server", addr, "--timeout", "20s")
	if code != 0 {
		t.Fatalf("get result: exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, `"worker":"rescuer"`) || !strings.Contains(out, `"attempt":2`) {
		t.Errorf("result %s: want it from the rescuer on attempt 2", out)
	}
}

// TestFailingTaskDeadLettered: a task that always fails ends in the
// dead-letter queue after --max-attempts, and map names it and exits 1.
func TestFailingTaskDeadLettered(t *testing.T) {
	_, addr := startMaster(t, "--max-attempts", "2")
	start(t, nil, nil, "qworker", "--server", addr, "--builtin", "fail")
	out, stderr, code := run(t, "7\n", "map", "--server", addr, "--timeout", "30s")
	if code == 0 {
		t.Fatalf("map exited 0 with a failed task: %s", out)
	}
	if !strings.Contains(stderr, "failed after 2 attempts") {
		t.Errorf("map stderr does not name the failure: %s", stderr)
	}
	stats, _, _ := run(t, "", "inspect", "--server", addr, "--json")
	if !strings.Contains(stats, `"queue":"tasks.dead"`) {
		t.Errorf("no tasks.dead queue: %s", stats)
	}
}

// TestMasterSIGTERMWithWorkers: the master exits 0 promptly with workers
// connected, and the workers are still alive, waiting to reconnect.
func TestMasterSIGTERMWithWorkers(t *testing.T) {
	m, addr := startMaster(t)
	w := start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square")
	waitFor(t, 10*time.Second, func() bool {
		out, _, _ := run(t, "", "clients", "--server", addr, "--json")
		return strings.Contains(out, `"role":"worker"`)
	})
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := m.wait(t, 15*time.Second); code != 0 {
		t.Errorf("master exited %d after SIGTERM", code)
	}
	select {
	case <-w.done:
		t.Errorf("the worker exited when the master stopped: %s", w.logs())
	case <-time.After(200 * time.Millisecond):
	}
	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := w.wait(t, 15*time.Second); code != 0 {
		t.Errorf("worker exited %d after SIGTERM", code)
	}
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
