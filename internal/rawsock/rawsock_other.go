//go:build !linux

package rawsock

import "net"

// Wrap returns conn: raw socket calls are used on Linux only.
func Wrap(conn net.Conn) net.Conn { return conn }
