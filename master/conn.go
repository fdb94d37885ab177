package master

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/master/pymanager"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// clientConn is one client's connection: the handshake, then a yamux
// session whose streams each carry a sequence of calls.
type clientConn struct {
	s     *Server
	conn  net.Conn
	id    uint64
	addr  string
	since time.Time

	// ctx ends when the connection does, so blocked gets of a vanished
	// client stop waiting.
	ctx    context.Context
	cancel context.CancelFunc

	lastSeen atomic.Int64 // unix nanoseconds of the last request
	active   atomic.Int64 // calls being handled now
	streams  sync.WaitGroup
	open     atomic.Int64 // streams being served, against MaxStreams
	counted  bool         // holds a place in Server.authed
	// key is the key the client proved, swapped by SetACL; nil without
	// authentication.
	key atomic.Pointer[acl.Key]

	// calls are the calls in progress on the connection's streams, by
	// stream, which may be waiting (wait.go): gets for tasks, puts for
	// room.
	waitMu sync.Mutex
	calls  map[uint32]*streamCall

	// ledger counts what the session wrote for each stream (set with
	// the session, before any stream is served).
	ledger *wire.SendLedger

	mu         sync.Mutex
	sess       *yamux.Session
	role, name string
	closed     bool
}

func newClientConn(s *Server, conn net.Conn) *clientConn {
	ctx, cancel := context.WithCancel(s.ctx)
	c := &clientConn{
		s:      s,
		conn:   conn,
		id:     s.nextClientID.Add(1),
		addr:   conn.RemoteAddr().String(),
		since:  time.Now(),
		ctx:    ctx,
		cancel: cancel,
	}
	c.lastSeen.Store(c.since.UnixNano())
	return c
}

// serve runs the connection to its end and then requeues the client's
// leases.
func (c *clientConn) serve() {
	defer c.s.removeConn(c)
	defer c.close()
	log := c.s.log.With("remote", c.addr)
	sess, pyFirst, err := c.handshake()
	c.s.unauth.Add(-1)
	if c.counted {
		defer c.s.authed.Add(-1)
	}
	if err == nil && sess == nil {
		c.s.py.Serve(pyClient{c}, pyFirst)
		return
	}
	if err != nil {
		c.conn.Close()
		switch {
		case errors.Is(err, auth.ErrAuthFailed):
			log.Warn("authentication failed", "err", err)
		case errors.Is(err, errMaxConns):
			if c.s.fullLog.ok(time.Now()) {
				log.Warn("too many connections; new ones are refused (logged at most once a second)", "max_conns", c.s.cfg.MaxConns)
			}
		case errors.Is(err, errTLS):
			log.Warn("TLS handshake failed", "err", err)
		case sentNoAuthkey(err):
			log.Warn("handshake failed: the client sent no authkey (it runs with --insecure-no-auth, or an empty key); this master requires one", "err", err)
		case errors.Is(err, io.EOF):
			log.Debug("client left during handshake")
		default:
			log.Warn("handshake failed", "err", err)
		}
		c.s.metrics.handshakeFailed(err)
		return
	}
	c.mu.Lock()
	closed := c.closed
	c.sess = sess
	c.mu.Unlock()
	if closed { // the server shut down during the handshake
		sess.Close()
		return
	}
	log.Debug("client connected", "client", c.id)

	for {
		stream, err := sess.AcceptStream()
		if err != nil {
			break
		}
		if c.open.Load() >= int64(c.s.cfg.MaxStreams) {
			if sess.NumStreams() > 2*c.s.cfg.MaxStreams {
				// As many refused streams again as it may use, still
				// open: a client that reads its refusals closes them.
				// One that does not makes the master keep what it sent
				// on each (up to a window) until StreamCloseTimeout.
				log.Warn("client keeps opening streams past --max-streams without closing those refused; connection closed",
					"client", c.id, "max_streams", c.s.cfg.MaxStreams)
				stream.Close()
				break
			}
			c.refuseStream(stream)
			continue
		}
		c.open.Add(1)
		c.streams.Add(1)
		if !c.s.goRun(func() { defer c.streams.Done(); defer c.open.Add(-1); c.serveStream(stream) }) {
			// The master is stopping: refuse this call alone, so that the
			// calls in progress on other streams are still answered.
			c.streams.Done()
			c.open.Add(-1)
			c.refuse(stream, wire.ErrShuttingDown)
		}
	}
	c.close()
	c.streams.Wait()
	if c.s.isClosing() && c.s.cfg.OpenQueues == nil {
		// The master stops, not the client: its tasks go back as not
		// delivered, their attempts unused, so that restarting a master
		// (an upgrade) does not dead-letter long tasks.
		if n := c.s.giveBackLeases(c.id); n > 0 {
			log.Info("master stopping; the client's leased tasks given back, their attempts unused", "client", c.id, "tasks", n)
		}
	} else if n := c.s.queues.Release(c.id); n > 0 {
		log.Info("client gone; its leased tasks requeued", "client", c.id, "tasks", n)
	}
	log.Debug("client disconnected", "client", c.id, "role", c.currentRole())
}

