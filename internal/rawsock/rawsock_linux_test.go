package rawsock

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns the two ends of a loopback TCP connection, the first
// wrapped.
func pair(t testing.TB) (net.Conn, net.Conn) { return pairWith(t, Wrap) }

// pairWith returns the two ends of a loopback TCP connection, the first
// passed through wrap.
func pairWith(t testing.TB, wrap func(net.Conn) net.Conn) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			c = nil
		}
		accepted <- c
	}()
	dialed, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { dialed.Close(); peer.Close() })
	return wrap(dialed), peer
}

func TestWrapKeepsOtherConns(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Error("Wrap changed a conn that is not TCP")
	}
}

func TestReadWriteBothWays(t *testing.T) {
	c, peer := pair(t)
	if _, ok := c.(interface {
		WritePair(a, b []byte) (int, error)
	}); !ok {
		t.Fatalf("Wrap returned %T, without WritePair", c)
	}
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	if _, err := peer.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if n, err := c.Read(nil); n != 0 || err != nil {
		t.Errorf("empty read = %d, %v", n, err)
	}
	peer.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
}

// TestLargeWritesWaitForRoom writes far more than the socket buffers hold
// while the peer reads slowly, so that writes stop part way and resume
// once the poller says there is room, and checks every byte arrives in
// order.
func TestLargeWritesWaitForRoom(t *testing.T) {
	c, peer := pair(t)
	head := make([]byte, 3<<20)
	body := make([]byte, 5<<20+7)
	rand.Read(head)
	rand.Read(body)
	want := append(append([]byte(nil), head...), body...)

	got := make(chan []byte, 1)
	go func() {
		var b bytes.Buffer
		chunk := make([]byte, 64<<10)
		for b.Len() < len(want) {
			n, err := peer.Read(chunk)
			b.Write(chunk[:n])
			if err != nil {
				break
			}
			if b.Len() < 1<<20 {
				time.Sleep(time.Millisecond) // slow at first: the writer must wait
			}
		}
		got <- b.Bytes()
	}()
	pw := c.(interface {
		WritePair(a, b []byte) (int, error)
	})
	n, err := pw.WritePair(head, body)
	if err != nil || n != len(want) {
		t.Fatalf("WritePair = %d, %v; want %d, nil", n, err, len(want))
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer got %d bytes, not the %d written in order", len(b), len(want))
	}
}

func TestReadDeadline(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	_, err := c.Read(make([]byte, 8))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline = %v; want a timeout", err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	c, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 8))
		done <- err
	}()
	// The read is parked on the poller or about to be; Close wakes it
	// either way.
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read on a closed conn = %v; want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake the read")
	}
}

// Like any net.Conn, a wrapped one may be written by several goroutines
// at once; each write goes out whole.
func TestConcurrentWrites(t *testing.T) {
	c, peer := pair(t)
	const writers, writes, size = 4, 500, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := bytes.Repeat([]byte{byte('a' + w)}, size)
			for range writes {
				if _, err := c.Write(msg); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	buf := make([]byte, size)
	for i := range writers * writes {
		if _, err := io.ReadFull(peer, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if bytes.Count(buf, buf[:1]) != size {
			t.Fatalf("message %d is a mix of writes: %q", i, buf)
		}
	}
	wg.Wait()
}

// A write stuck on a peer that reads nothing ends at its deadline, and
// another ends when the conn is closed.
func TestBlockedWriteEnds(t *testing.T) {
	big := make([]byte, 64<<20) // far more than the socket buffers hold

	c, _ := pair(t)
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	n, err := c.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= len(big) {
		t.Errorf("write past the deadline = %d, %v; want part of it and a timeout", n, err)
	}

	c, _ = pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(big)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // most likely parked by now; Close ends it either way
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("write on a closed conn = %v; want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the write")
	}
}

func TestWriteToResetPeer(t *testing.T) {
	c, peer := pair(t)
	peer.(*net.TCPConn).SetLinger(0) // close with a reset
	peer.Close()
	buf := make([]byte, 64<<10)
	var err error
	for range 100 { // the first writes may land before the reset does
		if _, err = c.Write(buf); err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write to a reset peer = %v; want a *net.OpError from write", err)
	}
}

// BenchmarkPingPong is a 16-byte request and reply between two goroutines
// over loopback TCP, with ordinary and with raw socket calls. In one busy
// process the two cost the same; the raw calls' gain is between processes
// that go idle between messages, which qbench's round trip measures.
func BenchmarkPingPong(b *testing.B) {
	for _, tc := range []struct {
		name string
		wrap func(net.Conn) net.Conn
	}{
		{"plain", func(c net.Conn) net.Conn { return c }},
		{"raw", Wrap},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, peer := pairWith(b, tc.wrap)
			peer = tc.wrap(peer)
			go func() {
				buf := make([]byte, 16)
				for {
					if _, err := io.ReadFull(peer, buf); err != nil {
						return
					}
					if _, err := peer.Write(buf); err != nil {
						return
					}
				}
			}()
			buf := make([]byte, 16)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TryWrite writes a few bytes to a fresh connection at once, and returns
// at once, having written what it could, when the socket's buffers are
// full and the peer reads nothing.
func TestTryWrite(t *testing.T) {
	c, peer := pairWith(t, func(c net.Conn) net.Conn { return c }) // as accepted: a plain *net.TCPConn
	TryWrite(c, []byte("#REFUSED#busy"))
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 64)
	n, err := peer.Read(got)
	if err != nil || string(got[:n]) != "#REFUSED#busy" {
		t.Fatalf("peer read %q, %v; want the bytes written", got[:n], err)
	}

	// Fill the socket until a write would wait, then try once more.
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	for {
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			break
		}
	}
	c.SetWriteDeadline(time.Time{})
	start := time.Now()
	TryWrite(c, make([]byte, 1<<20))
	if took := time.Since(start); took > time.Second {
		t.Errorf("TryWrite to a full socket took %s; want it to return at once", took)
	}
}
