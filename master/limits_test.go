package master_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// dialKey connects to addr with key and a short handshake timeout.
func dialKey(t *testing.T, addr string, key []byte) (*wire.Client, error) {
	t.Helper()
	c, err := wire.Dial(ctxFor(t, 10*time.Second), wire.Config{
		Addr: addr, Authkey: key, Role: "producer", Name: t.Name(), HandshakeTimeout: 5 * time.Second,
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// served checks that c still gets answers.
func served(t *testing.T, c *wire.Client) {
	t.Helper()
	if _, err := c.Stats(ctxFor(t, 5*time.Second), ""); err != nil {
		t.Fatalf("a connected client is no longer served: %v", err)
	}
}

// waitMetric waits for the metric to reach want: the master counts a
// refusal around when the client sees it, not strictly before.
func waitMetric(t *testing.T, url, name string, want float64, labels ...string) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		if v, _ := metricValue(scrape(t, url, string(qmtest.Authkey)), name, labels...); v != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, v, want)
		}
		return nil
	})
}

// silentConn opens a connection that reads the master's challenge and
// then says nothing, holding a place among the unauthenticated.
func silentConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pyproto.ReadMessage(conn, 256); err != nil {
		t.Fatalf("read challenge: %v", err)
	}
	return conn
}

func TestMaxUnauthConns(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxUnauthConns: 2, HandshakeTimeout: 10 * time.Second})
	good := qmtest.Dial(t, addr, "producer")
	a, b := silentConn(t, addr), silentConn(t, addr)

	_, err := dialKey(t, addr, qmtest.Authkey)
	if !errors.Is(err, auth.ErrRefused) || !strings.Contains(err.Error(), "too many connections waiting to authenticate") {
		t.Fatalf("dial beyond --max-unauth-conns: %v, want ErrRefused", err)
	}
	t.Logf("client error: %v", err)
	served(t, good)
	waitMetric(t, url, "qm_handshake_failures_total", 1, "reason", "unauth_limit")

	a.Close()
	b.Close()
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		_, err := dialKey(t, addr, qmtest.Authkey)
		return err
	})
}

// TestAuthFailLimit: past --auth-fail-limit, wrong keys are answered
// after a delay that doubles with each; the right key from the same
// address is served at once.
func TestAuthFailLimit(t *testing.T) {
	const delay = 50 * time.Millisecond
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{AuthFailLimit: 3, AuthFailDelay: delay, HandshakeTimeout: 4 * time.Second})
	good := qmtest.Dial(t, addr, "producer")
	for i := range 6 {
		start := time.Now()
		if _, err := dialKey(t, addr, []byte("wrong")); !errors.Is(err, auth.ErrAuthFailed) {
			t.Fatalf("wrong key %d: %v, want ErrAuthFailed", i, err)
		}
		took := time.Since(start)
		if i >= 3 {
			if want := delay << (i - 3); took < want {
				t.Errorf("wrong key %d answered in %s, want after at least %s", i, took, want)
			}
		}
	}
	if _, err := dialKey(t, addr, qmtest.Authkey); err != nil {
		t.Fatalf("the right key after 6 wrong ones from its address: %v", err)
	}
	served(t, good)
	waitMetric(t, url, "qm_handshake_failures_total", 6, "reason", "auth")
}

