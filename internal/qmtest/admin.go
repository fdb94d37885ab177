package qmtest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/qm-dev/qm/master"
)

// StartMasterHTTP is StartMaster with the operators' HTTP endpoints
// (Server.ServeAdmin) on another loopback port, whose base URL
// ("http://127.0.0.1:PORT") it also returns. Cleanup shuts the master
// down and waits for both Serve and ServeAdmin to return.
func StartMasterHTTP(t testing.TB, cfg master.Config) (addr, url string, srv *master.Server) {
	t.Helper()
	if len(cfg.Authkey) == 0 && cfg.ACL == nil && !cfg.InsecureNoAuth {
		cfg.Authkey = Authkey
	}
	srv, err := master.New(cfg)
	if err != nil {
		t.Fatalf("master.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		t.Fatalf("listen: %v", err)
	}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		srv.Close()
		t.Fatalf("listen: %v", err)
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	go func() { served <- srv.ServeAdmin(hln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("master shutdown: %v", err)
		}
		for range 2 {
			if err := <-served; !errors.Is(err, master.ErrServerClosed) {
				t.Errorf("Serve or ServeAdmin returned %v, want ErrServerClosed", err)
			}
		}
	})
	return ln.Addr().String(), "http://" + hln.Addr().String(), srv
}