// handshake authenticates the client and reads its preamble, all within
// the handshake deadline, and starts the yamux session. A client whose
// first bytes after authentication are not the native preamble is taken
// for a Python manager client: handshake then returns no session and
// those bytes, the header of its first frame.
func (c *clientConn) handshake() (*yamux.Session, []byte, error) {
	timeout := c.s.cfg.HandshakeTimeout
	if c.s.cfg.TLS != nil {
		tc := tls.Server(c.conn, c.s.cfg.TLS)
		c.mu.Lock()
		c.conn = tc
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.ctx, timeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", errTLS, err)
		}
	}
	if rules := c.s.access.rules.Load(); rules != nil {
		i, err := auth.ServerKeys(c.conn, auth.ServerConfig{Keys: rules.Secrets(), Timeout: timeout, BeforeFailure: c.slowFailure})
		if err != nil {
			return nil, nil, err
		}
		if name := rules.Keys()[i].Name; !c.bindKey(name) {
			return nil, nil, fmt.Errorf("%w: key %s was removed during the handshake", auth.ErrAuthFailed, name)
		}
	}
	if err := c.conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, err
	}
	p := make([]byte, wire.PreambleLen)
	if _, err := io.ReadFull(c.conn, p); err != nil {
		return nil, nil, err
	}
	native := string(p[:len(wire.Magic)]) == wire.Magic
	if c.s.authed.Add(1) > int64(c.s.cfg.MaxConns) {
		c.s.authed.Add(-1)
		if native {
			_ = wire.RefusePreamble(c.conn)
		} else {
			c.refusePython(p)
		}
		return nil, nil, errMaxConns
	}
	c.counted = true
	if !native {
		return nil, p, c.conn.SetDeadline(time.Time{})
	}
	if err := wire.CheckPreamble(c.conn, p); err != nil {
		return nil, nil, err
	}
	if err := c.conn.SetDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	sess, ledger, err := wire.ServerSession(c.conn, c.s.cfg.KeepAliveInterval)
	c.ledger = ledger
	return sess, nil, err
}

// refuseStream answers the first call of a stream beyond MaxStreams with
// wire.ErrTooManyStreams.
func (c *clientConn) refuseStream(stream *yamux.Stream) {
	now := time.Now()
	c.s.metrics.refused("max_streams")
	if c.s.limitLog.ok(now) {
		c.s.log.Warn("too many calls in progress on one connection; call refused (logged at most once a second)",
			"remote", c.addr, "client", c.id, "max_streams", c.s.cfg.MaxStreams)
	}
	c.refuse(stream, fmt.Errorf("%w: more than %d in progress (--max-streams)", wire.ErrTooManyStreams, c.s.cfg.MaxStreams))
}

// refuse answers the first call of a new stream with err, without
// reading it, and closes the stream. It runs on the session's accept
// loop: a new stream has its whole window, so the small write does not
// block (and is bounded by a deadline).
func (c *clientConn) refuse(stream *yamux.Stream, err error) {
	_ = stream.SetWriteDeadline(time.Now().Add(time.Second))
	_ = wire.NewCodec(stream, c.s.cfg.MaxMessageSize).Write(closingResponse(err))
	stream.Close()
}

// stallReader reads a stream for its codec, and bounds how long a frame
// whose first byte came may wait for the next ones: a client that sends
// part of a large frame and stops would otherwise hold the memory given
// to it for as long as its connection lives. A stream waiting for its
// next call has no deadline.
type stallReader struct {
	stream  *yamux.Stream
	stall   time.Duration
	inFrame bool      // a frame's first byte came (Codec.OnFrame) and it is not read yet
	renew   time.Time // when the deadline set is to be pushed on; zero: none is set
}

func (r *stallReader) Read(p []byte) (int, error) {
	if r.inFrame {
		// Pushed on at most every stallRenewal, not at every read: yamux
		// allocates for each deadline set.
		if now := time.Now(); now.After(r.renew) {
			_ = r.stream.SetReadDeadline(now.Add(r.stall))
			r.renew = now.Add(min(stallRenewal, r.stall/4))
		}
	}
	return r.stream.Read(p)
}