// TestAuthFailFloodValidWorker: while wrong-key handshakes flood from one
// address, more at once than that address may hold in delays, a worker
// with the right key at the same address keeps reconnecting and working,
// never refused; the flood is slowed.
func TestAuthFailFloodValidWorker(t *testing.T) {
	const (
		flooders   = 12 // beyond the 8 delays 127.0.0.1 may hold (half of 16)
		reconnects = 20
	)
	addr, _ := qmtest.StartMaster(t, master.Config{AuthFailLimit: 3, AuthFailDelay: 20 * time.Millisecond,
		HandshakeTimeout: time.Second, MaxUnauthConns: 16})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var fails, unexpected atomic.Int64
	for range flooders {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := dialKey(t, addr, []byte("old key"))
				switch {
				case errors.Is(err, auth.ErrAuthFailed):
					fails.Add(1)
				case err != nil:
					unexpected.Add(1)
				default:
					t.Error("the wrong key was welcomed")
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	qmtest.CheckFor(t, 10*time.Second, 5*time.Millisecond, func() error {
		if n := fails.Load(); n < 20 {
			return fmt.Errorf("%d failures so far", n)
		}
		return nil
	})

	var slowest time.Duration
	for i := range reconnects {
		start := time.Now()
		c, err := dialKey(t, addr, qmtest.Authkey)
		if err != nil {
			t.Fatalf("reconnect %d with the right key during the flood: %v", i, err)
		}
		slowest = max(slowest, time.Since(start))
		ctx := ctxFor(t, 5*time.Second)
		if _, err := c.Put(ctx, "jobs", []any{i}, wire.PutOptions{}); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		ts, err := c.Get(ctx, "jobs", wire.GetOptions{Timeout: time.Second})
		if err != nil || len(ts) != 1 {
			t.Fatalf("get %d: %v, %v", i, ts, err)
		}
		if err := c.Ack(ctx, "jobs", ts[0].ID); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
		c.Close()
	}
	n := fails.Load()
	if u := unexpected.Load(); u > 0 {
		t.Errorf("%d wrong-key handshakes ended other than in a failed authentication", u)
	}
	t.Logf("%d reconnects with the right key, the slowest handshake %s, during %d failed wrong-key handshakes from the same address",
		reconnects, slowest.Round(time.Millisecond), n)
}

func TestMaxConns(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxConns: 2})
	first := qmtest.Dial(t, addr, "producer")
	second, err := dialKey(t, addr, qmtest.Authkey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialKey(t, addr, qmtest.Authkey)
	if !errors.Is(err, wire.ErrMasterFull) || !strings.Contains(err.Error(), "master full: too many connections") {
		t.Fatalf("dial beyond --max-conns: %v, want ErrMasterFull", err)
	}
	t.Logf("client error: %v", err)
	served(t, first)
	served(t, second)
	waitMetric(t, url, "qm_handshake_failures_total", 1, "reason", "max_conns")
	second.Close()
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		_, err := dialKey(t, addr, qmtest.Authkey)
		return err
	})
}

