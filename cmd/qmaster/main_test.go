package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"go.uber.org/goleak"
)

var update = flag.Bool("update", false, "update .golden files")

// Binaries built once by TestMain.
var (
	qmasterBin string
	qworkerBin string
	qworkerErr error // why cmd/qworker did not build
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qmaster-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qmasterBin = filepath.Join(dir, "qmaster")
	if err := goBuild(qmasterBin, "."); err != nil {
		fmt.Fprintf(os.Stderr, "build qmaster: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	qworkerBin = filepath.Join(dir, "qworker")
	qworkerErr = goBuild(qworkerBin, "../qworker")
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// goBuild builds pkg into out, with the race detector if this test binary
// has it, so that the processes are checked too.
func goBuild(out, pkg string) error {
	buildArgs := []string{"build", "-o", out}
	if raceEnabled {
		buildArgs = append(buildArgs, "-race")
	}
	cmd := exec.Command("go", append(buildArgs, pkg)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// testKey is the authkey of the masters the tests start.
const testKey = "qmaster-e2e-key"

// env returns the environment for a process: ours without QM_AUTHKEY, plus
// extra. A race-enabled binary otherwise sleeps 1s at exit.
func env(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QM_AUTHKEY=") && !strings.HasPrefix(kv, "GORACE=") {
			out = append(out, kv)
		}
	}
	out = append(out, "GORACE=atexit_sleep_ms=0 exitcode=66")
	return append(out, extra...)
}

// syncBuffer is a bytes.Buffer safe for the copying goroutine of os/exec
// and a polling test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// masterProc is a qmaster server process.
type masterProc struct {
	addr   string
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, once done is closed
	killed bool          // by kill, as a crash would
}

// kill ends the master with SIGKILL, as a crash would, and waits for it.
func (p *masterProc) kill() {
	p.killed = true
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

var listeningAddr = regexp.MustCompile(`msg=listening addr=(127\.0\.0\.1:\d+)`)

// startMaster runs `qmaster --addr 127.0.0.1:0 args...` with the test key
// and waits for its "listening" log line to learn the port. Cleanup stops
// it with SIGTERM and checks it exits 0.
func startMaster(t *testing.T, args ...string) *masterProc {
	t.Helper()
	return startMasterAt(t, "127.0.0.1:0", args...)
}

// startMasterAt is startMaster on addr: a master restarted where its
// clients knew it.
func startMasterAt(t *testing.T, addr string, args ...string) *masterProc {
	t.Helper()
	p := &masterProc{stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(qmasterBin, append([]string{"--addr", addr}, args...)...)
	p.cmd.Env = env("QM_AUTHKEY=" + testKey)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if p.stop(10*time.Second) && p.err != nil && !p.killed {
			t.Errorf("master exited with %v; stderr:\n%s", p.err, p.stderr)
		}
	})
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if m := listeningAddr.FindStringSubmatch(p.stderr.String()); m != nil {
			p.addr = m[1]
			return nil
		}
		select {
		case <-p.done:
			t.Fatalf("master exited early (%v); stderr:\n%s", p.err, p.stderr)
		default:
		}
		return fmt.Errorf("no listening line in the master's stderr:\n%s", p.stderr)
	})
	return p
}

// stop sends SIGTERM and waits up to timeout for the exit; it reports
// whether the process exited in time (else it is killed).
func (p *masterProc) stop(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return false
	}
}

// result is the outcome of a finished command.
type result struct {
	stdout, stderr string
	code           int
	elapsed        time.Duration
}

// qmaster runs the qmaster binary with args and the given stdin and
// environment (nil: the test key) and waits for it.
func qmaster(t *testing.T, stdin string, environ []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qmasterBin, args...)
	if environ == nil {
		environ = env("QM_AUTHKEY=" + testKey)
	}
	cmd.Env = environ
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("qmaster %s: %v", strings.Join(args, " "), err)
		}
		r.code = ee.ExitCode()
	}
	if strings.Contains(r.stderr, "WARNING: DATA RACE") {
		t.Errorf("qmaster %s: data race:\n%s", strings.Join(args, " "), r.stderr)
	}
	return r
}

// mustQmaster is qmaster that fails the test unless the command exits 0.
func mustQmaster(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	r := qmaster(t, stdin, nil, args...)
	if r.code != 0 {
		t.Fatalf("qmaster %s: exit %d; stderr:\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r
}
