package master_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/pyproto"
)

// These tests speak the Python manager protocol from Go, byte by byte, so
// they run without Python.

// pyDial connects and authenticates as a Python client would.
func pyDial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := auth.Client(conn, qmtest.Authkey, 5*time.Second); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return conn
}

func pyRequest(ident any, method string, args ...any) []byte {
	// A request of plain values always pickles.
	b, _ := pyproto.Pickle(pyproto.Tuple{ident, method, pyproto.Tuple(args), &pyproto.Dict{}})
	return b
}

// pyRoundTrip sends one frame and reads the reply: its kind, and the
// value of a #RETURN or the text of a #TRACEBACK (replies holding an
// exception come back raw).
func pyRoundTrip(t *testing.T, conn net.Conn, frame []byte) (string, any, []byte) {
	t.Helper()
	if err := pyproto.WriteMessage(conn, frame); err != nil {
		t.Fatalf("write: %v", err)
	}
	msg, err := pyproto.ReadMessage(conn, 1<<20)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	v, err := pyproto.Unpickle(msg)
	if err != nil {
		return "", nil, msg
	}
	r, ok := v.(pyproto.Tuple)
	if !ok || len(r) != 2 {
		t.Fatalf("reply %x is not a pair", msg)
	}
	kind, _ := r[0].(string)
	return kind, r[1], msg
}

func wantTraceback(t *testing.T, kind string, v any, text string) {
	t.Helper()
	s, _ := v.(string)
	if kind != pyproto.KindTraceback || !strings.Contains(s, text) {
		t.Fatalf("reply %s %v; want a traceback containing %q", kind, v, text)
	}
}

func wantEOF(t *testing.T, conn net.Conn, within time.Duration) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(within))
	if _, err := io.ReadFull(conn, make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("read after the error: %v, want the connection closed", err)
	}
}

func isReset(err error) bool { return err != nil && strings.Contains(err.Error(), "connection reset") }

// TestPythonRawServesAfterBadRequests: a request that is no pickle, one
// that would run code, an unknown object or method, each get a clear
// RemoteError-style reply, and the connection serves on.
func TestPythonRawServesAfterBadRequests(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	conn := pyDial(t, addr)
	for _, tc := range []struct {
		name  string
		frame []byte
		text  string
	}{
		{"garbage", []byte("not a pickle"), "malformed pickle"},
		{"code", []byte("\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R."), `refused pickle: it would import or call code`},
		{"not a request", pyRequest(nil, "dummy")[:2:2], "malformed pickle"},
		{"a list", []byte("\x80\x04].") /* [] */, "not a manager request"},
		{"unknown method", pyRequest(nil, "frobnicate"), "'frobnicate' unrecognized"},
		{"unknown object", pyRequest("7fa939083350", "get"), "KeyError: '7fa939083350'"},
		{"bad queue name", pyRequest("qm-queue:", "get"), "KeyError"},
		{"unexposed method", pyRequest("qm-queue:q", "__dict__"), "AttributeError"},
		{"bad arguments", pyRequest("qm-queue:q", "qsize", 1), "TypeError: qsize() takes 0 positional arguments but 1 were given"},
		{"shutdown", pyRequest(nil, "shutdown"), "not shut down by its clients"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, v, _ := pyRoundTrip(t, conn, tc.frame)
			wantTraceback(t, kind, v, tc.text)
			if kind, v, _ := pyRoundTrip(t, conn, pyRequest(nil, "dummy")); kind != pyproto.KindReturn || v != nil {
				t.Fatalf("dummy after it: %s %v", kind, v)
			}
		})
	}
}

