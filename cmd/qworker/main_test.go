package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/wire"
	"go.uber.org/goleak"
)

// qworkerBin is the binary TestMain builds.
var qworkerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qworker-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	qworkerBin = filepath.Join(dir, "qworker")
	buildArgs := []string{"build", "-o", qworkerBin}
	if raceEnabled { // check the process for races too
		buildArgs = append(buildArgs, "-race")
	}
	build := exec.Command("go", append(buildArgs, ".")...)
	var stderr bytes.Buffer
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build qworker: %v: %s\n", err, stderr.Bytes())
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// env is our environment without QM_AUTHKEY, plus extra.
func env(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QM_AUTHKEY=") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

var keyEnv = "QM_AUTHKEY=" + string(qmtest.Authkey)

// proc is a qworker process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr output
	done           chan struct{}
}

// output collects what a process writes; a test may read it while the
// process still runs.
type output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

func (o *output) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Len()
}

// start starts qworker with args and environment environ. Cleanup kills
// it if it still runs.
func start(t *testing.T, environ []string, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(qworkerBin, args...), environ)
}

// startCmd is start of cmd, a command that runs qworker.
func startCmd(t *testing.T, cmd *exec.Cmd, environ []string) *proc {
	t.Helper()
	p := &proc{cmd: cmd, done: make(chan struct{})}
	p.cmd.Env = environ
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait returns the exit code, failing the test if the process runs for
// more than d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("qworker still running after %s; stderr:\n%s", d, p.stderr.String())
		return -1
	}
}

// waitStderr waits until qworker's stderr holds text.
func (p *proc) waitStderr(t *testing.T, text string) {
	t.Helper()
	qmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if !strings.Contains(p.stderr.String(), text) {
			return fmt.Errorf("no %q in qworker's stderr yet", text)
		}
		return nil
	})
}

// runQworker runs qworker to its end and returns its exit code.
func runQworker(t *testing.T, environ []string, args ...string) (int, *proc) {
	t.Helper()
	p := start(t, environ, args...)
	return p.wait(t, 20*time.Second), p
}

func results(t *testing.T, c *wire.Client, queue string, n int, d time.Duration) []wire.Result {
	t.Helper()
	var out []wire.Result
	deadline := time.Now().Add(d)
	for len(out) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d results of %d within %s", len(out), n, d)
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

func put(t *testing.T, c *wire.Client, queue string, items []any) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ids, err := c.Put(ctx, queue, items, wire.PutOptions{})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return ids
}
