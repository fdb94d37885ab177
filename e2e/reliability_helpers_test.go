package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// rssBytes is the resident set of process pid, from /proc/PID/status.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest) // "12345 kB"
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				t.Fatalf("VmRSS of %d: %q", pid, line)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

var httpListenRE = regexp.MustCompile(`msg="HTTP endpoints listening" http_addr=(127\.0\.0\.1:\d+)`)

// httpAddr waits for the master's HTTP endpoints' address in its log.
func httpAddr(t *testing.T, m *proc) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if sub := httpListenRE.FindStringSubmatch(m.logs()); sub != nil {
			return sub[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("qmaster did not report its HTTP address:\n%s", m.logs())
	return ""
}

// goroutines reads go_goroutines from the master's /metrics.
func goroutines(t *testing.T, httpAddr string) int {
	t.Helper()
	return int(metric(t, httpAddr, "go_goroutines"))
}

// metric reads one unlabelled sample from the master's /metrics. Each
// scrape uses a new connection that is closed after it, so scrapes leave
// no goroutine behind in the master.
func metric(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+httpAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+authkey)
	req.Close = true
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("scrape /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape /metrics: %s: %s", resp.Status, b)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("%s %q: %v", name, rest, err)
			}
			return v
		}
	}
	t.Fatalf("no %s in /metrics (err %v)", name, sc.Err())
	return 0
}

// resultLedger records results by task ID, and the expected value of
// every task put.
type resultLedger struct {
	mu       sync.Mutex
	want     map[uint64]int64 // task ID -> the square its result must hold
	got      map[uint64][]wire.Result
	retried  int // results of a later attempt than the first
	nDone    int // task IDs with at least one result
	problems []string
}

func newResultLedger() *resultLedger {
	return &resultLedger{want: make(map[uint64]int64), got: make(map[uint64][]wire.Result)}
}

func (l *resultLedger) put(ids []uint64, ns []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, id := range ids {
		l.want[id] = ns[i] * ns[i]
	}
}

// record decodes results taken from a result queue.
func (l *resultLedger) record(ts []wire.Task) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, task := range ts {
		r, err := wire.DecodeResult(task.Payload)
		if err != nil {
			l.problems = append(l.problems, fmt.Sprintf("result item %d: %v", task.ID, err))
			continue
		}
		if len(l.got[r.TaskID]) == 0 {
			l.nDone++
		}
		l.got[r.TaskID] = append(l.got[r.TaskID], r)
		if r.Attempt > 1 {
			l.retried++
		}
	}
}

// counts returns how many tasks were put and how many have a result.
func (l *resultLedger) counts() (put, done int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.want), l.nDone
}

// check fails t unless every task put has exactly one result, holding
// its square and no error, and no result names a task never put.
func (l *resultLedger) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var bad []string
	bad = append(bad, l.problems...)
	for id, want := range l.want {
		rs := l.got[id]
		switch {
		case len(rs) == 0:
			bad = append(bad, fmt.Sprintf("task %d: no result", id))
		case len(rs) > 1:
			bad = append(bad, fmt.Sprintf("task %d: %d results: %+v", id, len(rs), rs))
		case rs[0].Error != "":
			bad = append(bad, fmt.Sprintf("task %d: error result %q (attempt %d, %s)", id, rs[0].Error, rs[0].Attempt, rs[0].Worker))
		default:
			v, err := wire.DecodeValue(rs[0].Value)
			if n, ok := v.(int64); err != nil || !ok || n != want {
				bad = append(bad, fmt.Sprintf("task %d: result %v (%v), want %d", id, v, err, want))
			}
		}
	}
	for id := range l.got {
		if _, ok := l.want[id]; !ok {
			bad = append(bad, fmt.Sprintf("result for task %d, which no producer put", id))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
		}
		t.Fatalf("%d of %d tasks wrong:\n%s", len(bad), len(l.want), strings.Join(bad, "\n"))
	}
}

// drainResults takes every result from queue for good until it has been
// empty for quiet, and records them.
func drainResults(t *testing.T, c *wire.Client, queue string, l *resultLedger, quiet time.Duration) {
	t.Helper()
	for {
		ts, err := c.Get(context.Background(), queue, wire.GetOptions{Max: 512, Timeout: quiet, NoAck: true})
		if err != nil {
			t.Fatalf("get %s: %v", queue, err)
		}
		if len(ts) == 0 {
			return
		}
		l.record(ts)
	}
}

// settled fails t unless no queue holds a ready or leased task, or a
// dead one, except the result queues named in keep.
func settled(t *testing.T, c *wire.Client, keep ...string) []wire.QueueStats {
	t.Helper()
	stats, err := c.Stats(context.Background(), "")
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	for _, s := range stats {
		if s.Leased != 0 || s.Dead != 0 || (s.Ready != 0 && !slices.Contains(keep, s.Queue)) {
			t.Errorf("queue %s: %d ready, %d leased, %d dead; want nothing left", s.Queue, s.Ready, s.Leased, s.Dead)
		}
	}
	return stats
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// soakWorkerArgs are the flags of a soak's qworker number slot, in its
// gen-th life: the square built-in, four at a time, short leases.
func soakWorkerArgs(addr, prefix string, slot, gen int) []string {
	return []string{"--server", addr, "--builtin", "square", "--concurrency", "4", "--lease", "2s",
		"--get-timeout", "1s", "--name", fmt.Sprintf("%s-w%d-%d", prefix, slot, gen)}
}

// firstError keeps the first error that a test's goroutines report.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// replaceWorker ends a random one of workers, by SIGTERM one time in four
// (a drain: it finishes what it holds and must exit 0) and by SIGKILL
// otherwise, and starts its successor, in its gen-th life, in its place.
// It reports whether that was a drain.
func replaceWorker(t *testing.T, workers []*proc, args func(slot, gen int) []string, gen int) (drained bool) {
	t.Helper()
	slot := rand.IntN(len(workers))
	w := workers[slot]
	drained = rand.IntN(4) == 0
	if drained {
		// One started a moment ago may not handle signals yet (it logs
		// "starting" once it does): SIGTERM would kill it outright.
		waitFor(t, 20*time.Second, func() bool { return strings.Contains(w.logs(), "msg=starting") })
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := w.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("worker exited %d after SIGTERM:\n%s", code, w.logs())
		}
	} else {
		kill(t, w)
	}
	workers[slot] = start(t, nil, nil, "qworker", args(slot, gen)...)
	return drained
}
