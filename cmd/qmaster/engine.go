package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/store/seglog"
)

// engineOptions choose where the queues live beyond this process: a NATS
// JetStream cluster reached as a gateway (--nats), or a JetStream node
// embedded in this qmaster (--cluster-listen), one of several peers.
type engineOptions struct {
	NATS          string
	ClusterListen string
	ClusterPeers  []string
	NodeName      string
	NATSListen    string
	// ClusterKeyFile holds the secret of the cluster's routes and NATS
	// clients, where no authkey gives it (--acl).
	ClusterKeyFile string
	Replicas       int
	Pack           int
	PackSpan       time.Duration
}

func addEngineFlags(cmd *cobra.Command, o *engineOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.NATS, "nats", "", "serve the queues of a NATS JetStream cluster at these `URLs` (comma-separated), as one of any number of stateless gateways; credentials in a URL, or else the authkey's")
	fl.StringVar(&o.ClusterListen, "cluster-listen", "", "embed a JetStream node listening for its peers at `host:port`, keeping the queues in --data-dir, replicated on --cluster-peers")
	fl.StringSliceVar(&o.ClusterPeers, "cluster-peers", nil, "with --cluster-listen, every node's cluster `address`, this one's included (e.g. m1:6222,m2:6222,m3:6222)")
	fl.StringVar(&o.NodeName, "node-name", "", "with --cluster-listen, this node's name in the cluster; names must differ (default: its --cluster-listen address, or with no host in it, this machine's host name and that port)")
	fl.StringVar(&o.NATSListen, "nats-listen", "", "with --cluster-listen, also accept NATS clients, such as qmaster --nats gateways, at `host:port` (they authenticate with the secret of the authkey, or of --cluster-key-file)")
	fl.StringVar(&o.ClusterKeyFile, "cluster-key-file", "", "read the secret every node and gateway of the cluster shares from `file` (their routes and --nats-listen need it): required with --acl and --cluster-listen; without it the secret derives from the authkey, and with it from the file alone")
	fl.IntVar(&o.Replicas, "replicas", 0, "copies of each queue kept by the JetStream cluster (default: 3, or the number of nodes if fewer)")
	fl.IntVar(&o.Pack, "pack", 0, fmt.Sprintf("with --nats or --cluster-listen, store up to `N` tasks of one put (or results of one completion) in one JetStream message, 1 (off) to %d: far fewer JetStream writes (see docs/SCALING.md); 0 means the default, %d", jsqueue.MaxPack, defaultPack))
	fl.DurationVar(&o.PackSpan, "pack-span", jsqueue.DefaultPackSpan, "with packing, make no pack bigger than the gateways handing out the queue's tasks took in this `duration` lately, so that a pack's tasks do not wait in a gateway with few workers; 0 keeps every pack at --pack")
}

func (o *engineOptions) enabled() bool { return o.NATS != "" || o.ClusterListen != "" }

// defaultPack is --pack's default: as many tasks as a batched worker
// takes at once (qworker --concurrency 32), so that a pack is one get.
const defaultPack = 32

// pack is the pack size in effect.
func (o *engineOptions) pack() int {
	if o.Pack == 0 {
		return defaultPack
	}
	return o.Pack
}

func (o *engineOptions) validate(s *serveOptions) error {
	switch {
	case o.NATS != "" && o.ClusterListen != "":
		return usageErrorf("--nats and --cluster-listen do not go together: a qmaster is either a gateway to a cluster or one of its nodes")
	case o.NATS != "" && s.DataDir != "":
		return usageErrorf("--data-dir does not go with --nats: the JetStream cluster keeps the tasks")
	case o.ClusterListen != "" && s.DataDir == "":
		return usageErrorf("--cluster-listen needs --data-dir, where this node keeps its share of the queues")
	case o.ClusterListen != "" && len(o.ClusterPeers) == 0:
		return usageErrorf("--cluster-listen needs --cluster-peers: every node's cluster address, this one's included")
	case o.ClusterListen == "" && (len(o.ClusterPeers) > 0 || o.NodeName != "" || o.NATSListen != ""):
		return usageErrorf("--cluster-peers, --node-name and --nats-listen go with --cluster-listen")
	case o.ClusterKeyFile != "" && !o.enabled():
		return usageErrorf("--cluster-key-file goes with --cluster-listen or --nats")
	case o.ClusterKeyFile != "" && hasUserInfo(o.NATS):
		return usageErrorf("--nats URLs with credentials and --cluster-key-file do not go together: give one")
	case o.ClusterListen != "" && s.ACL != "" && o.ClusterKeyFile == "":
		// Without it the routes between nodes would be open: anyone
		// reaching a node's cluster port could join and read every queue.
		return usageErrorf("--acl with --cluster-listen needs --cluster-key-file: a secret every node shares, for the routes between them (with --authkey it derives from the authkey)")
	case o.Replicas < 0 || o.Replicas > 5:
		return usageErrorf("--replicas must be between 1 and 5 (JetStream's limit)")
	case o.Replicas > 0 && !o.enabled():
		return usageErrorf("--replicas goes with --nats or --cluster-listen")
	case o.Pack < 0 || o.Pack > jsqueue.MaxPack:
		return usageErrorf("--pack must be between 1 and %d", jsqueue.MaxPack)
	case o.Pack > 1 && !o.enabled():
		return usageErrorf("--pack goes with --nats or --cluster-listen")
	case o.PackSpan < 0:
		return usageErrorf("--pack-span must be >= 0")
	}
	if o.ClusterListen != "" && o.Replicas > len(o.ClusterPeers) {
		return usageErrorf("--replicas %d is more than the %d nodes of --cluster-peers", o.Replicas, len(o.ClusterPeers))
	}
	if o.ClusterListen != "" {
		return checkPeers(o.ClusterListen, o.ClusterPeers)
	}
	return nil
}

