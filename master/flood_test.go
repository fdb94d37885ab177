package master_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// Flood sizes and limits of TestLimitsUnderFlood.
const (
	floodUnauth      = 400 // silent connections opened at once
	floodMaxUnauth   = 64  // --max-unauth-conns (its default)
	floodHandshake   = 2 * time.Second
	floodAddrs       = 8                     // wrong-key sources: 127.0.0.2 and up
	floodFailLimit   = 5                     // --auth-fail-limit
	floodFailTries   = 10                    // wrong-key handshakes per source
	floodFailDelay   = 10 * time.Millisecond // --auth-fail-limit's first delay
	floodLegitConns  = 3                     // the producer, the worker and the consumer
	floodSpareConns  = 30                    // --max-conns beyond the legitimate clients
	floodExtraConns  = 300
	floodDialers     = 16 // concurrent dials of the --max-conns flood, well below floodMaxUnauth
	floodGoroutineUp = 20 // goroutines the process may have over its count before the floods
)

// legitWork is a producer putting squares to do, a worker doing them and
// a consumer taking the results, each on its own connection, until stop.
type legitWork struct {
	mu     sync.Mutex
	want   map[uint64]int64 // task ID -> the square its result must hold
	got    map[uint64][]int64
	errs   []error
	maxPut time.Duration      // the slowest put
	stop   context.CancelFunc // stops the producer
	wg     sync.WaitGroup
}

func startLegitWork(t *testing.T, addr string) *legitWork {
	t.Helper()
	producer := qmtest.Dial(t, addr, "producer")
	worker := qmtest.Dial(t, addr, "worker")
	consumer := qmtest.Dial(t, addr, "producer")
	ctx, stop := context.WithCancel(context.Background())
	w := &legitWork{want: make(map[uint64]int64), got: make(map[uint64][]int64), stop: stop}
	workCtx, stopWorker := context.WithCancel(context.Background())
	t.Cleanup(stopWorker)
	w.wg.Go(func() {
		for n := int64(1); ctx.Err() == nil; time.Sleep(5 * time.Millisecond) {
			items := make([]any, 10)
			ns := make([]int64, 10)
			for i := range items {
				items[i], ns[i] = n, n
				n++
			}
			begin := time.Now()
			ids, err := producer.Put(context.Background(), "tasks", items, wire.PutOptions{ReplyTo: "results"})
			took := time.Since(begin)
			w.mu.Lock()
			w.maxPut = max(w.maxPut, took)
			if err != nil {
				w.errs = append(w.errs, fmt.Errorf("put: %w", err))
			}
			for i, id := range ids {
				w.want[id] = ns[i] * ns[i]
			}
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	})
	w.wg.Go(func() { squareWorker(workCtx, t, worker) })
	w.wg.Go(func() {
		for workCtx.Err() == nil {
			ts, err := consumer.Get(workCtx, "results", wire.GetOptions{Max: 256, Timeout: 50 * time.Millisecond, NoAck: true})
			if err != nil {
				if workCtx.Err() == nil {
					w.mu.Lock()
					w.errs = append(w.errs, fmt.Errorf("consumer get: %w", err))
					w.mu.Unlock()
				}
				return
			}
			w.mu.Lock()
			for _, task := range ts {
				r, err := wire.DecodeResult(task.Payload)
				if err != nil || r.Error != "" {
					w.errs = append(w.errs, fmt.Errorf("result %d: %v %q", task.ID, err, r.Error))
					continue
				}
				v, err := wire.DecodeValue(r.Value)
				n, _ := v.(int64)
				if err != nil {
					w.errs = append(w.errs, fmt.Errorf("result of task %d: %w", r.TaskID, err))
				}
				w.got[r.TaskID] = append(w.got[r.TaskID], n)
			}
			w.mu.Unlock()
		}
	})
	t.Cleanup(func() { stop(); stopWorker(); w.wg.Wait() })
	return w
}

// finish stops the producer, waits for every task put to have its result
// and fails t unless each has exactly one, the right one.
func (w *legitWork) finish(t *testing.T) (tasks int) {
	t.Helper()
	w.stop()
	qmtest.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.errs) > 0 {
			t.Fatalf("legitimate clients: %v", w.errs)
		}
		missing := 0
		for id := range w.want {
			if len(w.got[id]) == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d tasks without a result", missing, len(w.want))
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond) // a duplicate would be in by now
	w.mu.Lock()
	defer w.mu.Unlock()
	for id, want := range w.want {
		if rs := w.got[id]; len(rs) != 1 || rs[0] != want {
			t.Errorf("task %d: results %v, want exactly one, %d", id, rs, want)
		}
	}
	for id := range w.got {
		if _, ok := w.want[id]; !ok {
			t.Errorf("result for task %d, which was never put", id)
		}
	}
	return len(w.want)
}

