package e2e

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// masterKills is how many times TestSoakMasterKills kills the master in
// a soak of dur: one every 8 s or so, at least 2.
func masterKills(dur time.Duration) int {
	return max(2, int(dur/(8*time.Second)))
}

// TestSoakMasterKills is TestSoak with the master itself SIGKILLed and
// restarted on the same --data-dir and port a few times, at random
// moments, besides the workers. The qworkers reconnect by themselves; the
// test's producers and consumer redial, and a producer puts again what a
// put cut short by the kill was carrying: its reply was lost, so it may
// have landed (at-least-once). The consumer acks the results it took, so
// a result is not lost with a reply cut short either.
//
// At the end every value put has at least one result, holding its square
// and no error; the only extra results are those a kill explains (a
// result stored whose ack was not, or a put that landed whose reply was
// lost), and they are counted; nothing is left ready, leased or dead.
func TestSoakMasterKills(t *testing.T) {
	dur := soakDuration(t)
	dir := t.TempDir()
	margs := []string{"--data-dir", dir, "--max-attempts", "1000", "--http-addr", "127.0.0.1:0"}
	m, addr := startMaster(t, margs...)
	haddr := httpAddr(t, m)
	baseG, baseRSS := goroutines(t, haddr), rssBytes(t, m.cmd.Process.Pid)

	workerArgs := func(slot, gen int) []string { return soakWorkerArgs(addr, "soakm", slot, gen) }
	workers := make([]*proc, soakWorkers)
	for i := range workers {
		workers[i] = start(t, nil, nil, "qworker", workerArgs(i, 0)...)
	}

	ledger := newCrashLedger()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		bg     sync.WaitGroup
		bgErrs firstError
	)
	fail, failed := bgErrs.set, bgErrs.get

	for p := range soakProducers {
		bg.Go(func() {
			c, err := redial(nil, addr, "producer")
			if err != nil {
				fail(fmt.Errorf("producer %d: %w", p, err))
				return
			}
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			// Values are unique across producers, so that a result whose
			// task ID no put returned still tells which value it squared.
			for n := int64(p) * 1e7; ctx.Err() == nil; {
				if put, done := ledger.counts(); put-done >= soakProducers*soakOutstanding {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				ns := make([]int64, 1+rand.IntN(8))
				items := make([]any, len(ns))
				for i := range ns {
					n++
					ns[i], items[i] = n, n
				}
				// The put is repeated until one is acknowledged, even after
				// ctx ends: a value whose put may have landed gets a known
				// task too.
				for {
					pctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					ids, err := c.Put(pctx, "tasks", items, wire.PutOptions{ReplyTo: "results"})
					cancel()
					if err == nil {
						ledger.put(ids, ns)
						break
					}
					if re := (*wire.RemoteError)(nil); errors.As(err, &re) {
						fail(fmt.Errorf("producer %d: put refused by the master: %w", p, err))
						return
					}
					ledger.maybePut(ns)
					if c, err = redial(c, addr, "producer"); err != nil {
						fail(fmt.Errorf("producer %d: after a failed put: %w", p, err))
						return
					}
				}
				time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
			}
		})
	}
	consumerCtx, stopConsumer := context.WithCancel(context.Background())
	defer stopConsumer()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		c, err := redial(nil, addr, "producer")
		if err != nil {
			fail(fmt.Errorf("consumer: %w", err))
			return
		}
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for consumerCtx.Err() == nil {
			// Leased, not taken for good: a reply lost in a kill leaves
			// its results in the queue rather than nowhere.
			ts, err := c.Get(consumerCtx, "results", wire.GetOptions{Max: 256, Timeout: 200 * time.Millisecond, Lease: 10 * time.Second})
			if err == nil && len(ts) > 0 {
				ledger.record(ts)
				err = c.Ack(consumerCtx, "results", taskIDs(ts)...)
			}
			if err == nil || consumerCtx.Err() != nil {
				continue
			}
			if re := (*wire.RemoteError)(nil); errors.As(err, &re) && !errors.Is(err, wire.ErrNotLeased) {
				fail(fmt.Errorf("consumer: %w", err))
				return
			}
			if c, err = redial(c, addr, "producer"); err != nil {
				fail(fmt.Errorf("consumer: %w", err))
				return
			}
		}
	}()

	// The chaos runs on the test's goroutine: every 0.3 to 1.5 s a random
	// worker dies and a new one takes its place, or, at the moments drawn
	// here (one in each equal slice of the run), the master is SIGKILLed
	// and started again at once on the same data directory and port.
	nKills := masterKills(dur)
	begin := time.Now()
	killAt := make([]time.Time, nKills)
	for i := range killAt {
		slot := dur / time.Duration(nKills)
		killAt[i] = begin.Add(time.Duration(i)*slot + time.Duration((0.1+0.5*rand.Float64())*float64(slot)))
	}
	var (
		kills, terms   int
		leasedAtKill   int           // tasks leased when the master was killed, summed
		down           time.Duration // from each SIGKILL to the new master listening, summed
		maxDown        time.Duration
		masterKilled   int
		peakRSS, peakG = baseRSS, baseG
	)
	deadline := begin.Add(dur)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		if masterKilled < nKills && time.Now().After(killAt[masterKilled]) {
			leasedAtKill += leasedTasks(t, addr)
			killed := time.Now()
			kill(t, m)
			masterKilled++
			m = restartMaster(t, addr, margs...)
			d := time.Since(killed)
			down += d
			maxDown = max(maxDown, d)
			haddr = httpAddr(t, m)
		} else {
			if replaceWorker(t, workers, workerArgs, kills+terms+1) {
				terms++
			} else {
				kills++
			}
		}
		peakRSS = max(peakRSS, rssBytes(t, m.cmd.Process.Pid))
		peakG = max(peakG, goroutines(t, haddr))
		if err := failed(); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	bg.Wait()

	// Every task put gets a result from the workers still running.
	drainBy := time.Now().Add(60 * time.Second)
	for failed() == nil {
		missing, put := ledger.missing()
		if missing == 0 {
			break
		}
		if time.Now().After(drainBy) {
			t.Fatalf("%d of %d tasks still without a result 60s after the producers stopped", missing, put)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, w := range workers {
		// A worker started a moment ago may not handle signals yet (it
		// logs "starting" once it does): SIGTERM would kill it outright.
		waitFor(t, 20*time.Second, func() bool { return strings.Contains(w.logs(), "msg=starting") })
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if code := w.wait(t, 20*time.Second); code != 0 {
			t.Fatalf("worker exited %d after SIGTERM:\n%s", code, w.logs())
		}
	}
	time.Sleep(300 * time.Millisecond) // any late duplicate would be in by now
	stopConsumer()
	<-consumed
	if err := failed(); err != nil {
		t.Fatal(err)
	}
	admin := dial(t, addr, "admin")
	for {
		ts, err := admin.Get(context.Background(), "results", wire.GetOptions{Max: 512, Timeout: 200 * time.Millisecond, NoAck: true})
		if err != nil {
			t.Fatalf("get results: %v", err)
		}
		if len(ts) == 0 {
			break
		}
		ledger.record(ts)
	}
	sum := ledger.check(t, nKills*soakProducers*8)
	settled(t, admin)
	admin.Close()

	var endG int
	for settleBy := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if endG = goroutines(t, haddr); endG <= baseG+soakGoroutineSlack || time.Now().After(settleBy) {
			break
		}
	}
	endRSS := rssBytes(t, m.cmd.Process.Pid)
	t.Logf("soak with master kills %s: %d values put by %d producers through %d workers; master SIGKILLed %d times (%d tasks leased at the kills), "+
		"back listening after %s on average (at most %s); workers killed: %d SIGKILL, %d SIGTERM",
		dur, sum.values, soakProducers, soakWorkers, masterKilled, leasedAtKill, (down / time.Duration(max(masterKilled, 1))).Round(time.Millisecond),
		maxDown.Round(time.Millisecond), kills, terms)
	t.Logf("every value has a result, none an error: %d results in all, %d from a later attempt; "+
		"%d tasks with two or more results (none allowed), %d values put twice that both landed (put reply lost at a kill; %d values put again), "+
		"%d result deliveries repeated (consumer's ack lost at a kill; not counted as results)",
		sum.results, sum.retried, sum.dupTasks, sum.landedTwice, sum.maybe, sum.redelivered)
	t.Logf("master goroutines: first master's start %d, peak %d, last master's end %d (bound %d); RSS: start %s, peak %s, end %s (bound %s)",
		baseG, peakG, endG, baseG+soakGoroutineSlack, mib(baseRSS), mib(peakRSS), mib(endRSS), mib(baseRSS+soakRSSSlack))
	if endG > baseG+soakGoroutineSlack {
		t.Errorf("master has %d goroutines 15s after the soak, more than %d over its %d at the start", endG, soakGoroutineSlack, baseG)
	}
	if endRSS > baseRSS+soakRSSSlack {
		t.Errorf("master RSS %s after the soak, more than %s over its %s at the start", mib(endRSS), mib(soakRSSSlack), mib(baseRSS))
	}
	if masterKilled < nKills || sum.values == 0 {
		t.Fatalf("%d of %d master kills, %d values: the soak did not do its job", masterKilled, nKills, sum.values)
	}
}

