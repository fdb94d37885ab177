package master

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"runtime"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/rawsock"
	"github.com/qm-dev/qm/wire"
)

// Reasons a connection is refused before it is served, as counted in
// qm_handshake_failures_total.
var (
	errUnauthLimit = errors.New("too many connections waiting to authenticate")
	errMaxConns    = errors.New("too many connections")
	errTLS         = errors.New("tls handshake failed")
)

// admit decides, at accept and before any goroutine is started for it,
// whether conn may try to authenticate. If not, it counts and logs the
// refusal, tells the client why and closes conn, and returns the reason.
func (s *Server) admit(conn net.Conn, now time.Time) error {
	err := s.refusal(conn, now)
	if err != nil {
		s.metrics.handshakeFailed(err) // before the client can see it
		s.refuse(conn, err)
		conn.Close()
	}
	return err
}

// refusal says why conn may not try to authenticate now, or nil. An
// address is never refused for its failed authentications: a client
// there may hold a valid key (behind a NAT, or on a host of many
// workers), so failures are slowed down instead (slowFailure).
func (s *Server) refusal(conn net.Conn, now time.Time) error {
	if s.unauth.Load() >= int64(s.cfg.MaxUnauthConns) {
		if s.unauthLog.ok(now) {
			s.log.Warn("too many connections waiting to authenticate; new ones are closed at once (logged at most once a second)",
				"max_unauth_conns", s.cfg.MaxUnauthConns, "remote", conn.RemoteAddr().String())
		}
		return fmt.Errorf("%w; try again later", errUnauthLimit)
	}
	return nil
}

// refuse tells a native or Python client why its new connection is
// refused, when that costs no more than one small write to an empty
// socket: over TLS, or to a client that expects no challenge, the
// connection is just closed.
func (s *Server) refuse(conn net.Conn, reason error) {
	if s.cfg.TLS != nil || s.cfg.InsecureNoAuth {
		return
	}
	var msg bytes.Buffer
	_ = auth.Refuse(&msg, reason.Error())
	rawsock.TryWrite(conn, msg.Bytes())
}

func remoteIP(conn net.Conn) string {
	addr := conn.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// logEvery lets a message through at most once per period, so that a
// flood of refusals cannot flood the log.
type logEvery struct {
	period time.Duration
	last   atomic.Int64 // unix nanoseconds
}

func (l *logEvery) ok(now time.Time) bool {
	last := l.last.Load()
	return now.UnixNano()-last >= int64(l.period) && l.last.CompareAndSwap(last, now.UnixNano())
}

// maxTrackedAddrs bounds the addresses failTracker remembers.
const maxTrackedAddrs = 10000

// maxFailDelayShift caps the doubling of the failure delay (2^10 times
// the base), well past any handshake timeout.
const maxFailDelayShift = 10

// failTracker counts failed authentications per remote address in fixed
// windows. Past the limit, each further failure of the window is
// answered after a delay that doubles with each one, from base up to
// maxDelay; while it waits, the connection keeps its place among the
// --max-unauth-conns, so a guesser's pace is bounded by those places and
// the delay. One address may hold at most maxHeld of them in delays, so
// that its failures never fill every place and lock out a client with a
// valid key at the same address; its failures beyond that are answered
// at once. It remembers at most maxTrackedAddrs addresses: when full it
// forgets expired windows first, then arbitrary ones.
type failTracker struct {
	limit    int
	window   time.Duration
	base     time.Duration
	maxDelay time.Duration
	maxHeld  int

	mu    sync.Mutex
	addrs map[string]*failWindow
}

type failWindow struct {
	start  time.Time
	fails  int
	held   int  // connections of this address waiting out a delay
	logged bool // the slowing down of this window was logged
}

func newFailTracker(cfg *Config) *failTracker {
	return &failTracker{
		limit:    cfg.AuthFailLimit,
		window:   cfg.AuthFailWindow,
		base:     cfg.AuthFailDelay,
		maxDelay: cfg.HandshakeTimeout / 2, // the reply still makes it before the deadline
		maxHeld:  max(1, cfg.MaxUnauthConns/2),
		addrs:    make(map[string]*failWindow),
	}
}

// fail counts a failed authentication from ip and returns how long to
// wait before answering it (0: at once), and whether this is the first
// delay of the window. A positive delay holds one of ip's places until
// release(ip).
func (f *failTracker) fail(ip string, now time.Time) (delay time.Duration, first bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.addrs[ip]
	if w != nil && now.Sub(w.start) >= f.window {
		// A new window; delays of the old one still hold their places.
		w.start, w.fails, w.logged = now, 0, false
	}
	if w == nil {
		if len(f.addrs) >= maxTrackedAddrs {
			f.evict(now)
		}
		w = &failWindow{start: now}
		f.addrs[ip] = w
	}
	w.fails++
	over := w.fails - f.limit
	if over <= 0 || w.held >= f.maxHeld {
		return 0, false
	}
	delay = min(f.base<<min(over-1, maxFailDelayShift), f.maxDelay)
	w.held++
	first = !w.logged
	w.logged = true
	return delay, first
}

// saturated reports whether ip, past its limit in this window, holds as
// many delays as it may.
func (f *failTracker) saturated(ip string, now time.Time) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.addrs[ip]
	return w != nil && now.Sub(w.start) < f.window && w.fails > f.limit && w.held >= f.maxHeld
}

// release gives back the place a delay of ip held.
func (f *failTracker) release(ip string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w := f.addrs[ip]; w != nil && w.held > 0 {
		w.held--
	}
}

