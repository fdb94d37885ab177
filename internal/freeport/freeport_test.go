package freeport

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
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

// A port picked is not picked again within claimFor, by this process or
// another (the claim is a file), and an old claim is taken anew.
func TestClaimedPortIsNotPickedAgain(t *testing.T) {
	port := lowest + 1 + int(time.Now().UnixNano()%1000)
	name := filepath.Join(os.TempDir(), "qm-freeport", strconv.Itoa(port))
	_ = os.Remove(name)
	t.Cleanup(func() { _ = os.Remove(name) })
	if !claim(port) {
		t.Fatalf("port %d unclaimed, but claim refused it", port)
	}
	if claim(port) {
		t.Fatalf("port %d claimed twice", port)
	}
	old := time.Now().Add(-claimFor - time.Second)
	if err := os.Chtimes(name, old, old); err != nil {
		t.Fatal(err)
	}
	if !claim(port) {
		t.Fatalf("an old claim of port %d was not taken anew", port)
	}
}