// frameRead is called once the codec has read a frame, or failed to.
func (r *stallReader) frameRead() {
	r.inFrame = false
	if !r.renew.IsZero() {
		r.renew = time.Time{}
		_ = r.stream.SetReadDeadline(time.Time{})
	}
}

// stallRenewal is how often, at most, a frame still arriving has its
// deadline pushed on: it then ends between FrameStallTimeout less this
// and FrameStallTimeout after its last byte.
const stallRenewal = time.Second

// closingResponse is errorResponse for a call whose stream the master
// closes after answering it.
func closingResponse(err error) *wire.Response {
	resp := errorResponse(err)
	resp.StreamClosed = true
	return resp
}

// serveStream answers the calls on one stream in order until the client
// closes it. A frame that is read whole but fails to decode, or one over
// the size limit that the codec read and dropped, gets an error reply and
// the stream goes on; anything else ends the stream.
func (c *clientConn) serveStream(stream *yamux.Stream) {
	defer stream.Close()
	id := stream.StreamID()
	c.ledger.Track(id)
	defer c.ledger.Untrack(id)
	c.openStream(id) // wait.go
	defer c.closeStream(id)
	in := &stallReader{stream: stream, stall: c.s.cfg.FrameStallTimeout}
	codec := wire.NewCodec(struct {
		io.Reader
		io.Writer
	}{in, stream}, c.s.cfg.MaxMessageSize)
	// Gets and completes are read into one buffer, reused: what they
	// carry is copied out (a complete's values into its results) before
	// they are answered. A put's items stay in the queue, in their frame.
	codec.ReuseReads()
	// A call counts as active from its first byte until its response is
	// written, so that Shutdown's waitIdle never misses one half read.
	inCall := false
	codec.OnFrame(func() { c.active.Add(1); inCall = true; in.inFrame = true })
	defer func() {
		if inCall {
			c.active.Add(-1)
		}
	}()
	// What gets and completes (of a request and of its Then) are built
	// from, in buffers reused from call to call on this stream.
	var bufs [2]callBuffers
	for {
		var req wire.Request
		err := codec.Read(&req)
		in.frameRead()
		if err == nil && keepsFrame(&req) {
			codec.Keep()
		}
		if errors.Is(err, yamux.ErrTimeout) {
			if c.s.limitLog.ok(time.Now()) {
				c.s.log.Warn("a call's message stopped arriving half sent; its stream closed (logged at most once a second)",
					"remote", c.addr, "client", c.id, "stalled_for", c.s.cfg.FrameStallTimeout)
			}
			return
		}
		var tooLarge *wire.TooLargeError
		if errors.As(err, &tooLarge) {
			err = fmt.Errorf("%w (the master's --max-message-size)", err)
			if !tooLarge.Skipped {
				c.s.log.Warn("message too large; stream closed", "remote", c.addr, "err", err)
				_ = codec.Write(closingResponse(err))
				return
			}
			c.s.log.Warn("message too large; refused", "remote", c.addr, "err", err)
		} else if err != nil && !errors.Is(err, wire.ErrBadRequest) {
			return
		}
		start := time.Now()
		c.lastSeen.Store(start.UnixNano())
		var resp *wire.Response
		op := req.Op
		if err != nil {
			resp = errorResponse(err)
		} else {
			resp = c.handle(&req, id, &bufs[0])
			// A chained request runs only if the first succeeded; the
			// decoder allows no Then of a Then. Each is timed on its own.
			if req.Then != nil && resp.Code == wire.CodeOK {
				c.s.metrics.chained.Inc()
				c.s.metrics.observe(op, start)
				start, op = time.Now(), req.Then.Op
				resp.Then = c.handle(req.Then, id, &bufs[1])
			}
		}
		mark := c.ledger.Handed(id)
		werr := codec.Write(resp)
		var tooLargeResp *wire.TooLargeError
		if errors.As(werr, &tooLargeResp) {
			// Nothing was written: the client still waits for an answer.
			// (A get's response is cut to fit; this is what else grew.)
			c.s.log.Warn("response too large; an error sent instead", "remote", c.addr, "op", req.Op, "err", werr)
			if err := codec.Write(errorResponse(fmt.Errorf("the master's response: %w (the master's --max-message-size)", werr))); err != nil {
				werr = err
			}
		}
		// The ledger would measure the error's frame, not the response's:
		// a response too large was never written, whatever came after.
		if werr != nil && (tooLargeResp != nil || !c.wroteAnyway(werr, id, mark, codec.LastWriteSize())) {
			for r, p := &req, resp; r != nil && p != nil; r, p = r.Then, p.Then {
				if r.Op == wire.OpGet && len(p.Tasks) > 0 {
					c.returnUndelivered(stream, r, p.Tasks)
				}
			}
		} else if c.s.confirmer != nil {
			for r, p := &req, resp; r != nil && p != nil; r, p = r.Then, p.Then {
				if r.Op == wire.OpGet && r.NoAck && len(p.Tasks) > 0 {
					c.s.confirmer.Delivered(getRequest(c.id, r), queueTasks(p.Tasks))
				}
			}
		}
		bufs[0].reset()
		bufs[1].reset()
		c.s.metrics.observe(op, start)
		c.active.Add(-1)
		inCall = false
	}
}

