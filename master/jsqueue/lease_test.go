package jsqueue_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// freezer is a TCP proxy that can stop passing bytes, both ways, without
// closing anything or telling either side: a network gone quiet.
type freezer struct {
	ln     net.Listener
	mu     sync.Mutex
	thawed *sync.Cond
	frozen bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

// startFreezer proxies a loopback port to addr until the test ends.
func startFreezer(t *testing.T, addr string) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln}
	f.thawed = sync.NewCond(&f.mu)
	f.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", addr)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, c, up)
			f.mu.Unlock()
			f.wg.Go(func() { f.pipe(up, c) })
			f.wg.Go(func() { f.pipe(c, up) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		f.set(false)
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *freezer) addr() string { return f.ln.Addr().String() }

// set freezes or thaws the proxy.
func (f *freezer) set(frozen bool) {
	f.mu.Lock()
	f.frozen = frozen
	f.mu.Unlock()
	f.thawed.Broadcast()
}

func (f *freezer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.thawed.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

// A gateway whose renewals JetStream no longer confirms (its connection
// went quiet) drops its lease once AckWait has passed: JetStream may have
// handed the task to another gateway, and a late ack would apply to that
// delivery. The other delivery stays the one that counts.
func TestUnconfirmedRenewalsLoseTheLease(t *testing.T) {
	url := startNodeListening(t)
	f := startFreezer(t, strings.TrimPrefix(url, "nats://"))
	ncA, err := nats.Connect("nats://"+f.addr(), nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	ncB, err := nats.Connect(url, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncB.Close)
	const ackWait = 500 * time.Millisecond
	a := newQueues(t, nil, jsqueue.Config{Conn: ncA, AckWait: ackWait})
	b := newQueues(t, nil, jsqueue.Config{Conn: ncB, AckWait: ackWait})
	reaping(t, a)
	reaping(t, b)
	ids := put(t, b, "jobs", "t")
	if ts := get(t, a, "jobs", 1, 1, time.Minute, 0); len(ts) != 1 {
		t.Fatal("no task")
	}
	// Renewed and confirmed, the lease outlives AckWait.
	if ts := get(t, b, "jobs", 2, 1, 0, 3*ackWait); len(ts) != 0 {
		t.Fatalf("a renewed lease was handed out again: %+v", ts)
	}
	f.set(true)
	ts := get(t, b, "jobs", 2, 1, time.Minute, 10*ackWait)
	if len(ts) != 1 || ts[0].ID != ids[0] || ts[0].Attempts != 2 {
		t.Fatalf("with the first gateway's renewals lost got %+v, want task %d at attempt 2", ts, ids[0])
	}
	deadline := time.Now().Add(5 * ackWait)
	for len(a.Leases()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the first gateway still holds %v, %s after its renewals stopped being confirmed", a.Leases(), 5*ackWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.set(false)
	if _, err := a.Ack(queue.AckRequest{Queue: "jobs", Owner: 1, IDs: ids}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("ack of the lost lease: %v, want ErrNotLeased", err)
	}
	if err := a.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: ids[0], Error: "late"}); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("nack of the lost lease: %v, want ErrNotLeased", err)
	}
	st, err := b.Stats("jobs")
	if err != nil || st.Leased != 1 || st.Done != 0 {
		t.Fatalf("stats %+v, %v: want the second delivery still leased", st, err)
	}
	if _, err := b.Ack(queue.AckRequest{Queue: "jobs", Owner: 2, IDs: ids}, nil); err != nil {
		t.Fatalf("ack of the current delivery: %v", err)
	}
}

// logBuffer collects a logger's output for a test to read.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The same for a NoAck delivery waiting for its reply to be written: once
// its renewals are no longer confirmed it is neither acked (Delivered)
// nor stored again (Unget), since JetStream delivers it again.
func TestUnconfirmedRenewalsOfANoAckDelivery(t *testing.T) {
	url := startNodeListening(t)
	f := startFreezer(t, strings.TrimPrefix(url, "nats://"))
	ncA, err := nats.Connect("nats://"+f.addr(), nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	ncB, err := nats.Connect(url, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncB.Close)
	const ackWait = 500 * time.Millisecond
	var logs logBuffer
	a := newQueues(t, nil, jsqueue.Config{Conn: ncA, AckWait: ackWait, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	b := newQueues(t, nil, jsqueue.Config{Conn: ncB, AckWait: ackWait})
	reaping(t, a)
	reaping(t, b)
	ids := put(t, b, "results", "r")
	req := queue.GetRequest{Queue: "results", Max: 1, Owner: 1, NoAck: true, Lease: time.Minute}
	ts, err := a.Get(context.Background(), req, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %v, %v", ts, err)
	}
	f.set(true)
	again := get(t, b, "results", 2, 1, time.Minute, 10*ackWait)
	if len(again) != 1 || again[0].ID != ids[0] {
		t.Fatalf("with the first gateway's renewals lost got %+v, want task %d again", again, ids[0])
	}
	deadline := time.Now().Add(5 * ackWait)
	for !strings.Contains(logs.String(), "lease lost") {
		if time.Now().After(deadline) {
			t.Fatalf("no lease lost %s after the renewals stopped being confirmed; log:\n%s", 5*ackWait, logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	f.set(false)
	a.Unget(req, ts) // its reply was not written
	if _, err := b.Ack(queue.AckRequest{Queue: "results", Owner: 2, IDs: ids}, nil); err != nil {
		t.Fatalf("ack of the current delivery: %v", err)
	}
	st, err := b.Stats("results")
	if err != nil || st.Ready != 0 || st.Leased != 0 || st.Puts != 1 {
		t.Fatalf("stats %+v, %v: want the one task done, none stored again", st, err)
	}
}

// An idle gateway's reaper sleeps while nothing is held, instead of
// looking every 20ms, and a lease wakes it: the lease still expires, and
// its task is handed out again.
func TestReaperSleepsWhileNothingIsHeld(t *testing.T) {
	q := newQueues(t, startNode(t), jsqueue.Config{})
	reaping(t, q)
	put(t, q, "jobs", "t")
	deadline := time.Now().Add(10 * time.Second)
	for q.Reaps() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the reaper never looked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	before := q.Reaps()
	// A reaper that kept ticking would look ten times meanwhile.
	time.Sleep(200 * time.Millisecond)
	if n := q.Reaps() - before; n > 1 {
		t.Errorf("the reaper looked %d times in 200ms with nothing held", n)
	}
	if ts := get(t, q, "jobs", 1, 1, 100*time.Millisecond, 0); len(ts) != 1 {
		t.Fatal("no task")
	}
	ts := get(t, q, "jobs", 2, 1, time.Minute, 10*time.Second)
	if len(ts) != 1 || ts[0].Attempts != 2 {
		t.Fatalf("the expired lease's task was not handed out again: %+v", ts)
	}
}