// A connection with --max-streams calls in progress has the next one
// refused, unread; a wire.Client instead waits for a slot (the master's
// hello says how many), and so is served once one frees.
func TestMaxStreams(t *testing.T) {
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxStreams: 2})
	other := qmtest.Dial(t, addr, "producer")
	ctx := ctxFor(t, 20*time.Second)

	// The master's refusal, to a client that does not wait.
	sess, _ := rawSession(t, addr)
	var codecs []*wire.Codec
	for range 3 {
		stream, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		codecs = append(codecs, wire.NewCodec(stream, 1<<20))
	}
	for _, codec := range codecs[:2] { // two calls in progress: the cap
		if err := codec.Write(&wire.Request{Op: wire.OpGet, Queue: "streams", Timeout: 10 * time.Second, NoAck: true}); err != nil {
			t.Fatal(err)
		}
	}
	waitGets(t, other, "streams", 2)
	if err := codecs[2].Write(&wire.Request{Op: wire.OpPut, Queue: "streams", Items: []msgpack.RawMessage{{0x01}}}); err != nil {
		t.Fatal(err)
	}
	var resp wire.Response
	if err := codecs[2].Read(&resp); err != nil || resp.Code != wire.CodeTooManyStreams || !resp.StreamClosed || !strings.Contains(resp.Error, "--max-streams") {
		t.Fatalf("third call: %+v, %v; want it refused for too many streams", resp, err)
	}
	waitMetric(t, url, "qm_refusals_total", 1, "limit", "max_streams")
	if _, err := other.Put(ctx, "streams", []any{1, 2}, wire.PutOptions{}); err != nil { // wakes both gets
		t.Fatalf("another client's put: %v", err)
	}
	for _, codec := range codecs[:2] {
		var resp wire.Response
		if err := codec.Read(&resp); err != nil || len(resp.Tasks) != 1 {
			t.Fatalf("blocked get: %+v, %v", resp, err)
		}
	}

	// A client's third call waits for one of its two to end.
	c := qmtest.Dial(t, addr, "worker")
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if _, err := c.Get(ctx, "streams", wire.GetOptions{Timeout: 10 * time.Second, NoAck: true}); err != nil {
				t.Errorf("blocked get: %v", err)
			}
		})
	}
	waitGets(t, other, "streams", 2)
	put := make(chan error, 1)
	go func() { _, err := c.Put(ctx, "streams", []any{3}, wire.PutOptions{}); put <- err }()
	select {
	case err := <-put:
		t.Fatalf("third call while two are in progress: %v; want it to wait", err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := other.Put(ctx, "streams", []any{4}, wire.PutOptions{}); err != nil { // ends one get
		t.Fatal(err)
	}
	if err := <-put; err != nil {
		t.Fatalf("third call once a slot freed: %v", err)
	}
	wg.Wait()

	// Two gets given up here go on at the master until their wait ends:
	// the client's next call waits for them too, and is not refused.
	gctx, giveUp := context.WithCancel(ctx)
	for range 2 {
		wg.Go(func() {
			_, _ = c.Get(gctx, "streams", wire.GetOptions{Timeout: time.Second, NoAck: true})
		})
	}
	waitGets(t, other, "streams", 2)
	giveUp()
	wg.Wait()
	if _, err := c.Put(ctx, "streams", []any{5}, wire.PutOptions{}); err != nil {
		t.Fatalf("put after two gets were given up: %v", err)
	}
	waitMetric(t, url, "qm_refusals_total", 1, "limit", "max_streams") // none more
}

// waitGets waits until queue q has n gets waiting.
func waitGets(t *testing.T, c *wire.Client, q string, n int) {
	t.Helper()
	qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		st, err := c.Stats(context.Background(), q)
		if err != nil || len(st) != 1 || st[0].Consumers != n {
			return fmt.Errorf("stats %+v, %v; want %d waiting gets", st, err, n)
		}
		return nil
	})
}

func TestMaxMemory(t *testing.T) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	limit := int64(ms.HeapAlloc) + 48<<20
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxMemory: limit})
	producer := qmtest.Dial(t, addr, "producer")
	worker := qmtest.Dial(t, addr, "worker")
	ctx := ctxFor(t, 60*time.Second)

	payload := make([]byte, 1<<20)
	var err error
	puts := 0
	for ; puts < 500; puts++ {
		if _, err = producer.Put(ctx, "mem", []any{payload}, wire.PutOptions{}); err != nil {
			break
		}
	}
	if !errors.Is(err, wire.ErrMasterFull) || !strings.Contains(err.Error(), "master full: memory limit reached") {
		t.Fatalf("after %d puts of 1 MiB with --max-memory %d MiB: %v, want ErrMasterFull", puts, limit>>20, err)
	}
	t.Logf("after %d puts of 1 MiB: client error: %v", puts, err)

	// Gets and acks still work, and free the memory.
	for {
		tasks, err := worker.Get(ctx, "mem", wire.GetOptions{Max: 16})
		if err != nil {
			t.Fatalf("get while full: %v", err)
		}
		if len(tasks) == 0 {
			break
		}
		ids := make([]uint64, len(tasks))
		for i, task := range tasks {
			ids[i] = task.ID
		}
		if err := worker.Ack(ctx, "mem", ids...); err != nil {
			t.Fatalf("ack while full: %v", err)
		}
	}
	// With no collection of the test's own: an idle master's garbage
	// would wait two minutes for one.
	qmtest.CheckFor(t, 5*time.Second, 20*time.Millisecond, func() error {
		_, err := producer.Put(ctx, "mem", []any{"small"}, wire.PutOptions{})
		return err
	})
	v, _ := metricValue(scrape(t, url, string(qmtest.Authkey)), "qm_refusals_total", "limit", "max_memory")
	if v < 1 {
		t.Errorf("qm_refusals_total{limit=max_memory} = %v, want >= 1", v)
	}
}

