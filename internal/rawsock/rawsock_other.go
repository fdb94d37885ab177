//go:build !linux

package rawsock

import "net"

// Wrap returns conn: raw socket calls are used on Linux only.
func Wrap(conn net.Conn) net.Conn { return conn }

// TryWrite writes b to conn within a short deadline, and drops the error.
func TryWrite(conn net.Conn, b []byte) { tryWriteWithDeadline(conn, b) }
