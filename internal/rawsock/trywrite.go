package rawsock

import (
	"net"
	"time"
)

// tryWriteWithDeadline is TryWrite for a conn without a socket of its own
// (a TLS conn, a pipe): a write bounded by a short deadline.
func tryWriteWithDeadline(conn net.Conn, b []byte) {
	_ = conn.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	_, _ = conn.Write(b)
	_ = conn.SetWriteDeadline(time.Time{})
}
