// Package qmtest starts real masters on loopback for tests.
package qmtest

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/freeport"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// Authkey is the key test masters use unless a test sets its own.
var Authkey = []byte("qm-test-key")

// StartMaster starts a master on 127.0.0.1:0 and returns its address and
// the server. The listener is open before it returns, so no readiness
// polling is needed. Cleanup shuts the master down and waits for it.
// An empty cfg.Authkey (without InsecureNoAuth or an ACL) means Authkey.
func StartMaster(t testing.TB, cfg master.Config) (string, *master.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	return StartMasterOn(t, cfg, ln)
}

// StartMasterOn is StartMaster on a listener of the caller's; the master
// closes it.
func StartMasterOn(t testing.TB, cfg master.Config, ln net.Listener) (string, *master.Server) {
	t.Helper()
	if len(cfg.Authkey) == 0 && cfg.ACL == nil && !cfg.InsecureNoAuth {
		cfg.Authkey = Authkey
	}
	srv, err := master.New(cfg)
	if err != nil {
		ln.Close()
		t.Fatalf("master.New: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("master shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, master.ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ln.Addr().String(), srv
}

// Dial connects a client with Authkey to addr and closes it at cleanup.
func Dial(t testing.TB, addr string, role string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: Authkey, Role: role, Name: t.Name()})
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// CheckFor calls f until it returns nil or total has passed, then fails
// the test with f's last error.
func CheckFor(t testing.TB, total, every time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", total, err)
		}
		time.Sleep(every)
	}
}

// FreeAddrs returns n loopback addresses free at the moment, for servers
// that must know each other's addresses before they start (the nodes of
// a cluster), below the kernel's ephemeral range (package freeport), so
// that no connection takes one meanwhile. A test that picks the same
// port at the same moment could; the server that then fails to bind
// says so.
func FreeAddrs(t testing.TB, n int) []string {
	t.Helper()
	addrs := make([]string, 0, n)
	for len(addrs) < n {
		addr, err := freeport.Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(addrs, addr) {
			addrs = append(addrs, addr)
		}
	}
	return addrs
}
