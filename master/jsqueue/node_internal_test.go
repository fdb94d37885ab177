package jsqueue

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// A node's data directory keeps the name it first had: JetStream knows
// peers by their names, and a node renamed would strand its replicas.
func TestNodeKeepsItsName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	cfg := NodeConfig{DataDir: dir, ClusterListen: ":6222"}
	for range 2 {
		if name, err := keptNodeName(cfg); err != nil || name != net.JoinHostPort(host, "6222") {
			t.Fatalf("name %q, %v; want this host's and the port", name, err)
		}
	}
	cfg.Name = "n1"
	if _, err := keptNodeName(cfg); err == nil || !strings.Contains(err.Error(), "renamed") {
		t.Fatalf("another name on a named data directory: %v, want refused", err)
	}

	// A node's data from before names were kept: named as it was then.
	old := t.TempDir()
	if err := os.Mkdir(filepath.Join(old, "jetstream"), 0o755); err != nil {
		t.Fatal(err)
	}
	if name, err := keptNodeName(NodeConfig{DataDir: old, ClusterListen: ":6223"}); err != nil || name != ":6223" {
		t.Fatalf("name %q, %v; want the old default, :6223", name, err)
	}
	if name, err := keptNodeName(NodeConfig{DataDir: old, ClusterListen: ":6223", Name: ":6223"}); err != nil || name != ":6223" {
		t.Fatalf("name %q, %v; want the kept :6223", name, err)
	}
}

// A name twice stands until the node is restarted (nats-server does not
// try that route again); other reasons for a while after the last line.
func TestTroubleStands(t *testing.T) {
	now := time.Now()
	long := now.Add(-time.Hour)
	for _, c := range []struct {
		line  string
		at    time.Time
		stand bool
	}{
		{`127.0.0.1:6223 - rid:15 - Remote server has a duplicate name: "n1"`, long, true},
		{`127.0.0.1:6223 - rid:10 - Route Error 'Authorization Violation'`, long, false},
		{`127.0.0.1:6223 - rid:10 - Route Error 'Authorization Violation'`, now.Add(-time.Second), true},
	} {
		why, _, sticky := peerTrouble(c.line)
		if why == "" {
			t.Fatalf("%q: no reason", c.line)
		}
		if got := (trouble{at: c.at, sticky: sticky}).stands(now); got != c.stand {
			t.Errorf("%q said %v ago: stands %v, want %v", c.line, now.Sub(c.at).Round(time.Second), got, c.stand)
		}
	}
}