func (f *failTracker) evict(now time.Time) {
	for ip, w := range f.addrs {
		if now.Sub(w.start) >= f.window && w.held == 0 {
			delete(f.addrs, ip)
		}
	}
	for ip := range f.addrs { // still full: forget arbitrary addresses
		if len(f.addrs) < maxTrackedAddrs*9/10 {
			break
		}
		delete(f.addrs, ip)
	}
}

// httpThrottle slows the guessing of keys through the HTTP endpoints as
// the queue port does (--auth-fail-limit), with failures of its own: a
// request presenting a wrong key past the limit is answered after the
// growing delay, and one from an address that holds its share of delays
// is refused unchecked. The HTTP server has no --max-unauth-conns to
// bound a guesser's places, hence the refusal.
type httpThrottle struct {
	s     *Server
	fails *failTracker
}

func (t httpThrottle) Failed(ip string) (time.Duration, func()) {
	t.s.metrics.httpAuthFail.Inc()
	delay, first := t.fails.fail(ip, time.Now())
	if delay <= 0 {
		return 0, nil
	}
	if first {
		t.s.log.Warn("failed HTTP authentications from an address past the limit; answering its further failures after a growing delay",
			"remote", ip, "limit", t.s.cfg.AuthFailLimit, "delay", delay)
	}
	return delay, func() { t.fails.release(ip) }
}

func (t httpThrottle) Saturated(ip string) bool {
	if !t.fails.saturated(ip, time.Now()) {
		return false
	}
	t.s.metrics.httpAuthFail.Inc() // refused unchecked: counted as failed
	return true
}

// slowFailure runs before a client of c is told that it failed to
// authenticate: it counts the failure and, past --auth-fail-limit, waits
// (see failTracker), unless the master stops first.
func (c *clientConn) slowFailure() {
	ip := remoteIP(c.conn)
	delay, first := c.s.authFails.fail(ip, time.Now())
	if delay <= 0 {
		return
	}
	defer c.s.authFails.release(ip)
	if first {
		c.s.log.Warn("failed authentications from an address past the limit; answering its further failures after a growing delay",
			"remote", ip, "limit", c.s.cfg.AuthFailLimit, "delay", delay)
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.ctx.Done():
	}
}

// heapRefresh is how stale the heap figure a put is checked against may be.
const heapRefresh = 10 * time.Millisecond

// memGauge compares the master's heap with MaxMemory. The heap is read
// from runtime/metrics (no stop-the-world, unlike runtime.ReadMemStats)
// at most once per heapRefresh, by whichever put comes first; other puts
// compare with the last figure.
type memGauge struct {
	limit uint64 // 0: no limit

	read atomic.Int64  // unix nanoseconds of the last read
	heap atomic.Uint64 // bytes in heap objects at the last read

	nextGC atomic.Int64 // unix nanoseconds from which check may force a collection again

	mu     sync.Mutex
	sample []rtmetrics.Sample
	gcWait time.Duration // between forced collections, while they leave the heap full; under mu
}

func newMemGauge(limit int64) *memGauge {
	return &memGauge{
		limit:  uint64(max(limit, 0)),
		sample: []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}},
	}
}

// A master whose heap is above its limit forces a collection to see
// whether it really is, forcedGCMin after the last one; while the heap
// stays full, the wait doubles (and is at least ten times what the last
// collection took) up to forcedGCMax, so that a master that is full
// does not spend its CPU collecting.
const (
	forcedGCMin = time.Second
	forcedGCMax = 16 * time.Second
)

// readHeap reads the heap's size at now, keeps it for check, and returns
// it. Called with mu held.
func (m *memGauge) readHeap(now time.Time) uint64 {
	rtmetrics.Read(m.sample)
	heap := m.sample[0].Value.Uint64()
	m.heap.Store(heap)
	m.read.Store(now.UnixNano())
	return heap
}

// check returns an error wrapping wire.ErrMasterFull if the heap is above
// the limit, after collecting its garbage (at most every forcedGCMin).
func (m *memGauge) check(now time.Time) error {
	if m.limit == 0 {
		return nil
	}
	if now.UnixNano()-m.read.Load() >= int64(heapRefresh) && m.mu.TryLock() {
		if m.readHeap(now) <= m.limit {
			m.gcWait = 0 // the next time the heap is full starts at forcedGCMin again
		}
		m.mu.Unlock()
	}
	if m.heap.Load() > m.limit && now.UnixNano() >= m.nextGC.Load() && m.mu.TryLock() {
		// The figure counts garbage not collected yet. A master whose
		// tasks were all taken allocates next to nothing, so no
		// collection would come to free it (Go forces one every two
		// minutes), and every put meanwhile would be refused.
		if now.UnixNano() >= m.nextGC.Load() {
			start := time.Now()
			runtime.GC()
			done := time.Now()
			if m.readHeap(done) > m.limit {
				m.gcWait = min(max(2*m.gcWait, 10*done.Sub(start), forcedGCMin), forcedGCMax)
			} else {
				m.gcWait = forcedGCMin
			}
			m.nextGC.Store(done.Add(m.gcWait).UnixNano())
		}
		m.mu.Unlock()
	}
	if heap := m.heap.Load(); heap > m.limit {
		return fmt.Errorf("%w: memory limit reached (heap %d MiB, --max-memory %d MiB); get or purge tasks first",
			wire.ErrMasterFull, heap>>20, m.limit>>20)
	}
	return nil
}
