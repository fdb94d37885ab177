package wire

import (
	"encoding/binary"
	"net"
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
}

func (c *frameCoalescer) Write(p []byte) (int, error) {
	if c.held > 0 {
		want := c.held
		c.held = 0
		if len(p) == want {
			if err := c.writePair(c.hdr[:], p); err != nil {
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
// authenticated conn.
func ServerSession(conn net.Conn, keepAlive time.Duration) (*yamux.Session, error) {
	return yamux.Server(&frameCoalescer{Conn: conn}, YamuxConfig(keepAlive))
}
