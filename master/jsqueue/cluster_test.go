package jsqueue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// startCluster starts three embedded nodes that form one cluster.
func startCluster(t testing.TB) []*jsqueue.Node {
	t.Helper()
	peers := qmtest.FreeAddrs(t, 3)
	nodes := make([]*jsqueue.Node, 3)
	for i := range nodes {
		n, err := jsqueue.StartNode(jsqueue.NodeConfig{
			DataDir:       t.TempDir(),
			ClusterListen: peers[i],
			Peers:         peers,
			Name:          fmt.Sprintf("n%d", i),
			Secret:        "s3cret",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Shutdown)
		nodes[i] = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, n := range nodes {
		if err := jsqueue.WaitReady(ctx, connect(t, n), nil); err != nil {
			t.Fatal(err)
		}
	}
	return nodes
}

// streamLeader returns the name of the node that leads queue name's stream.
func streamLeader(t testing.TB, n *jsqueue.Node, name string) string {
	t.Helper()
	js, err := jetstream.New(connect(t, n))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := js.ListStreams(ctx)
	for si := range l.Info() {
		if si.Config.Metadata["qm.queue"] == name && si.Cluster != nil {
			return si.Cluster.Leader
		}
	}
	t.Fatalf("no stream for queue %s", name)
	return ""
}

func TestClusterKeepsQueuesWhenTheLeaderDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	nodes := startCluster(t)
	gw := make([]*jsqueue.Queues, 3)
	for i, n := range nodes {
		gw[i] = newQueues(t, n, jsqueue.Config{Replicas: 3})
	}
	ids := put(t, gw[0], "jobs", "1", "2", "3")
	leader := streamLeader(t, nodes[0], "jobs")
	var dead int
	fmt.Sscanf(leader, "n%d", &dead)
	gw[dead].Close()
	nodes[dead].Shutdown()
	alive := gw[(dead+1)%3]

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var more []uint64
	for {
		var err error
		more, err = alive.Put(ctx, queue.PutRequest{Queue: "jobs", Items: []queue.Item{{Payload: []byte("4")}}})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no put succeeded within 30s of the leader's loss: %v", err)
		}
	}
	t.Logf("first put after the stream leader's loss took %v", time.Since(start).Round(time.Millisecond))
	// A get takes what the consumer has at once, which need not yet
	// include a put just acknowledged by the new leader: get until four.
	var ts []queue.Task
	for len(ts) < 4 {
		more := get(t, alive, "jobs", 1, 10, 0, 10*time.Second)
		if len(more) == 0 {
			break
		}
		ts = append(ts, more...)
	}
	if got := payloads(ts); len(got) != 4 || got[0] != "1" || got[3] != "4" || ts[0].ID != ids[0] || ts[3].ID != more[0] {
		t.Fatalf("after failover got %q, want 1 2 3 4 in order with their ids", got)
	}
}
