package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// soakDuration is how long TestSoak puts tasks: QM_SOAK (a Go duration,
// at most 30m; make soak sets 2m), else 20s.
func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv("QM_SOAK")
	if s == "" {
		return 20 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > 30*time.Minute {
		t.Fatalf("QM_SOAK=%q: want a duration up to 30m", s)
	}
	return d
}

const (
	soakProducers   = 3
	soakWorkers     = 3
	soakOutstanding = 150 // tasks without a result, per producer, before the producers wait
	// Bounds on the master after the soak, over its figures at the start.
	soakGoroutineSlack = 10
	soakRSSSlack       = 96 << 20
)

// TestSoak runs a durable master, several producers putting tasks with a
// reply-to queue and several qworker processes, and kills (mostly with
// SIGKILL, sometimes SIGTERM) and restarts a random worker every second or
// so, for soakDuration. At the end every task put has exactly one result,
// the right one; no task is left ready, leased or dead; and the master's
// goroutines and RSS are back within a bound of where they started.
func TestSoak(t *testing.T) {
	dur := soakDuration(t)
	dir := t.TempDir()
	m, addr := startMaster(t, "--data-dir", dir, "--max-attempts", "1000", "--http-addr", "127.0.0.1:0")
	haddr := httpAddr(t, m)
	pid := m.cmd.Process.Pid
	baseG, baseRSS := goroutines(t, haddr), rssBytes(t, pid)

	workerArgs := func(slot, gen int) []string { return soakWorkerArgs(addr, "soak", slot, gen) }
	workers := make([]*proc, soakWorkers)
	for i := range workers {
		workers[i] = start(t, nil, nil, "qworker", workerArgs(i, 0)...)
	}

	ledger := newResultLedger()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		bg     sync.WaitGroup
		bgErrs firstError
	)
	fail, failed := bgErrs.set, bgErrs.get
	var producers []*wire.Client
	for p := range soakProducers {
		c := dial(t, addr, "producer")
		producers = append(producers, c)
		bg.Go(func() {
			for n := int64(p * 1e9); ctx.Err() == nil; {
				if put, done := ledger.counts(); put-done >= soakProducers*soakOutstanding {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				ns := make([]int64, 1+rand.IntN(8))
				items := make([]any, len(ns))
				for i := range ns {
					n++
					ns[i], items[i] = n%1e6, n%1e6
				}
				// Not under ctx: a put cancelled midway may still have
				// gone in, and its tasks would have no known ID.
				ids, err := c.Put(context.Background(), "tasks", items, wire.PutOptions{ReplyTo: "results"})
				if err != nil {
					fail(fmt.Errorf("producer %d: put: %w", p, err))
					return
				}
				ledger.put(ids, ns)
				time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
			}
		})
	}
	consumer := dial(t, addr, "producer")
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			// The consumer runs past the producers' end, until the test says.
			ts, err := consumer.Get(context.Background(), "results", wire.GetOptions{Max: 256, Timeout: 200 * time.Millisecond, NoAck: true})
			if err != nil {
				if !errors.Is(err, wire.ErrClosed) {
					fail(fmt.Errorf("consumer: get: %w", err))
				}
				return
			}
			ledger.record(ts)
		}
	}()

	// The chaos runs on the test's goroutine: a random worker dies every
	// 0.3 to 1.5 s and a new one takes its place at once.
	var kills, terms int
	peakRSS, peakG := baseRSS, baseG
	deadline := time.Now().Add(dur)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		if replaceWorker(t, workers, workerArgs, kills+terms+1) {
			terms++
		} else {
			kills++
		}
		peakRSS = max(peakRSS, rssBytes(t, pid))
		peakG = max(peakG, goroutines(t, haddr))
	}
	stop()
	bg.Wait()
	for _, c := range producers {
		c.Close()
	}

	// Every task put gets its result from the workers still running.
	put, done := ledger.counts()
	drainBy := time.Now().Add(60 * time.Second)
	for done < put && failed() == nil {
		if time.Now().After(drainBy) {
			t.Fatalf("%d of %d tasks still without a result 60s after the producers stopped", put-done, put)
		}
		time.Sleep(100 * time.Millisecond)
		_, done = ledger.counts()
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
	consumer.Close()
	<-consumed
	if err := failed(); err != nil {
		t.Fatal(err)
	}
	admin := dial(t, addr, "admin")
	drainResults(t, admin, "results", ledger, 200*time.Millisecond)
	ledger.check(t)
	stats := settled(t, admin)
	admin.Close()
	var expired uint64
	for _, s := range stats {
		if s.Queue == "tasks" {
			expired = s.Expired
		}
	}

	// With every client gone the master's goroutines fall back to where
	// they were; its RSS settles within a bound of it.
	var endG int
	for settleBy := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if endG = goroutines(t, haddr); endG <= baseG+soakGoroutineSlack || time.Now().After(settleBy) {
			break
		}
	}
	endRSS := rssBytes(t, pid)
	t.Logf("soak %s: %d tasks from %d producers through %d workers, each with exactly one result (%d from a later attempt; %d leases expired); "+
		"workers killed: %d SIGKILL, %d SIGTERM", dur, put, soakProducers, soakWorkers, ledger.retried, expired, kills, terms)
	t.Logf("master goroutines: start %d, peak %d, end %d (bound %d); RSS: start %s, peak %s, end %s (bound %s)",
		baseG, peakG, endG, baseG+soakGoroutineSlack, mib(baseRSS), mib(peakRSS), mib(endRSS), mib(baseRSS+soakRSSSlack))
	if endG > baseG+soakGoroutineSlack {
		t.Errorf("master has %d goroutines 15s after the soak, more than %d over its %d at the start", endG, soakGoroutineSlack, baseG)
	}
	if endRSS > baseRSS+soakRSSSlack {
		t.Errorf("master RSS %s after the soak, more than %s over its %s at the start", mib(endRSS), mib(soakRSSSlack), mib(baseRSS))
	}
	if kills == 0 || put == 0 {
		t.Fatalf("%d kills, %d tasks: the soak did nothing", kills, put)
	}
}
