package worker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

func sh(script string, timeout time.Duration) worker.Handler {
	return worker.Command([]string{"sh", "-c", script}, timeout)
}

func TestCommand(t *testing.T) {
	for _, tt := range []struct {
		name    string
		script  string
		payload any
		want    any
	}{
		{"number", `read x; echo $((x*2))`, 21, int64(42)},
		{"string is raw text", `cat`, "hello world", "hello world"},
		{"string no newline added", `wc -c`, "abc", int64(3)},
		{"bytes", `cat`, []byte("raw"), "raw"},
		{"json", `cat`, map[string]any{"a": []any{1, "x"}}, map[string]any{"a": []any{int64(1), "x"}}},
		{"json line", `cat`, 1.5, 1.5},
		{"plain output", `echo not json`, nil, "not json"},
		{"only the last newline goes", `printf 'a\n\n'`, nil, "a\n"},
		{"spaces kept", `printf '  a b  \r\n'`, nil, "  a b  "},
		{"json with spaces", `echo '  [1] '`, nil, []any{int64(1)}},
		{"not UTF-8: bytes", `printf '\377\211PNG\n'`, nil, []byte("\xff\x89PNG")},
		{"env", `echo "$QM_TASK_ID/$QM_ATTEMPT/$QM_QUEUE"`, nil, "7/1/tasks"},
		{"a string's form", `echo "$QM_PAYLOAD"`, "123", "text"},
		{"bytes' form", `echo "$QM_PAYLOAD"`, []byte("123"), "bytes"},
		{"a number's form", `echo "$QM_PAYLOAD"`, 123, "json"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := sh(tt.script, 5*time.Second)(context.Background(), task(t, tt.payload))
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, %v; want %#v", got, err, tt.want)
			}
		})
	}
}

func TestCommandFailure(t *testing.T) {
	for _, tt := range []struct {
		name   string
		script string
		want   string
	}{
		{"exit status and stderr", `echo "  oops  " >&2; exit 3`, "exit status 3: oops"},
		{"no stderr", `exit 1`, "exit status 1"},
		{"killed", `kill -9 $$`, "signal: killed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sh(tt.script, 5*time.Second)(context.Background(), task(t, 1))
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}

	t.Run("stderr tail", func(t *testing.T) {
		script := `i=0; while [ $i -lt 300 ]; do echo "line $i of noise" >&2; i=$((i+1)); done; echo LAST >&2; exit 2`
		_, err := sh(script, 5*time.Second)(context.Background(), task(t, 1))
		if err == nil {
			t.Fatal("no error")
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "exit status 2: ...") || !strings.HasSuffix(msg, "line 299 of noise\nLAST") {
			t.Errorf("err = %.40q...%q, want exit status 2, a cut mark and the end of stderr", msg, msg[max(0, len(msg)-30):])
		}
		if n := len(msg); n > 2100 || n < 1900 {
			t.Errorf("error of %d bytes, want the last 2 KiB of stderr", n)
		}
	})

	t.Run("missing program", func(t *testing.T) {
		_, err := worker.Command([]string{"/nonexistent/program"}, 0)(context.Background(), task(t, 1))
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/program") {
			t.Errorf("err = %v, want one naming the program", err)
		}
	})
}

// A timeout kills the command and everything it started.
func TestCommandTimeoutKillsProcessGroup(t *testing.T) {
	for _, tt := range []struct {
		name   string
		ctx    func() (context.Context, context.CancelFunc)
		limit  time.Duration
		errMsg string
	}{
		{"timeout", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }, 200 * time.Millisecond, "timed out after 200ms"},
		{"cancel", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 200*time.Millisecond)
		}, 0, "context deadline exceeded"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pidFile := filepath.Join(t.TempDir(), "pid")
			ctx, cancel := tt.ctx()
			defer cancel()
			begin := time.Now()
			_, err := sh(`sleep 30 & echo $! > `+pidFile+`; wait`, tt.limit)(ctx, task(t, 1))
			if err == nil || !strings.Contains(err.Error(), tt.errMsg) {
				t.Fatalf("err = %v, want %q", err, tt.errMsg)
			}
			if took := time.Since(begin); took > 3*time.Second {
				t.Errorf("took %s to stop", took)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if alive(pid) {
					return fmt.Errorf("background child %d still alive", pid)
				}
				return nil
			})
		})
	}
}

// alive reports whether pid runs: it exists and is not a zombie (which an
// init that does not reap may leave behind).
func alive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ESRCH)
	}
	// The state follows the command name in parentheses.
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// TestCommandFailureLines: a command that exits non-zero with a failure
// line of the stdio protocol on stdout fails as the line says: "!retry
// SECONDS TEXT" comes back after SECONDS, "!fail TEXT" is dead-lettered at
// once; exiting 0, such a line is the result. The Python helper's Retry
// and Fail speak so in command mode.
func TestCommandFailureLines(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 3})
	c := qmtest.Dial(t, addr, "producer")
	ids := put(t, c, "tasks", []any{"busy", "bad", "fine"}, wire.PutOptions{})
	var mu sync.Mutex
	starts := map[uint64][]time.Time{}
	script := worker.Command([]string{"sh", "-c", `x=$(cat)
case "$x" in
busy) [ "$QM_ATTEMPT" = 1 ] && { echo "!retry 0.4 rate limited"; exit 1; }; echo done;;
bad) echo "cannot parse" >&2; echo "!fail bad input"; exit 1;;
*) echo "!retry 9 not a failure: exit 0"; exit 0;;
esac`}, 5*time.Second)
	h := func(ctx context.Context, tk worker.Task) (any, error) {
		mu.Lock()
		starts[tk.ID] = append(starts[tk.ID], time.Now())
		mu.Unlock()
		return script(ctx, tk)
	}
	startWorker(t, testConfig(t, addr, h))
	byID := map[uint64]wire.Result{}
	for _, r := range results(t, c, "results", 3, 10*time.Second) {
		byID[r.TaskID] = r
	}
	if r := byID[ids[0]]; r.Error != "" || value(t, r) != "done" || r.Attempt != 2 {
		t.Errorf("busy: %+v, want done at attempt 2", r)
	}
	if r := byID[ids[1]]; r.Attempt != 1 || !strings.Contains(r.Error, "bad input: cannot parse") {
		t.Errorf("bad: %+v, want it failed for good at attempt 1, with the line's text and stderr", r)
	}
	if r := byID[ids[2]]; r.Error != "" || value(t, r) != "!retry 9 not a failure: exit 0" {
		t.Errorf("fine: %+v, want the line as its result", r)
	}
	mu.Lock()
	defer mu.Unlock()
	if s := starts[ids[0]]; len(s) != 2 || s[1].Sub(s[0]) < 400*time.Millisecond {
		t.Errorf("busy's attempts at %v; want the second 400ms after the first", s)
	}
}