// restartMaster starts qmaster again on addr, the address of the one
// killed, and waits until it listens.
func restartMaster(t *testing.T, addr string, args ...string) *proc {
	t.Helper()
	m := start(t, nil, nil, "qmaster", append([]string{"--addr", addr}, args...)...)
	waitFor(t, 20*time.Second, func() bool { return listenRE.MatchString(m.logs()) })
	return m
}

// leasedTasks is how many tasks of queue "tasks" are leased now.
func leasedTasks(t *testing.T, addr string) int {
	t.Helper()
	c := dial(t, addr, "admin")
	defer c.Close()
	st, err := c.Stats(context.Background(), "tasks")
	if err != nil || len(st) != 1 {
		t.Fatalf("stats tasks: %v, %v", st, err)
	}
	return st[0].Leased
}

// redial closes old, if any, and connects to addr again, trying for up
// to 30 s while the master restarts.
func redial(old *wire.Client, addr, role string) (*wire.Client, error) {
	if old != nil {
		old.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(authkey), Role: role})
		cancel()
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("redial %s: %w", addr, err)
		}
		time.Sleep(wait)
	}
}

func taskIDs(ts []wire.Task) []uint64 {
	ids := make([]uint64, len(ts))
	for i, task := range ts {
		ids[i] = task.ID
	}
	return ids
}

