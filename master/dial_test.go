package master_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// TestDialNameOfSeveralMasters: a host name with several addresses counts
// as that many masters. Clients given the name spread over all of them,
// and move on to the next when one is gone. Two masters listen on one
// port, at 127.0.0.1 and at ::1, and the name resolves to both.
func TestDialNameOfSeveralMasters(t *testing.T) {
	ln4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln4.Addr().String())
	ln6, err := net.Listen("tcp", net.JoinHostPort("::1", port))
	if err != nil {
		ln4.Close()
		t.Skipf("no IPv6 loopback at the same port: %v", err)
	}
	_, srv4 := qmtest.StartMasterOn(t, master.Config{}, ln4)
	qmtest.StartMasterOn(t, master.Config{}, ln6)

	lookups := 0
	lookup := func(_ context.Context, host string) ([]string, error) {
		lookups++
		switch host {
		case "gateways.test":
			return []string{"127.0.0.1", "::1"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	// dialVia connects through addr and says which master took the
	// client: its address as the master sees it is IPv4 or IPv6.
	dialVia := func(addr string, i int) (string, error) {
		ctx := ctxFor(t, 10*time.Second)
		name := fmt.Sprintf("%s-%d", t.Name(), i)
		c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: qmtest.Authkey, Role: "admin", Name: name, LookupHost: lookup})
		if err != nil {
			return "", err
		}
		defer c.Close()
		cs, err := c.Clients(ctx)
		if err != nil {
			return "", err
		}
		for _, ci := range cs {
			if ci.Name == name {
				if strings.HasPrefix(ci.Addr, "[::1]") {
					return "::1", nil
				}
				return "127.0.0.1", nil
			}
		}
		return "", fmt.Errorf("client %s not in its master's list %+v", name, cs)
	}

	seen := map[string]int{}
	for i := range 40 {
		where, err := dialVia("gateways.test:"+port, i)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		seen[where]++
	}
	if seen["127.0.0.1"] == 0 || seen["::1"] == 0 {
		t.Errorf("40 clients given one name of two masters went to %v; want both", seen)
	}
	if lookups != 40 {
		t.Errorf("%d lookups for 40 dials, want one each (a name may move)", lookups)
	}

	// A name that does not resolve is skipped, as an address that does
	// not answer is; the error of the last, if all fail, names both.
	if _, err := dialVia("nosuch.test:"+port+",gateways.test:"+port, 100); err != nil {
		t.Errorf("dial with one name unknown: %v", err)
	}
	_, err = dialVia("nosuch.test:"+port, 101)
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !strings.Contains(err.Error(), "nosuch.test:"+port) {
		t.Errorf("dial of an unknown name: %v, want a DNS error naming it", err)
	}

	// One master gone: every client lands on the other.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv4.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		where, err := dialVia("gateways.test:"+port, 200+i)
		if err != nil {
			t.Fatalf("dial %d with 127.0.0.1 gone: %v", i, err)
		}
		if where != "::1" {
			t.Fatalf("dial %d with 127.0.0.1 gone landed at %s", i, where)
		}
	}
}
