package master

import (
	"errors"
	"fmt"
	"net"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/wire"
)

// Reasons a connection is refused before it is served, as counted in
// qm_handshake_failures_total.
var (
	errUnauthLimit   = errors.New("too many connections waiting to authenticate")
	errAuthFailLimit = errors.New("too many failed authentications from this address")
	errMaxConns      = errors.New("too many connections")
	errTLS           = errors.New("tls handshake failed")
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

func (s *Server) refusal(conn net.Conn, now time.Time) error {
	ip := remoteIP(conn)
	if left, first := s.authFails.blocked(ip, now); left > 0 {
		if first {
			s.log.Warn("refusing connections from an address after too many failed authentications",
				"remote", ip, "for", left.Round(time.Second), "limit", s.cfg.AuthFailLimit)
		}
		return fmt.Errorf("%w; try again in %s", errAuthFailLimit, left.Round(time.Second))
	}
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
	_ = conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_ = auth.Refuse(conn, reason.Error())
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

// failTracker counts failed authentications per remote address in fixed
// windows; an address that reaches the limit is refused until its window
// ends. It remembers at most maxTrackedAddrs addresses: when full it
// forgets expired windows first, then arbitrary ones.
type failTracker struct {
	limit  int
	window time.Duration

	mu    sync.Mutex
	addrs map[string]*failWindow
}

type failWindow struct {
	start  time.Time
	fails  int
	logged bool // the refusal of this window was logged
}

func newFailTracker(limit int, window time.Duration) *failTracker {
	return &failTracker{limit: limit, window: window, addrs: make(map[string]*failWindow)}
}

// blocked returns how long ip is still refused (0: it is not), and
// whether this is the first refusal of its window.
func (f *failTracker) blocked(ip string, now time.Time) (left time.Duration, first bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.addrs[ip]
	if w == nil || w.fails < f.limit {
		return 0, false
	}
	left = w.start.Add(f.window).Sub(now)
	if left <= 0 {
		delete(f.addrs, ip)
		return 0, false
	}
	first = !w.logged
	w.logged = true
	return left, first
}

// fail counts a failed authentication from ip.
func (f *failTracker) fail(ip string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.addrs[ip]
	if w != nil && now.Sub(w.start) >= f.window {
		w = nil
	}
	if w == nil {
		if len(f.addrs) >= maxTrackedAddrs {
			f.evict(now)
		}
		w = &failWindow{start: now}
		f.addrs[ip] = w
	}
	w.fails++
}

func (f *failTracker) evict(now time.Time) {
	for ip, w := range f.addrs {
		if now.Sub(w.start) >= f.window {
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

	mu     sync.Mutex
	sample []rtmetrics.Sample
}

func newMemGauge(limit int64) *memGauge {
	return &memGauge{
		limit:  uint64(max(limit, 0)),
		sample: []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}},
	}
}

// check returns an error wrapping wire.ErrMasterFull if the heap is above
// the limit.
func (m *memGauge) check(now time.Time) error {
	if m.limit == 0 {
		return nil
	}
	if now.UnixNano()-m.read.Load() >= int64(heapRefresh) && m.mu.TryLock() {
		rtmetrics.Read(m.sample)
		m.heap.Store(m.sample[0].Value.Uint64())
		m.read.Store(now.UnixNano())
		m.mu.Unlock()
	}
	if heap := m.heap.Load(); heap > m.limit {
		return fmt.Errorf("%w: memory limit reached (heap %d MiB, --max-memory %d MiB); get or purge tasks first",
			wire.ErrMasterFull, heap>>20, m.limit>>20)
	}
	return nil
}