// crashLedger is resultLedger for a soak where the master dies: a put may
// land with its reply lost (its values are then put again), and results
// are taken under a lease, so one can be delivered twice.
type crashLedger struct {
	mu    sync.Mutex
	want  map[uint64]int64         // task ID -> the value put, for every acknowledged put
	maybe map[int64]bool           // values of puts whose reply was lost: they may have landed
	got   map[uint64][]wire.Result // results by task ID
	items map[resultItem]bool      // the result items recorded
	nDone int                      // task IDs with a result
	// redelivered counts result items delivered again: the consumer's
	// ack of them was lost in a kill.
	redelivered int
	problems    []string
}

func newCrashLedger() *crashLedger {
	return &crashLedger{want: make(map[uint64]int64), maybe: make(map[int64]bool),
		got: make(map[uint64][]wire.Result), items: make(map[resultItem]bool)}
}

func (l *crashLedger) put(ids []uint64, ns []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, id := range ids {
		l.want[id] = ns[i]
	}
}

func (l *crashLedger) maybePut(ns []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range ns {
		l.maybe[n] = true
	}
}

func (l *crashLedger) record(ts []wire.Task) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, task := range ts {
		key := itemKey(task)
		if l.items[key] {
			l.redelivered++
			continue
		}
		l.items[key] = true
		r, err := wire.DecodeResult(task.Payload)
		if err != nil {
			l.problems = append(l.problems, fmt.Sprintf("result item %d: %v", task.ID, err))
			continue
		}
		if len(l.got[r.TaskID]) == 0 {
			l.nDone++
		}
		l.got[r.TaskID] = append(l.got[r.TaskID], r)
	}
}

