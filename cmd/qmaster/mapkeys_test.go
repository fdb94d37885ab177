package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestMapPutAgainAddsNoTasks: map's first put reaches the master, which
// stores it, but the answer is lost with the connection. Map, given two
// addresses, puts the batch again through the other; its idempotency keys
// make the master answer with the first tasks' IDs and store nothing new,
// so no task runs twice.
func TestMapPutAgainAddsNoTasks(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	var runs atomic.Int64
	runWorker(t, addr, "tasks", func(n int64) (any, error) {
		runs.Add(1)
		return n * n, nil
	})
	cut := &answerCutter{target: addr, after: 2000}
	a, b := cut.listen(t), cut.listen(t)

	const n = 300
	f, out, errOut := testFactory(seq(n))
	code := runInProcess(context.Background(), f, "map", "--server", a+","+b, "--timeout", "60s")
	if code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if !cut.cut.Load() {
		t.Fatal("no connection was cut: the test did not test anything")
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d result lines, want %d; stderr:\n%s", len(lines), n, errOut)
	}
	if got := runs.Load(); got != n {
		t.Errorf("the worker ran %d tasks for %d lines: the put again stored the batch twice", got, n)
	}
	if !strings.Contains(errOut.String(), "connecting again") || strings.Contains(errOut.String(), "ignored") {
		t.Errorf("stderr:\n%s", errOut)
	}
}

// answerCutter is a TCP proxy to target that, once, on the first
// connection whose client has sent more than after bytes (a put, past the
// handshake), forwards nothing more to the client and closes the
// connection once the master has answered (or after 5s): the master gets
// the request, the client never gets the answer.
type answerCutter struct {
	target string
	after  int64
	cut    atomic.Bool
}

// listen starts a listener that proxies to c.target until the test ends,
// and returns its address.
func (c *answerCutter) listen(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, cn := range conns {
			cn.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", c.target)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, server)
			mu.Unlock()
			wg.Go(func() { c.proxy(client, server) })
		}
	})
	return ln.Addr().String()
}

func (c *answerCutter) proxy(client, server net.Conn) {
	defer client.Close()
	defer server.Close()
	var sent atomic.Int64
	cutting := make(chan struct{})
	go func() {
		buf := make([]byte, 32<<10)
		for {
			m, err := client.Read(buf)
			if m > 0 {
				if _, werr := server.Write(buf[:m]); werr != nil {
					return
				}
				if sent.Add(int64(m)) > c.after && c.cut.CompareAndSwap(false, true) {
					close(cutting)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	var closeAt time.Time // once cut: when to close
	answered := false     // once cut: the master has sent something since
	for {
		select {
		case <-cutting:
			// Let the master store the request and answer it (the answer
			// is dropped), then close: at least 300ms, at most 5s.
			if closeAt.IsZero() {
				closeAt = time.Now().Add(300 * time.Millisecond)
			}
			if answered && !time.Now().Before(closeAt) || time.Now().After(closeAt.Add(5*time.Second)) {
				return
			}
		default:
		}
		_ = server.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		m, err := server.Read(buf)
		select {
		case <-cutting:
			answered = answered || m > 0
			continue // the answer is dropped
		default:
		}
		if m > 0 {
			if _, werr := client.Write(buf[:m]); werr != nil {
				return
			}
		}
		if err != nil && !isTimeout(err) {
			return
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPutAgainAddsNoTasks: as for map, put's batch reaches the master but
// its answer is lost with the connection; put, given two addresses, puts
// it again through the other, and the keys it gave each item make the
// master store nothing new.
func TestPutAgainAddsNoTasks(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	cut := &answerCutter{target: addr, after: 2000}
	a, b := cut.listen(t), cut.listen(t)

	const n = 300
	f, _, errOut := testFactory(seq(n))
	if code := runInProcess(context.Background(), f, "put", "jobs", "--server", a+","+b, "--batch", "50"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if !cut.cut.Load() {
		t.Fatal("no connection was cut: the test did not test anything")
	}
	if !strings.Contains(errOut.String(), "connecting again") || !strings.Contains(errOut.String(), fmt.Sprintf("put %d items into jobs", n)) {
		t.Errorf("stderr:\n%s", errOut)
	}
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "inspect", "--server", addr, "--json"); code != 0 {
		t.Fatalf("inspect exit %d; stderr:\n%s", code, errOut)
	}
	if want := fmt.Sprintf(`"ready":%d`, n); !strings.Contains(out.String(), want) {
		t.Errorf("the queue does not hold %d tasks: %s", n, out)
	}
}

// A producer whose connection is lost, and whose every attempt to connect
// again meets a gateway shutting down, gives up once its redial time is
// over, with the reason: it does not take the failed reconnection for
// another lost connection and try again for ever.
func TestProducerGivesUpWhenNoGatewayTakesIt(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, _, errOut := testFactory("")
	co := clientOptions{Server: addr + "," + addr, Authkey: testKey, ConnectTimeout: 5 * time.Second}
	conn, err := dialProducer(context.Background(), &co, f, "put")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.close()
	conn.redial = 200 * time.Millisecond
	conn.dial = func(context.Context) (*wire.Client, error) {
		return nil, fmt.Errorf("hello: %w", wire.ErrShuttingDown)
	}
	calls := 0
	done := make(chan error, 1)
	go func() {
		done <- conn.call(context.Background(), func(*wire.Client) error {
			calls++
			return wire.ErrClosed
		})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "connect again") {
			t.Errorf("call: %v, want the reason it could not connect again", err)
		}
		if calls != 1 {
			t.Errorf("%d calls, want 1", calls)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("call still going 10s after its 200ms of redialling; stderr:\n%s", errOut)
	}
}

// A producer given one address reconnects only to a master whose queues
// outlive it: one without a data directory loses them when it stops, and
// map would wait for its results for ever.
func TestProducerReconnectsOnlyWhenTheQueuesOutliveTheMaster(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  master.Config
		want bool
	}{
		{"in memory", master.Config{}, false},
		{"data dir", master.Config{DataDir: t.TempDir()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := startInProcessMaster(t, tc.cfg)
			f, _, _ := testFactory("")
			co := clientOptions{Server: addr, Authkey: testKey, ConnectTimeout: 5 * time.Second}
			conn, err := dialProducer(context.Background(), &co, f, "map")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.close()
			if conn.reconnect != tc.want {
				t.Errorf("reconnect = %v, want %v", conn.reconnect, tc.want)
			}
		})
	}
}
