package jsqueue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// startNode starts a single embedded JetStream node for the test.
func startNode(t testing.TB) *jsqueue.Node {
	t.Helper()
	n, err := jsqueue.StartNode(jsqueue.NodeConfig{DataDir: t.TempDir(), Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return n
}

func connect(t testing.TB, n *jsqueue.Node) *nats.Conn {
	t.Helper()
	nc, err := n.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newQueues opens a gateway's queues over its own connection to n.
func newQueues(t testing.TB, n *jsqueue.Node, cfg jsqueue.Config) *jsqueue.Queues {
	t.Helper()
	if cfg.Conn == nil {
		cfg.Conn = connect(t, n)
	}
	q, err := jsqueue.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Close)
	return q
}

// reaping runs q's lease reaper until the test ends.
func reaping(t testing.TB, q *jsqueue.Queues) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() { defer close(stopped); q.ReapLeases(done, nil) }()
	t.Cleanup(func() { close(done); <-stopped })
}

func put(t testing.TB, q *jsqueue.Queues, name string, payloads ...string) []uint64 {
	t.Helper()
	items := make([]queue.Item, len(payloads))
	for i, p := range payloads {
		items[i] = queue.Item{Payload: []byte(p)}
	}
	ids, err := q.Put(context.Background(), queue.PutRequest{Queue: name, Items: items})
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return ids
}

// get takes up to max tasks, waiting up to wait for the first.
func get(t testing.TB, q *jsqueue.Queues, name string, owner uint64, max int, lease, wait time.Duration) []queue.Task {
	t.Helper()
	ts, err := q.Get(context.Background(), queue.GetRequest{Queue: name, Max: max, Owner: owner, Lease: lease, MaxWait: wait}, nil)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	return ts
}

func payloads(ts []queue.Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t.Payload)
	}
	return out
}
