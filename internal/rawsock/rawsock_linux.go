package rawsock

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawConn reads and writes a TCP socket with raw system calls, bypassing
// the runtime's syscall bookkeeping. The socket is non-blocking, so a call
// never blocks: when it would, the callback reports false and the runtime
// parks the goroutine on its network poller, as for any net.Conn.
//
// Why: every ordinary syscall enters the runtime's syscall state, and the
// first one after the process went idle wakes the sysmon thread from its
// deep sleep. On a queue serving one message at a time that is a second
// thread woken, usually on the other CPU, for every message, besides the
// one the network woke (docs/PERFORMANCE.md, "Why raw calls"). A raw call
// keeps the P and wakes nobody.
type rawConn struct {
	*net.TCPConn
	raw syscall.RawConn

	// Read state, under rmu: like any net.Conn, it may be used by several
	// goroutines at once.
	rmu    sync.Mutex
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(fd uintptr) bool

	// Write state, under wmu.
	wmu     sync.Mutex
	wiov    [2]syscall.Iovec
	wvecs   []syscall.Iovec // the unwritten part of wiov
	wleft   int
	werr    error
	writeFn func(fd uintptr) bool
}

// Wrap returns a conn doing raw reads and writes on conn's socket when conn
// is a *net.TCPConn, and conn itself otherwise. The conn it returns writes
// two buffers in one system call with WritePair.
func Wrap(conn net.Conn) net.Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return conn
	}
	s := &rawConn{TCPConn: tc, raw: raw}
	s.readFn = s.readOnce
	s.writeFn = s.writeOnce
	return s
}

func (s *rawConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rbuf, s.rn, s.rerr = p, 0, nil
	err := s.raw.Read(s.readFn)
	s.rbuf = nil
	raceAcquire()
	if err != nil {
		return 0, s.opError("read", err)
	}
	if s.rerr != nil {
		return s.rn, s.rerr
	}
	return s.rn, nil
}

func (s *rawConn) readOnce(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rbuf[0])), uintptr(len(s.rbuf)))
		switch errno {
		case 0:
			if n == 0 {
				s.rerr = io.EOF
			}
			s.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			s.rerr = s.opError("read", os.NewSyscallError("read", errno))
			return true
		}
	}
}

func (s *rawConn) Write(p []byte) (int, error) {
	return s.WritePair(p, nil)
}

// WritePair writes a and then b, in one system call where it can.
func (s *rawConn) WritePair(a, b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wvecs = s.wiov[:0]
	for _, p := range [2][]byte{a, b} {
		if len(p) > 0 {
			v := syscall.Iovec{Base: &p[0]}
			v.SetLen(len(p))
			s.wvecs = append(s.wvecs, v)
		}
	}
	total := len(a) + len(b)
	if total == 0 {
		return 0, nil
	}
	s.wleft, s.werr = total, nil
	raceRelease()
	err := s.raw.Write(s.writeFn)
	s.wiov, s.wvecs = [2]syscall.Iovec{}, nil // drop references to the caller's buffers
	if err != nil {
		return total - s.wleft, s.opError("write", err)
	}
	if s.werr != nil {
		return total - s.wleft, s.werr
	}
	return total, nil
}

func (s *rawConn) writeOnce(fd uintptr) bool {
	for s.wleft > 0 {
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&s.wvecs[0])), uintptr(len(s.wvecs)))
		switch errno {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			s.werr = s.opError("write", os.NewSyscallError("writev", errno))
			return true
		}
		s.wleft -= int(n)
		s.advance(int(n))
	}
	return true
}

// advance drops the first n written bytes from wvecs.
func (s *rawConn) advance(n int) {
	for n > 0 && len(s.wvecs) > 0 {
		v := &s.wvecs[0]
		if l := int(v.Len); n >= l {
			n -= l
			s.wvecs = s.wvecs[1:]
			continue
		}
		v.Base = (*byte)(unsafe.Add(unsafe.Pointer(v.Base), n))
		v.SetLen(int(v.Len) - n)
		n = 0
	}
}

func (s *rawConn) opError(op string, err error) error {
	if _, ok := err.(*net.OpError); ok {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}

// TryWrite makes one attempt to write b to conn's socket and never waits:
// what the socket cannot take at once is dropped, and so is the error. It
// is for a few bytes to a new connection, whose empty send buffer takes
// them whole, from a loop that must not stall on one client (a refusal
// from the accept loop). A write deadline cannot promise that: one set
// just before the write has often passed by the time the write starts on
// a busy machine, and then the write is not even tried.
func TryWrite(conn net.Conn, b []byte) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		tryWriteWithDeadline(conn, b)
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Write(func(fd uintptr) bool {
		_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
		return true // written or not: done
	})
}
