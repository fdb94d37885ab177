package jsqueue

import (
	"net"
	"os"
	"testing"
)

// A node's default name is its cluster address, or with no host in it
// the machine's: every node of an install listening on ":6222" would
// otherwise have one name, and their cluster would not form.
func TestDefaultNodeName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	for listen, want := range map[string]string{
		"10.0.0.1:6222":  "10.0.0.1:6222",
		"m1:6222":        "m1:6222",
		":6222":          net.JoinHostPort(host, "6222"),
		"0.0.0.0:6222":   net.JoinHostPort(host, "6222"),
		"[::]:6222":      net.JoinHostPort(host, "6222"),
		"127.0.0.1:6223": "127.0.0.1:6223",
	} {
		if got := defaultNodeName(listen); got != want {
			t.Errorf("defaultNodeName(%q) = %q, want %q", listen, got, want)
		}
	}
}