// keepsFrame reports whether req, or its Then, may keep slices of the
// frame it was read from beyond its answer: all but the calls of the hot
// path known not to (a complete's values are copied into its results).
func keepsFrame(req *wire.Request) bool {
	for r := req; r != nil; r = r.Then {
		switch r.Op {
		case wire.OpGet, wire.OpComplete, wire.OpAck, wire.OpNack, wire.OpExtend:
		default:
			return true
		}
	}
	return false
}

// wroteAnyway reports whether a Write on stream id that failed with err
// had its size bytes written all the same, after mark (the ledger's
// Handed before it): yamux reports a write as failed when the session
// shuts down while the writer waits, even if its send loop had written
// it. The shutdown closes the connection, so a write under way ends at
// once.
func (c *clientConn) wroteAnyway(err error, id uint32, mark uint64, size int) bool {
	return errors.Is(err, yamux.ErrSessionShutdown) && c.ledger.Written(id) >= mark+uint64(size)
}

// returnUndelivered puts back tasks whose get reply could not be written.
// A write that failed although the session had written the reply (yamux
// reports one when the session shuts down at that moment, as when a
// client reads its answer and hangs up) is found by the ledger and counts
// as written: the reply reached the socket. Any other failed write may
// still have sent part of it, so a task taken for good is put back (a
// duplicate beats a loss), and a leased one is handed back only while the
// session lives; if it died, the connection's release requeues it with
// the attempt counted.
func (c *clientConn) returnUndelivered(stream *yamux.Stream, req *wire.Request, ts []wire.Task) {
	if req.NoAck || !stream.Session().IsClosed() {
		c.s.queues.Unget(getRequest(c.id, req), queueTasks(ts))
	}
}

// goAway tells the client to open no new streams.
func (c *clientConn) goAway() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil && !c.closed {
		_ = c.sess.GoAway()
	}
}

// waitIdle waits until no call of this client is being handled, or ctx ends.
func (c *clientConn) waitIdle(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for c.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

func (c *clientConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.cancel()
	if c.sess != nil {
		c.sess.Close()
	}
	c.conn.Close()
}

func (c *clientConn) setIdentity(role, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.role, c.name = role, name
}

func (c *clientConn) currentRole() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.role
}

func (c *clientConn) info() (wire.ClientInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.sess == nil && c.role != pymanager.Role {
		return wire.ClientInfo{}, false
	}
	return wire.ClientInfo{
		ID:       c.id,
		Addr:     c.addr,
		Role:     c.role,
		Name:     c.name,
		Key:      c.keyName(),
		LastSeen: time.Unix(0, c.lastSeen.Load()),
		Since:    c.since,
	}, true
}

// sentNoAuthkey reports whether err is a handshake's read of the client's
// answer to the challenge that found a native client's preamble instead:
// the client did not authenticate at all.
func sentNoAuthkey(err error) bool {
	var tl *pyproto.TooLargeError
	return errors.As(err, &tl) && tl.Size == uint64(binary.BigEndian.Uint32([]byte(wire.Magic+string(rune(wire.Version)))))
}

// giveBackLeases gives the tasks owner holds back to their queues as not
// delivered, the attempt of their delivery unused, where the queues can
// (queue.Manager.GiveBack), and returns how many there were.
func (s *Server) giveBackLeases(owner uint64) int {
	n := 0
	if g, ok := s.queues.(GiveBacker); ok {
		n = g.GiveBack(owner)
	}
	// Any left (taken meanwhile, the master closing as it went) are
	// released as before.
	return n + s.queues.Release(owner)
}
