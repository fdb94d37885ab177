package wire

import (
	"context"
	"errors"
	"net"
	"reflect"
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	lookup := func(_ context.Context, host string) ([]string, error) {
		if host == "gw.test" {
			return []string{"10.0.0.1", "10.0.0.2", "fd00::3"}, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	targets, errs := resolve(context.Background(), lookup, []string{"gw.test:5000", "127.0.0.1:5001", "[::1]:5002", "nosuch.test:5003", "noport"})
	want := []dialTarget{
		{name: "gw.test:5000", addr: "10.0.0.1:5000", shares: 3},
		{name: "gw.test:5000", addr: "10.0.0.2:5000", shares: 3},
		{name: "gw.test:5000", addr: "[fd00::3]:5000", shares: 3},
		{name: "127.0.0.1:5001", addr: "127.0.0.1:5001"},
		{name: "[::1]:5002", addr: "[::1]:5002"},
		{name: "noport", addr: "noport"}, // net.Dial's error will say what is wrong
	}
	if !reflect.DeepEqual(targets, want) {
		t.Errorf("targets %+v\nwant %+v", targets, want)
	}
	var dnsErr *net.DNSError
	if len(errs) != 1 || !errors.As(errs[0], &dnsErr) || dnsErr.Name != "nosuch.test" {
		t.Errorf("errors %v, want one lookup error for nosuch.test", errs)
	}
}

// A name with several addresses is that many masters, counted as hosts
// have them: a host's IPv4 and IPv6 addresses are one master, and so are
// its loopback ones, so that a producer given localhost or a dual-stack
// name of one master does not reconnect as if to a cluster.
func TestMasters(t *testing.T) {
	lookup := func(_ context.Context, host string) ([]string, error) {
		switch host {
		case "gw.test":
			return []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}, nil
		case "dual.test": // three gateways, each with an A and an AAAA record
			return []string{"10.0.0.1", "fd00::1", "10.0.0.2", "fd00::2", "10.0.0.3", "fd00::3"}, nil
		case "one.test": // one master, dual-stack
			return []string{"10.0.0.1", "fd00::1"}, nil
		case "localhost":
			return []string{"127.0.0.1", "::1"}, nil
		case "self.test": // a machine's own name: loopback and its LAN address
			return []string{"127.0.1.1", "10.0.0.9", "::1"}, nil
		case "twice.test":
			return []string{"10.0.0.1", "10.0.0.1"}, nil
		case "empty.test":
			return nil, nil
		}
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	masters := func(addr string) int {
		targets, errs := resolve(context.Background(), lookup, SplitAddrs(addr))
		return countMasters(targets, errs)
	}
	for _, tc := range []struct {
		addr string
		want int
	}{
		{"127.0.0.1:5000", 1},
		{"127.0.0.1:5000,127.0.0.1:5001", 2},
		{"[::1]:5000", 1},
		{"gw.test:5000", 3},
		{"dual.test:5000", 3},
		{"one.test:5000", 1},
		{"localhost:5000", 1},
		{"self.test:5000", 1},
		{"twice.test:5000", 1},
		{"empty.test:5000", 1},
		{"nosuch.test:5000", 1},
		{"localhost:5000, gw.test:5000,,", 4},
		{"", 0},
	} {
		if got := masters(tc.addr); got != tc.want {
			t.Errorf("Masters(%q) = %d, want %d", tc.addr, got, tc.want)
		}
	}
}

func TestConnectTimeout(t *testing.T) {
	for _, tc := range []struct {
		shares      int
		dialTimeout time.Duration
		want        time.Duration
	}{
		{0, 5 * time.Second, 5 * time.Second}, // an address as given: all of it
		{1, 5 * time.Second, 5 * time.Second},
		{2, 5 * time.Second, 2500 * time.Millisecond},
		{5, 5 * time.Second, 2 * time.Second},  // at least 2s each
		{3, time.Second, time.Second},          // never more than the whole
		{2, 10 * time.Second, 5 * time.Second}, // a share of a longer one
	} {
		if got := (dialTarget{shares: tc.shares}).connectTimeout(tc.dialTimeout); got != tc.want {
			t.Errorf("%d shares of %v: %v, want %v", tc.shares, tc.dialTimeout, got, tc.want)
		}
	}
}

// A Client not made by Dial fails its calls, and a nil one closes, rather
// than panic.
func TestClientNotDialled(t *testing.T) {
	var zero Client
	if _, err := zero.Get(context.Background(), "q", GetOptions{}); !errors.Is(err, ErrClosed) {
		t.Errorf("get on a zero Client: %v, want ErrClosed", err)
	}
	if err := zero.Close(); err != nil {
		t.Errorf("close of a zero Client: %v", err)
	}
	var none *Client
	if err := none.Close(); err != nil {
		t.Errorf("close of a nil Client: %v", err)
	}
}