// progress returns how many tasks have a result so far.
func (w *legitWork) progress() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.got)
}

// TestLimitsUnderFlood: while a producer, a worker and a consumer work on
// 127.0.0.1, the master is flooded three times: several hundred silent
// connections at once (beyond --max-unauth-conns), wrong-key handshakes
// from several loopback addresses (beyond --auth-fail-limit), and
// authenticated connections beyond --max-conns. Each refusal reaches its
// client with its reason and is counted in /metrics, one for one; the
// legitimate clients' work goes on and completes, every task with exactly
// one result; after each flood the process's goroutines come back to
// within a bound of their count before it.
func TestLimitsUnderFlood(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{
		MaxUnauthConns:   floodMaxUnauth,
		HandshakeTimeout: floodHandshake,
		AuthFailLimit:    floodFailLimit,
		AuthFailWindow:   time.Minute, // longer than the test: the counts are exact
		AuthFailDelay:    floodFailDelay,
		MaxConns:         floodLegitConns + floodSpareConns,
	})
	work := startLegitWork(t, addr)
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := work.progress(); n < 100 {
			return fmt.Errorf("%d results before the floods", n)
		}
		return nil
	})
	time.Sleep(100 * time.Millisecond) // the idle pools of the clients and the master fill
	baseG := runtime.NumGoroutine()
	metric := func(reason string) float64 {
		v, _ := metricValue(scrape(t, url, string(qmtest.Authkey)), "qm_handshake_failures_total", "reason", reason)
		return v
	}
	wantMetric := func(reason string, want float64) {
		t.Helper()
		qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			if v := metric(reason); v != want {
				return fmt.Errorf("qm_handshake_failures_total{reason=%q} = %v, want %v", reason, v, want)
			}
			return nil
		})
	}
	settle := func(what string) int {
		t.Helper()
		var g int
		qmtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			if g = runtime.NumGoroutine(); g > baseG+floodGoroutineUp {
				return fmt.Errorf("after %s: %d goroutines, more than %d over the %d before the floods", what, g, floodGoroutineUp, baseG)
			}
			return nil
		})
		return g
	}
	before := work.progress()

	t.Run("unauthenticated", func(t *testing.T) {
		type outcome struct {
			challenged bool          // got a challenge: held a place until the master closed it
			first      time.Time     // when the first message came
			held       time.Duration // from the challenge to the master's close
			refusal    string
			err        error
		}
		outcomes := make([]outcome, floodUnauth)
		conns := make([]net.Conn, floodUnauth)
		var wg sync.WaitGroup
		begin := time.Now()
		for i := range floodUnauth {
			wg.Go(func() {
				conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					outcomes[i].err = err
					return
				}
				conns[i] = conn
				_ = conn.SetReadDeadline(time.Now().Add(floodHandshake + 3*time.Second))
				msg, err := pyproto.ReadMessage(conn, 256)
				outcomes[i].first = time.Now()
				if err != nil {
					outcomes[i].err = fmt.Errorf("first message: %w", err)
					return
				}
				if reason, ok := bytes.CutPrefix(msg, []byte("#REFUSED#")); ok {
					outcomes[i].refusal = string(reason)
					return
				}
				if !bytes.HasPrefix(msg, []byte("#CHALLENGE#")) {
					outcomes[i].err = fmt.Errorf("first message %q", msg)
					return
				}
				// Silent: the master must close it after its handshake timeout.
				got := time.Now()
				_, err = conn.Read(make([]byte, 1))
				outcomes[i].challenged, outcomes[i].held = true, time.Since(got)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					outcomes[i].err = fmt.Errorf("not closed by the master %s after its challenge", time.Since(got).Round(time.Millisecond))
				}
			})
		}
		wg.Wait()
		took := time.Since(begin)
		var challenged, refused int
		var maxHeld time.Duration
		var last time.Time // the last first message
		for i, o := range outcomes {
			if o.first.After(last) {
				last = o.first
			}
			if conns[i] != nil {
				conns[i].Close()
			}
			switch {
			case o.err != nil:
				t.Errorf("silent connection %d: %v", i, o.err)
			case o.challenged:
				challenged++
				maxHeld = max(maxHeld, o.held)
			case strings.Contains(o.refusal, "too many connections waiting to authenticate"):
				refused++
			default:
				t.Errorf("silent connection %d refused with %q", i, o.refusal)
			}
		}
		if challenged < floodMaxUnauth || challenged+refused != floodUnauth {
			t.Errorf("%d silent connections: %d challenged, %d refused; want at least %d challenged and the rest refused",
				floodUnauth, challenged, refused, floodMaxUnauth)
		}
		// Until the first challenged connection times out, no place is
		// freed: if every connection had its answer by then, exactly the
		// limit were challenged.
		if last.Before(begin.Add(floodHandshake)) && challenged != floodMaxUnauth {
			t.Errorf("%d silent connections challenged at once, want %d (--max-unauth-conns)", challenged, floodMaxUnauth)
		}
		if maxHeld > floodHandshake+time.Second {
			t.Errorf("a silent connection held for %s, beyond the handshake timeout %s", maxHeld, floodHandshake)
		}
		wantMetric("unauth_limit", float64(refused))
		wantMetric("timeout", float64(challenged))
		g := settle("the silent connections")
		t.Logf("%d silent connections at once (--max-unauth-conns %d): %d challenged and closed by the master within %s, %d refused with the reason; "+
			"all counted in /metrics; flood over in %s; goroutines %d before, %d after",
			floodUnauth, floodMaxUnauth, challenged, maxHeld.Round(time.Millisecond), refused, took.Round(time.Millisecond), baseG, g)
	})

	t.Run("wrong-keys", func(t *testing.T) {
		probe, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}).Dial("tcp", addr)
		if err != nil {
			t.Skipf("cannot dial from 127.0.0.2: %v", err)
		}
		probe.Close()
		failsBefore := metric("auth")
		wrongKey := func(ip net.IP, key []byte) error {
			conn, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 5 * time.Second}).Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			return auth.Client(conn, key, 5*time.Second)
		}
		fails := make([]int, floodAddrs)
		// slowest[a] is the longest wrong-key handshake of address a.
		slowest := make([]time.Duration, floodAddrs)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var unexpected []error
		begin := time.Now()
		for a := range floodAddrs {
			wg.Go(func() {
				ip := net.IPv4(127, 0, 0, byte(2+a))
				for range floodFailTries {
					start := time.Now()
					err := wrongKey(ip, []byte("not the key"))
					slowest[a] = max(slowest[a], time.Since(start))
					if errors.Is(err, auth.ErrAuthFailed) {
						fails[a]++
						continue
					}
					mu.Lock()
					unexpected = append(unexpected, fmt.Errorf("%s: %v", ip, err))
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		took := time.Since(begin)
		if len(unexpected) > 0 {
			t.Fatalf("wrong-key handshakes: %v", unexpected)
		}
		// Past the limit, the failures of one address wait 10, 20, 40...
		// ms, one after another: the last waited at least this.
		lastDelay := floodFailDelay << (floodFailTries - floodFailLimit - 1)
		var totalFails int
		for a := range floodAddrs {
			if fails[a] != floodFailTries || slowest[a] < lastDelay {
				t.Errorf("127.0.0.%d: %d failed authentications, the slowest in %s; want all %d, the slowest slowed by at least %s",
					2+a, fails[a], slowest[a], floodFailTries, lastDelay)
			}
			totalFails += fails[a]
		}
		wantMetric("auth", failsBefore+float64(totalFails))

		// The right key from a slowed address is served at once.
		start := time.Now()
		if err := wrongKey(net.IPv4(127, 0, 0, 2), qmtest.Authkey); err != nil {
			t.Errorf("the right key from an address past its failure limit: %v", err)
		}
		rightKey := time.Since(start)
		g := settle("the wrong keys")
		t.Logf("%d wrong-key handshakes from %d addresses in %s (--auth-fail-limit %d): all failed authentications, the last of each address "+
			"answered after at least %s; the right key from one of them served in %s; all counted in /metrics; goroutines %d before, %d after",
			floodAddrs*floodFailTries, floodAddrs, took.Round(time.Millisecond), floodFailLimit, lastDelay, rightKey.Round(time.Millisecond), baseG, g)
	})

	t.Run("max-conns", func(t *testing.T) {
		fullBefore := metric("max_conns")
		var (
			mu         sync.Mutex
			clients    []*wire.Client
			full       int
			unexpected []error
		)
		sem := make(chan struct{}, floodDialers)
		var wg sync.WaitGroup
		begin := time.Now()
		for range floodExtraConns {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c, err := wire.Dial(ctxFor(t, 10*time.Second), wire.Config{Addr: addr, Authkey: qmtest.Authkey, Role: "producer", Name: "flood"})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					clients = append(clients, c)
				case errors.Is(err, wire.ErrMasterFull) && strings.Contains(err.Error(), "too many connections"):
					full++
				default:
					unexpected = append(unexpected, err)
				}
			})
		}
		wg.Wait()
		took := time.Since(begin)
		held := len(clients)
		peakG := runtime.NumGoroutine()
		for _, c := range clients {
			c.Close()
		}
		if len(unexpected) > 0 {
			t.Fatalf("dials beyond --max-conns: %v", unexpected)
		}
		if held != floodSpareConns || full != floodExtraConns-floodSpareConns {
			t.Errorf("%d dials with room for %d: %d connected, %d refused as full; want %d and %d",
				floodExtraConns, floodSpareConns, held, full, floodSpareConns, floodExtraConns-floodSpareConns)
		}
		wantMetric("max_conns", fullBefore+float64(full))
		g := settle("the connections beyond --max-conns")
		// Their places are free again.
		qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
			c, err := dialKey(t, addr, qmtest.Authkey)
			if err == nil {
				c.Close()
			}
			return err
		})
		t.Logf("%d connections (--max-conns %d, %d taken by the legitimate clients) in %s: %d served, %d refused as full with the reason; "+
			"all counted in /metrics; goroutines %d before, %d with them held, %d after",
			floodExtraConns, floodLegitConns+floodSpareConns, floodLegitConns, took.Round(time.Millisecond), held, full, baseG, peakG, g)
	})

	during := work.progress() - before
	tasks := work.finish(t)
	if during == 0 {
		t.Errorf("no legitimate task completed during the floods")
	}
	t.Logf("legitimate work: %d tasks put, each with exactly one result (%d completed during the floods); slowest put %s",
		tasks, during, work.maxPut.Round(time.Millisecond))
}
