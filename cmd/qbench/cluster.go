package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clusterNode is one of three qmasters the bench started, each embedding
// a node of one JetStream cluster (docs/SCALING.md), with what it takes to
// restart it as it was: the same ports and data directory.
type clusterNode struct {
	name     string // its --node-name, as JetStream reports stream leaders
	addr     string // where it serves qm clients
	natsAddr string // its --nats-listen address, or ""
	args     []string
	p        *proc
}

// clusterStartTimeout bounds how long a node may take to serve: it waits
// for a majority of the nodes, and a restarted node for its streams.
const clusterStartTimeout = 60 * time.Second

// startCluster starts three qmasters on loopback, each with a JetStream
// node keeping its queues in a new directory under dir, and waits until
// each serves. With withNATS each also takes NATS clients (for finding
// stream leaders); extra flags go to every node.
func (b *bench) startCluster(ctx context.Context, dir string, withNATS bool, extra ...string) ([]*clusterNode, error) {
	const n = 3
	ports := make([]string, 3*n)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = "127.0.0.1:" + strconv.Itoa(p)
	}
	peers := strings.Join(ports[n:2*n], ",")
	nodes := make([]*clusterNode, n)
	for i := range nodes {
		data := filepath.Join(dir, fmt.Sprintf("n%d", i))
		if err := os.MkdirAll(data, 0o700); err != nil {
			return nil, err
		}
		node := &clusterNode{name: fmt.Sprintf("n%d", i), addr: ports[i]}
		node.args = []string{filepath.Join(b.opts.Bin, "qmaster"), "--addr", node.addr, "--shutdown-timeout", "1s",
			"--data-dir", data, "--cluster-listen", ports[n+i], "--cluster-peers", peers, "--node-name", node.name}
		if withNATS {
			node.natsAddr = ports[2*n+i]
			node.args = append(node.args, "--nats-listen", node.natsAddr)
		}
		node.args = append(node.args, extra...)
		nodes[i] = node
	}
	// All three first: none serves before a majority is up.
	for _, node := range nodes {
		if err := b.startNode(node); err != nil {
			return nodes, err
		}
	}
	for _, node := range nodes {
		if err := node.waitServing(ctx); err != nil {
			return nodes, err
		}
	}
	return nodes, nil
}

// startNode starts (or restarts) node's qmaster with its arguments.
func (b *bench) startNode(node *clusterNode) error {
	p, err := b.procs.start("qmaster "+node.name, node.args, []string{"QM_AUTHKEY=" + b.key}, nil)
	if err != nil {
		return err
	}
	node.p = p
	return nil
}

// waitServing waits until node's qmaster logs that it listens.
func (node *clusterNode) waitServing(ctx context.Context) error {
	return waitFor(ctx, clusterStartTimeout, "qmaster "+node.name+" to serve", func() bool {
		return strings.Contains(node.p.stderr.String(), "msg=listening")
	}, node.p)
}

// stopNodes stops the nodes' qmasters, all at once: one by one, the last
// would wait for a majority that is gone.
func stopNodes(nodes []*clusterNode) {
	var ps []*proc
	for _, n := range nodes {
		if n != nil && n.p != nil {
			ps = append(ps, n.p)
		}
	}
	stopAll(ps)
}
