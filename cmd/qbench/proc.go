package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a process gets to exit after SIGTERM before its
// process group is killed.
const stopGrace = 3 * time.Second

// proc is one process the bench started, in a process group of its own so
// that stopping it also stops whatever it started, and nothing else.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stderr *tail
	done   chan struct{} // closed when the process has been reaped
	err    error         // its exit status, once done is closed
}

// procs owns every process the bench starts; stopAll stops them all.
type procs struct {
	mu   sync.Mutex
	list []*proc
}

// start runs argv with extra environment variables. Lines of its stdout go
// to onLine (if not nil) from a goroutine that ends when the process does;
// its stderr is kept, the last few KiB, for error messages.
func (ps *procs) start(name string, argv []string, env []string, onLine func(string)) (*proc, error) {
	p, _, err := ps.startCmd(name, argv, env, onLine, false)
	return p, err
}

// startWithInput is start that also returns a pipe to the process's stdin.
func (ps *procs) startWithInput(name string, argv []string, env []string, onLine func(string)) (*proc, io.WriteCloser, error) {
	return ps.startCmd(name, argv, env, onLine, true)
}

func (ps *procs) startCmd(name string, argv []string, env []string, onLine func(string), input bool) (*proc, io.WriteCloser, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = sysProcAttr()
	p := &proc{name: name, cmd: cmd, stderr: &tail{max: 8 << 10}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	var out io.ReadCloser
	if onLine != nil {
		var err error
		if out, err = cmd.StdoutPipe(); err != nil {
			return nil, nil, err
		}
	}
	var in io.WriteCloser
	if input {
		var err error
		if in, err = cmd.StdinPipe(); err != nil {
			return nil, nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	lines := make(chan struct{})
	if out != nil {
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				onLine(sc.Text())
			}
			_, _ = io.Copy(io.Discard, out)
		}()
	} else {
		close(lines)
	}
	go func() {
		<-lines // Wait closes the pipe: read it all first
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, in, nil
}

// pid is the process's ID.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, and SIGKILL after stopGrace.
// Signals go to the group of this process only (negative pid), which the
// bench created, so nothing it did not start is touched.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	pgid := -p.pid()
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(stopGrace):
	}
	_ = syscall.Kill(pgid, syscall.SIGKILL)
	<-p.done
}

// stopAll stops every process still running, the last started first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(list) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p *proc) { defer wg.Done(); p.stop() }(list[i])
	}
	wg.Wait()
}

// failure describes a process that ended early, with the end of its stderr.
func (p *proc) failure() error {
	return fmt.Errorf("%s exited: %v\n%s", p.name, p.err, strings.TrimSpace(p.stderr.String()))
}

// waitFor polls cond every few milliseconds until it holds, ctx ends or
// timeout passes, or one of ps exits.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool, ps ...*proc) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		for _, p := range ps {
			if p.exited() {
				return p.failure()
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// memStatus reads VmHWM (peak resident set) and VmRSS of pid, in bytes.
func memStatus(pid int) (hwm, rss int64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		f := strings.Fields(v) // "12345 kB"
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc/%d/status: odd %s line %q", pid, k, line)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmHWM" {
			hwm = n << 10
		} else {
			rss = n << 10
		}
	}
	if hwm == 0 {
		return 0, 0, errors.New("no VmHWM in /proc/" + strconv.Itoa(pid) + "/status")
	}
	return hwm, rss, nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

// both runs f and g concurrently and returns the first error; the ctx they
// get is cancelled as soon as either fails.
func both(ctx context.Context, f, g func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 2)
	for _, fn := range []func(context.Context) error{f, g} {
		go func() {
			err := fn(ctx)
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	err1, err2 := <-errs, <-errs
	if err1 != nil && !errors.Is(err1, context.Canceled) {
		return err1
	}
	if err2 != nil {
		return err2
	}
	return err1
}
