package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
)

// startMismatched starts the nodes of cfgs, each logging at debug level
// to its own buffer, without waiting for JetStream: set up unlike each
// other, they never form a cluster.
func startMismatched(t *testing.T, cfgs []jsqueue.NodeConfig) ([]*jsqueue.Node, []*logBuffer) {
	t.Helper()
	nodes := make([]*jsqueue.Node, len(cfgs))
	logs := make([]*logBuffer, len(cfgs))
	for i, cfg := range cfgs {
		logs[i] = &logBuffer{}
		cfg.Logger = slog.New(slog.NewTextHandler(logs[i], &slog.HandlerOptions{Level: slog.LevelDebug}))
		n, err := jsqueue.StartNode(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Shutdown)
		nodes[i] = n
	}
	return nodes, logs
}

// troubleSays waits until n's Trouble says want, and nats-server's own
// line behind it has come at least thrice (the reason said once all the
// same); it returns the reason.
func troubleSays(t *testing.T, n *jsqueue.Node, logs *logBuffer, want, raw string) error {
	t.Helper()
	var why error
	qmtest.CheckFor(t, 15*time.Second, 50*time.Millisecond, func() error {
		if why = n.Trouble(); why == nil || !strings.Contains(why.Error(), want) {
			return fmt.Errorf("Trouble() = %v; want %q", why, want)
		}
		if c := strings.Count(logs.String(), raw); c < 3 {
			return fmt.Errorf("nats-server said %q %d times; want 3 at least", raw, c)
		}
		return nil
	})
	out := logs.String()
	if c := strings.Count(out, "level=ERROR msg=\""+want); c != 1 {
		t.Errorf("the reason logged %d times at error level; want once:\n%s", c, out)
	}
	for line := range strings.Lines(out) {
		if strings.Contains(line, raw) && !strings.Contains(line, "level=DEBUG") {
			t.Errorf("nats-server's line not at debug level: %s", line)
		}
	}
	return why
}

// A node whose authkey differs from its peers' hears from each that it
// refused its route, and says so in qm's words, once; so do they.
func TestNodeTroubleAuthkeysDiffer(t *testing.T) {
	cfgs := clusterConfigs(t, 2)
	cfgs[1].Secret = jsqueue.SecretFromAuthkey([]byte("another key"))
	nodes, logs := startMismatched(t, cfgs)
	for i, n := range nodes {
		peer := cfgs[1-i].ClusterListen
		want := "cluster peer " + peer + " refused this node's route: the nodes' keys differ (--authkey, or --cluster-key-file)"
		why := troubleSays(t, n, logs[i], want, "Authorization Violation")
		t.Logf("n%d: %v", i, why)
	}
	// The refusals each gives say it too: once, from one host, however
	// many ports the peer's routes came from.
	for i, l := range logs {
		out := l.String()
		// Once every 30 s: once, or twice on a slow run.
		if c := strings.Count(out, `level=ERROR msg="a connection from 127.0.0.1 was refused: its key differs`); c < 1 || c > 2 {
			t.Errorf("n%d said %d times that it refused the other; want once:\n%s", i, c, out)
		}
		for line := range strings.Lines(out) {
			if strings.Contains(line, "authentication error") && !strings.Contains(line, "level=DEBUG") {
				t.Errorf("nats-server's line not at debug level: %s", line)
			}
		}
	}
	// WaitReady's error says it too.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := nodes[1].WaitReady(ctx, connect(t, nodes[1]), nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "the nodes' keys differ") {
		t.Fatalf("WaitReady: %v; want the deadline, and that the authkeys differ", err)
	}
}

// Two nodes of the same name refuse each other, and say so.
func TestNodeTroubleSameName(t *testing.T) {
	cfgs := clusterConfigs(t, 2)
	cfgs[1].Name = cfgs[0].Name
	nodes, logs := startMismatched(t, cfgs)
	for i, n := range nodes {
		want := "another node of the cluster is named " + cfgs[0].Name + ": every node's name must differ"
		why := troubleSays(t, n, logs[i], want, "duplicate name")
		t.Logf("n%d: %v", i, why)
	}
}

// Nodes set up alike have no trouble to tell.
func TestNodeTroubleNone(t *testing.T) {
	for i, n := range startClusterOf(t, 2) {
		if why := n.Trouble(); why != nil {
			t.Errorf("node %d: Trouble() = %v; want nil", i, why)
		}
	}
}