// checkPeers refuses a peer list that names a node twice, or that cannot
// name this node (no peer has its --cluster-listen port): such a cluster
// never has the majority it waits for, and said only that it waited.
func checkPeers(listen string, peers []string) error {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return usageErrorf("--cluster-listen %s: %v", listen, err)
	}
	seen := make(map[string]bool, len(peers))
	ours := false
	for _, p := range peers {
		_, pport, err := net.SplitHostPort(p)
		if err != nil {
			return usageErrorf("--cluster-peers: %s: %v", p, err)
		}
		if seen[p] {
			return usageErrorf("--cluster-peers names %s twice: list every node once", p)
		}
		seen[p] = true
		ours = ours || pport == port
	}
	if !ours {
		return usageErrorf("--cluster-peers must name this node too (no peer has --cluster-listen's port %s)", port)
	}
	return nil
}

// engine is the JetStream the queues live in, once opened.
type engine struct {
	nc       *nats.Conn
	node     *jsqueue.Node // nil for a gateway
	replicas int
	pack     int
	packSpan time.Duration
	note     string // for the listening line
	log      *slog.Logger
	// lock holds the data directory of the node embedded here, if any.
	lock io.Closer
}

// openEngine connects to the cluster, or starts this qmaster's node, and
// waits until JetStream is ready.
func (o *engineOptions) open(ctx context.Context, s *serveOptions, authkey []byte, log *slog.Logger) (*engine, error) {
	if o.ClusterKeyFile != "" {
		key, err := auth.LoadKey("", o.ClusterKeyFile, nil)
		if err != nil {
			return nil, fmt.Errorf("--cluster-key-file: %w", err)
		}
		authkey = key
	}
	secret := jsqueue.SecretFromAuthkey(authkey)
	e := &engine{pack: o.pack(), packSpan: o.PackSpan, log: log}
	if e.packSpan == 0 {
		e.packSpan = -1 // jsqueue's "fixed packs"
	}
	if o.NATS != "" {
		nopts := []nats.Option{nats.Name("qmaster gateway"), nats.MaxReconnects(-1)}
		if secret != "" && !hasUserInfo(o.NATS) {
			nopts = append(nopts, nats.Token(secret))
		}
		nc, err := nats.Connect(o.NATS, nopts...)
		if errors.Is(err, nats.ErrAuthorization) && !hasUserInfo(o.NATS) {
			return nil, fmt.Errorf("--nats %s: %w (the nodes' secret derives from their --authkey, or their --cluster-key-file: give this gateway the same)", o.NATS, err)
		}
		if err != nil {
			return nil, fmt.Errorf("--nats %s: %w", o.NATS, err)
		}
		e.nc = nc
		e.replicas = o.Replicas
		if e.replicas == 0 && nc.ConnectedClusterName() != "" {
			// A cluster: three copies, as the embedded nodes keep. (A
			// cluster of fewer than three nodes needs --replicas.)
			e.replicas = 3
		} else if e.replicas == 0 {
			e.replicas = 1
		}
		e.note = "in JetStream at " + o.NATS
	} else {
		fsync, interval, _ := seglog.ParseFsync(s.Fsync) // checked by validate
		if err := os.MkdirAll(s.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("--data-dir: %w", err)
		}
		// As a lone master's: a second qmaster on the directory, node or
		// master, would write its JetStream files under the first's.
		lock, err := store.LockDir(s.DataDir)
		if err != nil {
			return nil, err
		}
		e.lock = lock
		node, err := jsqueue.StartNode(jsqueue.NodeConfig{
			DataDir:       filepath.Join(s.DataDir, "jetstream"),
			ClusterListen: o.ClusterListen,
			Peers:         o.ClusterPeers,
			Name:          o.NodeName,
			ClientListen:  o.NATSListen,
			Secret:        secret,
			SyncAlways:    fsync == seglog.FsyncAlways,
			SyncInterval:  interval,
			Logger:        log,
		})
		if err != nil {
			lock.Close()
			return nil, err
		}
		nc, err := node.Connect()
		if err != nil {
			node.Shutdown()
			lock.Close()
			return nil, err
		}
		e.nc, e.node = nc, node
		if len(o.ClusterPeers) == 2 {
			log.Warn("a cluster of two nodes stops when either does (a majority of two is both); three survive the loss of one", "peers", strings.Join(o.ClusterPeers, ","))
		}
		e.replicas = o.Replicas
		if e.replicas == 0 {
			e.replicas = node.Replicas()
		}
		e.note = fmt.Sprintf("in the JetStream node %s embedded here, data in %s, cluster %s", node.Name(), s.DataDir, strings.Join(o.ClusterPeers, ","))
	}
	log.Info("waiting for JetStream", "replicas", e.replicas)
	wait := jsqueue.WaitReady
	if e.node != nil {
		wait = e.node.WaitReady // says why the cluster cannot form, if it knows
	}
	if err := wait(ctx, e.nc, log); err != nil {
		e.close()
		return nil, err
	}
	e.note += fmt.Sprintf(" (%d replicas)", e.replicas)
	return e, nil
}

