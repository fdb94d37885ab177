package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// startMasterNofile runs qmaster on a free loopback port with its file
// descriptors limited to nofile (soft and hard: the Go runtime raises a
// soft limit to the hard one at start-up), and returns its address.
func startMasterNofile(t *testing.T, nofile int, args ...string) (*proc, string) {
	t.Helper()
	argv := append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, nofile),
		filepath.Join(binDir, "qmaster"), "--addr", "127.0.0.1:0"}, args...)
	p := &proc{cmd: exec.Command("sh", argv...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "QM_AUTHKEY="+authkey)
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start qmaster: %v", err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("qmaster (nofile %d) %v stderr:\n%s", nofile, args, p.logs())
		}
	})
	var addr string
	waitFor(t, 10*time.Second, func() bool {
		if sub := listenRE.FindStringSubmatch(p.logs()); sub != nil {
			addr = sub[1]
			return true
		}
		return false
	})
	return p, addr
}

// TestMasterOutOfFileDescriptors: a durable master limited to 48 file
// descriptors is sent 150 silent connections at once, far beyond them,
// while a worker and a producer, connected before, keep working. Its
// accepts fail with EMFILE; it backs off and retries, serving the
// connections it has and closing the silent ones at the handshake
// timeout; the work goes on throughout, every task with exactly one
// result; a client dialing meanwhile waits its turn in the backlog and
// connects; afterwards new clients connect at once, the master still up.
func TestMasterOutOfFileDescriptors(t *testing.T) {
	const (
		nofile = 48
		flood  = 150
	)
	m, addr := startMasterNofile(t, nofile, "--handshake-timeout", "2s", "--max-attempts", "100", "--data-dir", t.TempDir())
	start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--concurrency", "4", "--lease", "2s", "--name", "w1")
	producer := dial(t, addr, "producer")
	waitFor(t, 10*time.Second, func() bool {
		cs, err := producer.Clients(context.Background())
		return err == nil && len(cs) == 2
	})

	// The flood: connections that say nothing, each held until the
	// master closes it or 15 s pass.
	var (
		wg                        sync.WaitGroup
		mu                        sync.Mutex
		challenged, refused, none int
	)
	for range flood {
		wg.Go(func() {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				mu.Lock()
				none++
				mu.Unlock()
				return
			}
			defer conn.Close()
			_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
			b := make([]byte, 64)
			n, _ := conn.Read(b)
			// Held, silent, until the master closes it: a challenged
			// connection at its handshake timeout.
			_, _ = io.Copy(io.Discard, conn)
			mu.Lock()
			defer mu.Unlock()
			switch s := string(b[:n]); {
			case strings.Contains(s, "#CHALLENGE#"):
				challenged++
			case strings.Contains(s, "#REFUSED#"):
				refused++
			default:
				none++ // closed or timed out unanswered
			}
		})
	}

	floodDone := make(chan struct{})
	go func() { wg.Wait(); close(floodDone) }()

	// Meanwhile the producer puts and the worker works, on connections
	// the master already holds, until the flood is over; halfway through,
	// a new client tries to connect.
	l := newResultLedger()
	begin := time.Now()
	newClient := make(chan time.Duration, 1)
	go func() {
		time.Sleep(3 * time.Second)
		tried := time.Now()
		for time.Since(tried) < 30*time.Second {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(authkey), Role: "admin", HandshakeTimeout: 20 * time.Second})
			cancel()
			if err == nil {
				c.Close()
				newClient <- time.Since(tried)
				return
			}
		}
		newClient <- -1
	}()
	for n, rounds := int64(0), 0; ; rounds++ {
		select {
		case <-floodDone:
		default:
			items := make([]any, 100)
			ns := make([]int64, 100)
			for j := range items {
				n++
				ns[j], items[j] = n, n
			}
			ids, err := producer.Put(context.Background(), "tasks", items, wire.PutOptions{ReplyTo: "results"})
			if err != nil {
				t.Fatalf("put during the flood: %v", err)
			}
			l.put(ids, ns)
			for put, done := l.counts(); done < put; put, done = l.counts() {
				if time.Since(begin) > 60*time.Second {
					t.Fatalf("%d of %d results after 60s", done, put)
				}
				ts, err := producer.Get(context.Background(), "results", wire.GetOptions{Max: 512, Timeout: time.Second, NoAck: true})
				if err != nil {
					t.Fatalf("get results during the flood: %v", err)
				}
				l.record(ts)
			}
			continue
		}
		break
	}
	took := time.Since(begin)
	tasks, _ := l.counts()
	drainResults(t, producer, "results", l, 300*time.Millisecond)
	l.check(t)
	joined := <-newClient
	if joined < 0 {
		t.Errorf("a new client could not connect during the flood in 30s")
	}

	// The flood is over: a new client is served again.
	floodOver := time.Now()
	var c *wire.Client
	waitFor(t, 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var err error
		c, err = wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(authkey), Role: "admin"})
		return err == nil
	})
	defer c.Close()
	settled(t, c)
	select {
	case <-m.done:
		t.Fatalf("the master exited:\n%s", m.logs())
	default:
	}
	retries := strings.Count(m.logs(), `msg="accept failed; retrying"`)
	if retries == 0 {
		t.Errorf("no accept failed with %d descriptors and %d connections: the flood did not reach the limit", nofile, flood)
	}
	t.Logf("%d connections at once at a master limited to %d descriptors: %d challenged, %d refused with a reason, %d closed or unanswered; "+
		"%d accept retries logged (EMFILE); meanwhile %d tasks done over the %s of the flood, each with exactly one result; "+
		"a new client dialing during the flood connected after %s; one after it at once (%s)",
		flood, nofile, challenged, refused, none, retries, tasks, took.Round(10*time.Millisecond),
		joined.Round(10*time.Millisecond), time.Since(floodOver).Round(10*time.Millisecond))
}
