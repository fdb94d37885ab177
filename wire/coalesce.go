package wire

import (
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// yamux frame header layout (hashicorp/yamux const.go): version, type,
// flags, stream ID, length.
const (
	yamuxHeaderLen = 12
	yamuxVersion   = 0
	yamuxTypeData  = 0
)

// frameCoalescer joins each yamux data frame's header and body into one
// writev. yamux's send loop writes them as two writes, so every message
// cost two syscalls and, with TCP_NODELAY, two packets. The send loop is
// the only writer of the conn after the handshake, so no lock is needed.
type frameCoalescer struct {
	net.Conn
	hdr  [yamuxHeaderLen]byte
	held int // body length the held header announces; 0 = none held
	bufs net.Buffers
	// ledger, if not nil, counts the data written for streams.
	ledger *SendLedger
}

func (c *frameCoalescer) Write(p []byte) (int, error) {
	if c.held > 0 {
		want := c.held
		c.held = 0
		if len(p) == want {
			id := binary.BigEndian.Uint32(c.hdr[4:8])
			c.ledger.begin(id, len(p))
			err := c.writePair(c.hdr[:], p)
			c.ledger.end(id, len(p), err == nil)
			if err != nil {
				return 0, err
			}
			return len(p), nil
		}
		// Not the body it announced (yamux dropped it): send the header alone.
		if _, err := c.Conn.Write(c.hdr[:]); err != nil {
			return 0, err
		}
	}
	if len(p) == yamuxHeaderLen && p[0] == yamuxVersion && p[1] == yamuxTypeData {
		if n := binary.BigEndian.Uint32(p[8:]); n > 0 {
			copy(c.hdr[:], p)
			c.held = int(n)
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// pairWriter writes two buffers in one system call (rawsock.Wrap's conns).
type pairWriter interface {
	WritePair(a, b []byte) (int, error)
}

func (c *frameCoalescer) writePair(a, b []byte) error {
	if pw, ok := c.Conn.(pairWriter); ok {
		_, err := pw.WritePair(a, b)
		return err
	}
	c.bufs = append(c.bufs[:0], a, b)
	_, err := c.bufs.WriteTo(c.Conn)
	return err
}

// clientStreamWindow is how much of a response the master may send a
// client's stream before the client has read it: two of the largest
// batches (1,000 results of 4 KiB) at once. What a client receives is
// only ever the answer to its own call, which it reads whole, so the
// window bounds nothing a client would not hold anyway. At the master's
// 1 MiB, a get of 1,000 such results (a little over 4 MiB) waited for
// a fifth window update, and qbench's 4 KiB run did 58-60k tasks/s
// against 74-77k with this (the master's peak RSS 400-450 MB against
// 120-130 MB: results waited in it meanwhile). The master keeps its own
// window at 1 MiB: that one holds producers back.
const clientStreamWindow = 8 << 20

// ClientSession starts the client side of a yamux session on an
// authenticated conn.
func ClientSession(conn net.Conn, keepAlive time.Duration) (*yamux.Session, error) {
	cfg := YamuxConfig(keepAlive)
	cfg.MaxStreamWindowSize = clientStreamWindow
	return yamux.Client(&frameCoalescer{Conn: conn}, cfg)
}

// ServerSession starts the master side of a yamux session on an
// authenticated conn, and returns it with the ledger of what it sends.
func ServerSession(conn net.Conn, keepAlive time.Duration) (*yamux.Session, *SendLedger, error) {
	ledger := newSendLedger()
	sess, err := yamux.Server(&frameCoalescer{Conn: conn, ledger: ledger}, YamuxConfig(keepAlive))
	return sess, ledger, err
}

// A SendLedger counts the data bytes a session has written to its
// connection for each stream it tracks. A stream's Write fails with
// yamux.ErrSessionShutdown when the session shuts down while the writer
// waits for the send loop, even if the send loop had written it: the
// writer's wait picks either at random. A client that reads its answer
// and hangs up at once makes that race, and a master that took the
// answer for undelivered would hand its tasks out again. The ledger
// tells it that the answer reached the socket, as a successful Write
// would have.
type SendLedger struct {
	mu      sync.Mutex
	settled sync.Cond // on mu; signalled when a write ends
	streams map[uint32]streamSends
}

// streamSends are a tracked stream's data bytes written, and being
// written now.
type streamSends struct{ sent, writing uint64 }

func newSendLedger() *SendLedger {
	l := &SendLedger{streams: make(map[uint32]streamSends)}
	l.settled.L = &l.mu
	return l
}

// Track starts counting what is sent on stream id. A nil ledger counts
// nothing.
func (l *SendLedger) Track(id uint32) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.streams[id] = streamSends{}
	l.mu.Unlock()
}

// Untrack stops counting what is sent on stream id.
func (l *SendLedger) Untrack(id uint32) {
	if l == nil {
		return
	}
	l.mu.Lock()
	delete(l.streams, id)
	l.mu.Unlock()
}

// Handed is how many data bytes of stream id have been written since
// Track, or are being written now: the mark to measure a Write's bytes
// from with Written.
func (l *SendLedger) Handed(id uint32) uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.streams[id]
	return st.sent + st.writing
}

// Written is how many data bytes were written for stream id since Track,
// once a write of its data under way has ended: the writer that was told
// of a shutdown may have been told before the send loop, preempted right
// after its system call, counted what it wrote. A write under way ends
// soon only when the connection is closed (as a session shutting down
// closes it) or the peer reads.
func (l *SendLedger) Written(id uint32) uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.streams[id].writing > 0 {
		l.settled.Wait()
	}
	return l.streams[id].sent
}

// begin notes that n data bytes of stream id are being written; end,
// that the write ended, and whether it wrote them.
func (l *SendLedger) begin(id uint32, n int) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if st, ok := l.streams[id]; ok {
		st.writing += uint64(n)
		l.streams[id] = st
	}
	l.mu.Unlock()
}

func (l *SendLedger) end(id uint32, n int, written bool) {
	if l == nil {
		return
	}
	l.mu.Lock()
	if st, ok := l.streams[id]; ok {
		st.writing -= uint64(n)
		if written {
			st.sent += uint64(n)
		}
		l.streams[id] = st
	}
	l.mu.Unlock()
	l.settled.Broadcast()
}
