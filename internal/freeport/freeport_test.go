package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestLoopbackIsBelowTheEphemeralRange: the port is free, and below the
// range the kernel gives to outgoing connections and to port 0.
func TestLoopbackIsBelowTheEphemeralRange(t *testing.T) {
	first := ephemeralStart()
	if first == 0 {
		t.Skip("no ephemeral range to read here")
	}
	for range 20 {
		addr, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		_, p, _ := net.SplitHostPort(addr)
		port, _ := strconv.Atoi(p)
		if port < lowest || port >= first {
			t.Fatalf("port %d, want %d to %d", port, lowest, first-1)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the port picked is not free: %v", err)
		}
		ln.Close()
	}
}