// resultItem identifies a result item delivered to the consumer: its ID
// in the result queue and its payload. The ID alone is not enough across
// a kill: an item delivered before it was durable is gone after the
// restart, and the restarted master may give its ID to another result.
type resultItem struct {
	id      uint64
	payload string
}

func itemKey(t wire.Task) resultItem { return resultItem{t.ID, string(t.Payload)} }

// counts returns how many tasks were put and how many have a result, for
// the producers' pacing.
func (l *crashLedger) counts() (put, done int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.want), l.nDone
}

// missing returns how many tasks of acknowledged puts have no result yet,
// of how many.
func (l *crashLedger) missing() (missing, put int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.want {
		if len(l.got[id]) == 0 {
			missing++
		}
	}
	return missing, len(l.want)
}

type crashSummary struct {
	values, results, retried int
	dupTasks                 int // task IDs with more than one result
	landedTwice              int // tasks of lost-reply puts that landed
	maybe                    int // values whose put was retried
	redelivered              int
}

// check fails t unless every task of an acknowledged put has one result,
// holding its value's square and no error, and every result of another
// task is that of a put whose reply was lost, with the square of one of
// its values, up to the bound a kill explains: maxLanded tasks of
// lost-reply puts that landed. A task's result and ack are stored
// together, so no kill gives a task two results.
func (l *crashLedger) check(t *testing.T, maxLanded int) crashSummary {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	bad := slices.Clone(l.problems)
	sum := crashSummary{maybe: len(l.maybe), redelivered: l.redelivered}
	values := make(map[int64]bool)
	for _, n := range l.want {
		values[n] = true
	}
	for id, n := range l.want {
		if len(l.got[id]) == 0 {
			bad = append(bad, fmt.Sprintf("task %d (value %d): no result", id, n))
		}
	}
	for id, rs := range l.got {
		n, known := l.want[id]
		if !known {
			n = isqrt(rs[0].Value)
			if !l.maybe[n] {
				bad = append(bad, fmt.Sprintf("result for task %d, which no producer put: %+v", id, rs))
				continue
			}
			sum.landedTwice++
		}
		sum.results += len(rs)
		if len(rs) > 1 {
			sum.dupTasks++
		}
		for _, r := range rs {
			if r.Attempt > 1 {
				sum.retried++
			}
			v, err := wire.DecodeValue(r.Value)
			if got, ok := v.(int64); r.Error != "" || err != nil || !ok || got != n*n {
				bad = append(bad, fmt.Sprintf("task %d (value %d): result %v (%v, error %q, attempt %d, %s), want %d",
					id, n, v, err, r.Error, r.Attempt, r.Worker, n*n))
			}
		}
	}
	sum.values = len(values)
	if sum.landedTwice > maxLanded {
		bad = append(bad, fmt.Sprintf("%d tasks of puts whose reply was lost landed: more than the %d the kills could explain", sum.landedTwice, maxLanded))
	}
	if sum.dupTasks > 0 {
		bad = append(bad, fmt.Sprintf("%d tasks with more than one result: a task's result and its ack are stored together, so a kill must not run a task again whose result is stored", sum.dupTasks))
	}
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("... and %d more", len(bad)-20))
		}
		t.Fatalf("%d problems over %d tasks:\n%s", len(bad), len(l.want), strings.Join(bad, "\n"))
	}
	return sum
}

// isqrt is the integer square root of a result's value, or -1 if it is
// not a square. The soak's values stay below 2^26, so their squares are
// exact as float64.
func isqrt(b []byte) int64 {
	v, err := wire.DecodeValue(b)
	sq, ok := v.(int64)
	if err != nil || !ok || sq < 0 {
		return -1
	}
	n := int64(math.Sqrt(float64(sq)))
	if n*n != sq {
		return -1
	}
	return n
}