// openQueues is master.Config.OpenQueues for the engine.
func (e *engine) openQueues(log *slog.Logger) func(queue.Config) (master.Queues, error) {
	return func(qc queue.Config) (master.Queues, error) {
		return jsqueue.New(jsqueue.Config{
			Conn:            e.nc,
			Replicas:        e.replicas,
			MaxAttempts:     qc.MaxAttempts,
			RetryBackoffMin: qc.RetryBackoffMin,
			RetryBackoffMax: qc.RetryBackoffMax,
			MaxLen:          qc.MaxLen,
			DefaultLease:    qc.DefaultLease,
			DedupWindow:     qc.DedupWindow,
			// A dead gateway's tasks come back after the default lease,
			// as a dead worker's do.
			AckWait:  qc.DefaultLease,
			OnDead:   qc.OnDead,
			Pack:     e.pack,
			PackSpan: e.packSpan,
			Logger:   log,
			Writable: e.writable(),
		})
	}
}

// collectors are the engine's metrics: whether the node embedded here,
// if any, stores.
func (e *engine) collectors() []prometheus.Collector {
	if e.node == nil {
		return nil
	}
	return []prometheus.Collector{prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "qm_jetstream_node_storing",
		Help: "1 while the JetStream node embedded in this qmaster stores; 0 from when its store broke (its disk full) until it starts JetStream again, once its data directory has room, and in a cluster until its replicas have caught up again.",
	}, func() float64 {
		if e.node.Storing() {
			return 1
		}
		return 0
	})}
}

// writable is jsqueue.Config.Writable: the embedded node's, if any.
func (e *engine) writable() func() error {
	if e.node == nil {
		return nil
	}
	return e.node.Writable
}

// gatewayName is master.Config.GatewayName: the name of the node
// embedded here, if any.
func (e *engine) gatewayName() string {
	if e.node == nil {
		return ""
	}
	return e.node.Name()
}

// current is master.Config.Current: whether the embedded node, if any, is
// current with its cluster, and that no node of it is refused for its
// authkey or name (jsqueue.Node.Trouble): a node that did not join leaves
// the others fewer to lose, and a name twice makes two nodes of one
// identity. A gateway has no node of its own to wait for.
func (e *engine) current() func() error {
	if e.node == nil {
		return nil
	}
	return func() error {
		err, why := e.node.Current(), e.node.Trouble()
		switch {
		case why == nil:
			return err
		case err == nil:
			return why
		}
		return fmt.Errorf("%w; %w", err, why)
	}
}

// handOverFor bounds the hand-over of a stopping node's leaderships; it
// takes one round trip per stream or consumer, unless a peer is down.
const handOverFor = 5 * time.Second

// handOver moves the leaderships of the embedded node, if any, to the
// other nodes, before the gateway hands its tasks back (see
// jsqueue.Node.HandOver), within handOverFor and half of what is left of
// ctx: the gateway's shutdown has the rest.
func (e *engine) handOver(ctx context.Context) {
	if e.node == nil {
		return
	}
	budget := handOverFor
	if deadline, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(deadline)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	start := time.Now()
	if err := e.node.HandOver(ctx); err != nil {
		e.log.Warn("leaderships not all handed over to the other nodes; theirs wait for an election", "err", err)
		return
	}
	e.log.Info("leaderships handed over to the other nodes", "took", time.Since(start).Round(time.Millisecond))
}

func (e *engine) close() {
	e.nc.Close()
	if e.node != nil {
		e.node.Shutdown()
	}
	if e.lock != nil {
		e.lock.Close() // once the node has stopped writing
	}
}

func hasUserInfo(urls string) bool {
	for _, s := range strings.Split(urls, ",") {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil && u.User != nil {
			return true
		}
	}
	return false
}