// TestOversizedPutFailsAtOnce: a client learns the master's message limit
// when it says hello, so a put over it fails at once with a coded error
// that names both sizes, and the client goes on working.
func TestOversizedPutFailsAtOnce(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxMessageSize: 1 << 20})
	c := qmtest.Dial(t, addr, "producer")
	ctx := ctxFor(t, 10*time.Second)
	start := time.Now()
	_, err := c.Put(ctx, "tasks", []any{make([]byte, 2<<20)}, wire.PutOptions{})
	if !errors.Is(err, wire.ErrMessageTooLarge) || !strings.Contains(err.Error(), "message too large (2.0 MiB > 1 MiB)") {
		t.Fatalf("a 2 MiB put to a 1 MiB master: %v; want message too large (2.0 MiB > 1 MiB)", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the refusal took %s", d)
	}
	if _, err := c.Put(ctx, "tasks", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatalf("a small put after the refusal: %v", err)
	}
}

// TestHalfSentFrameEnds: a call whose frame stops arriving half sent has
// its stream closed after FrameStallTimeout, which frees what it had; a
// stream waiting for its next call is left alone.
func TestHalfSentFrameEnds(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{FrameStallTimeout: 300 * time.Millisecond})
	sess, _ := rawSession(t, addr)
	idle, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	half, err := sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	// A header claiming 8 MiB, and 64 KiB of it.
	if _, err := half.Write(append([]byte{0, 0x80, 0, 0}, make([]byte, 64<<10)...)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_ = half.SetReadDeadline(start.Add(10 * time.Second))
	if n, err := half.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the half-sent call's stream: read %d, %v; want EOF as the master closes it", n, err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("closed after %s, before the stall timeout", d)
	}
	// The idle stream, older than the stall timeout, still serves.
	codec := wire.NewCodec(idle, 1<<20)
	if err := codec.Write(&wire.Request{Op: wire.OpPut, Queue: "q", Items: []msgpack.RawMessage{{0x01}}}); err != nil {
		t.Fatal(err)
	}
	var resp wire.Response
	if err := codec.Read(&resp); err != nil || resp.Code != wire.CodeOK {
		t.Fatalf("a put on the idle stream: %+v, %v", resp, err)
	}
}

// TestRefusedStreamsLeftOpenEndTheConnection: a client that keeps
// opening streams past --max-streams and never closes those refused has
// its connection closed, rather than the master holding what it sent on
// each until the streams time out.
func TestRefusedStreamsLeftOpenEndTheConnection(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxStreams: 2})
	other := qmtest.Dial(t, addr, "producer")
	sess, _ := rawSession(t, addr)
	for i := range 2 { // the cap, in progress
		stream, err := sess.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		if err := wire.NewCodec(stream, 1<<20).Write(&wire.Request{Op: wire.OpGet, Queue: "streams", Timeout: time.Minute, NoAck: true}); err != nil {
			t.Fatal(i, err)
		}
	}
	waitGets(t, other, "streams", 2)
	for i := 0; ; i++ {
		stream, err := sess.OpenStream()
		if err == nil {
			_, err = stream.Write([]byte{0, 0, 1, 0}) // never completed, never closed
		}
		if err != nil || sess.IsClosed() {
			break
		}
		if i == 100 {
			t.Fatal("100 refused streams left open, and the connection still stands")
		}
		// Each refusal is read before the next stream opens, so that
		// the count the master sees is known.
		_ = stream.SetReadDeadline(time.Now().Add(5 * time.Second))
		var resp wire.Response
		if err := wire.NewCodec(stream, 1<<20).Read(&resp); err != nil {
			break // the connection closed
		}
		if resp.Code != wire.CodeTooManyStreams {
			t.Fatalf("stream %d: %+v", i+3, resp)
		}
	}
	select {
	case <-sess.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not closed")
	}
	if _, err := other.Put(context.Background(), "streams", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatalf("another client after: %v", err)
	}
}