// TestPythonRawEmptyAndValues: get_nowait on an empty queue replies with
// a pickled _queue.Empty; a put and a get carry the value.
func TestPythonRawEmptyAndValues(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	conn := pyDial(t, addr)
	kind, v, _ := pyRoundTrip(t, conn, pyRequest(nil, "create", "get_jobs_queue"))
	created, ok := v.(pyproto.Tuple)
	if kind != pyproto.KindReturn || !ok || len(created) != 2 || created[0] != "qm-queue:jobs" {
		t.Fatalf("create: %s %v", kind, v)
	}
	_, _, raw := pyRoundTrip(t, conn, pyRequest("qm-queue:jobs", "get_nowait"))
	if want := "\x8c\x06#ERRORc_queue\nEmpty\n)R\x86."; !strings.HasSuffix(string(raw), want) {
		t.Fatalf("get_nowait on empty: %q, want ending %q", raw, want)
	}
	pyRoundTrip(t, conn, pyRequest("qm-queue:jobs", "put", pyproto.Tuple{"x", int64(2)}))
	kind, v, _ = pyRoundTrip(t, conn, pyRequest("qm-queue:jobs", "get"))
	if l, ok := v.(*pyproto.List); kind != pyproto.KindReturn || !ok || len(l.Items) != 2 || l.Items[0] != "x" || l.Items[1] != int64(2) {
		t.Fatalf("get: %s %#v", kind, v)
	}
}

// TestPythonRawFirstRequestDeadline: a client that authenticates but does
// not send its first request within the handshake timeout is dropped.
func TestPythonRawFirstRequestDeadline(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{HandshakeTimeout: 300 * time.Millisecond})
	conn := pyDial(t, addr)
	// A header announcing 100 bytes, and 10 of them.
	if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, 100), make([]byte, 10)...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wantEOF(t, conn, 5*time.Second)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("dropped after %s, before the handshake timeout", d)
	}
}

// TestPythonRawOversized: a frame beyond MaxMessageSize gets an error
// reply at once and the connection goes on; one beyond what the master
// reads and drops (1 GiB) gets the reply and the connection is closed;
// other clients are served.
func TestPythonRawOversized(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxMessageSize: 1024})
	conn := pyDial(t, addr)
	start := time.Now()
	if _, err := conn.Write(append(binary.BigEndian.AppendUint32(nil, 5000), make([]byte, 5000)...)); err != nil {
		t.Fatal(err)
	}
	msg, err := pyproto.ReadMessage(conn, 1<<20)
	if err != nil || !strings.Contains(string(msg), "message too large (4.9 KiB > 1 KiB)") {
		t.Fatalf("reply %q, %v", msg, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	if kind, _, _ := pyRoundTrip(t, conn, pyRequest(nil, "dummy")); kind != pyproto.KindReturn {
		t.Fatalf("the same connection after the refusal: %s", kind)
	}

	huge := pyDial(t, addr)
	if _, err := huge.Write(binary.BigEndian.AppendUint32(nil, 0x7fffffff)); err != nil {
		t.Fatal(err)
	}
	msg, err = pyproto.ReadMessage(huge, 1<<20)
	if err != nil || !strings.Contains(string(msg), "message too large (2.0 GiB > 1 KiB)") {
		t.Fatalf("reply %q, %v", msg, err)
	}
	wantEOF(t, huge, 5*time.Second)
	other := pyDial(t, addr)
	if kind, _, _ := pyRoundTrip(t, other, pyRequest(nil, "dummy")); kind != pyproto.KindReturn {
		t.Fatalf("second client: %s", kind)
	}
}

// TestPythonRawShutdownEndsBlockedGet: Shutdown does not wait for a
// Python get blocked without a timeout; the client is told why.
func TestPythonRawShutdownEndsBlockedGet(t *testing.T) {
	srv, err := master.New(master.Config{Authkey: qmtest.Authkey})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	conn := pyDial(t, ln.Addr().String())
	pyRoundTrip(t, conn, pyRequest(nil, "accept_connection", "MainProcess"))
	if err := pyproto.WriteMessage(conn, pyRequest("qm-queue:q", "get")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the get block
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, master.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	msg, err := pyproto.ReadMessage(conn, 1<<20)
	if err != nil || !strings.Contains(string(msg), "shutting down") {
		t.Fatalf("reply to the blocked get: %q, %v", msg, err)
	}
}
