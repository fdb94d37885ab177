package jsqueue

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NodeConfig configures a JetStream node embedded in qmaster.
type NodeConfig struct {
	// DataDir is where the node keeps its streams; required.
	DataDir string
	// ClusterListen is the host:port the node's cluster routes listen on;
	// empty, or a cluster of one peer, runs a single node in no cluster.
	ClusterListen string
	// Peers are the ClusterListen addresses of every node of the cluster,
	// this one included.
	Peers []string
	// Name names the node in the cluster; default its ClusterListen
	// address, or, if that has no host (":6222", "0.0.0.0:6222"), this
	// machine's host name and its port. Names must differ between nodes.
	// The data directory keeps the name the node first had, and refuses
	// another (keptNodeName).
	Name string
	// ClientListen, if set, is a host:port where other gateways (qmaster
	// --nats) and NATS tools may connect.
	ClientListen string
	// Secret protects the routes between nodes and the client port: every
	// node and gateway must have the same (qmaster derives it from the
	// authkey). Empty leaves them open.
	Secret string
	// SyncAlways fsyncs every write before JetStream acknowledges it;
	// otherwise the node fsyncs every SyncInterval (0: JetStream's default,
	// 2 minutes) and a write is safe once a majority of replicas hold it.
	SyncAlways   bool
	SyncInterval time.Duration
	// Logger receives the node's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// Node is a running embedded JetStream node.
type Node struct {
	srv    *server.Server
	secret string
	peers  int

	// The store's watch (watchStore): how to start JetStream again, what
	// the node logged, and its goroutine's end.
	dataDir  string
	jsConfig server.JetStreamConfig
	natsLog  *natsLog
	log      *slog.Logger
	// unwritable is why puts are refused, while the store cannot write.
	unwritable atomic.Pointer[error]
	broken     atomic.Bool // the store broke and JetStream waits to start again
	stop       chan struct{}
	stopOnce   sync.Once // Shutdown may be called again
	watching   sync.WaitGroup
}

// SecretFromAuthkey derives the secret of the routes and client port of
// embedded nodes from qm's authkey, so that one key opens everything.
// The authkey itself never goes over a NATS route.
func SecretFromAuthkey(authkey []byte) string {
	if len(authkey) == 0 {
		return ""
	}
	mac := hmac.New(sha256.New, authkey)
	mac.Write([]byte("qm jetstream node"))
	return hex.EncodeToString(mac.Sum(nil))
}

// StartNode starts an embedded JetStream node and waits until it accepts
// connections. In a cluster JetStream is ready only once a majority of
// the peers are up: Connect's callers wait for that (see New).
func StartNode(cfg NodeConfig) (*Node, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("a JetStream node needs a data directory")
	}
	if len(cfg.Peers) == 1 && cfg.Peers[0] == cfg.ClusterListen {
		// A cluster of one: JetStream runs it best as a single server
		// (a one-node cluster would wait for routes forever).
		cfg.ClusterListen, cfg.Peers = "", nil
	}
	opts := &server.Options{
		ServerName: cfg.Name,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
		SyncAlways: cfg.SyncAlways,
		// The largest message NATS takes before it warns (1 MiB by
		// default): a task or result of a few MiB is stored whole. Routes
		// between nodes carry any size.
		MaxPayload: server.MAX_PAYLOAD_MAX_SIZE,
	}
	if cfg.SyncInterval > 0 {
		opts.SyncInterval = cfg.SyncInterval
	}
	switch {
	case cfg.ClientListen != "":
		host, port, err := splitHostPort(cfg.ClientListen)
		if err != nil {
			return nil, fmt.Errorf("client listen address: %w", err)
		}
		opts.Host, opts.Port = host, port
		opts.Authorization = cfg.Secret
	default:
		// The gateway in this process connects through loopback: nats.go's
		// in-process connection (a net.Pipe) made each call wait on the
		// other side, 25x slower under load. (And nats-server starts its
		// routes only once its client port listens.)
		opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
		opts.Authorization = cfg.Secret
	}
	if cfg.ClusterListen != "" {
		if len(cfg.Peers) == 0 {
			return nil, errors.New("a cluster needs its peers' addresses (all of them, this node's included)")
		}
		host, port, err := splitHostPort(cfg.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("cluster listen address: %w", err)
		}
		name, err := keptNodeName(cfg)
		if err != nil {
			return nil, err
		}
		opts.ServerName = name
		opts.Cluster = server.ClusterOpts{Name: "qm", Host: host, Port: port}
		if cfg.Secret != "" {
			opts.Cluster.Username, opts.Cluster.Password = "qm", cfg.Secret
		}
		for _, p := range cfg.Peers {
			if _, _, err := splitHostPort(p); err != nil {
				return nil, fmt.Errorf("cluster peer %q: %w", p, err)
			}
			u := &url.URL{Scheme: "nats-route", Host: p}
			if cfg.Secret != "" {
				u.User = url.UserPassword("qm", cfg.Secret)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("jetstream node: %w", err)
	}
	nl := &natsLog{log: logOrDiscard(cfg.Logger)}
	srv.SetLoggerV2(nl, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("jetstream node did not start within 10s (is the cluster port free?)")
	}
	n := &Node{srv: srv, secret: cfg.Secret, peers: max(1, len(cfg.Peers)),
		dataDir: cfg.DataDir, natsLog: nl, log: logOrDiscard(cfg.Logger), stop: make(chan struct{})}
	if jc := srv.JetStreamConfig(); jc != nil {
		n.jsConfig = *jc
	}
	n.watching.Go(n.watchStore)
	return n, nil
}

// Name is the node's name in its cluster.
func (n *Node) Name() string { return n.srv.Name() }

// Replicas is how many copies of each stream the node's cluster keeps:
// three, or fewer with fewer nodes.
func (n *Node) Replicas() int { return min(3, n.peers) }

// WaitReady waits until JetStream answers on nc: in a cluster, once a
// majority of the nodes are up and have elected a leader. It logs every
// few seconds while it waits, and gives up when ctx ends.
func WaitReady(ctx context.Context, nc *nats.Conn, log *slog.Logger) error {
	return waitReady(ctx, nc, log, nil)
}

// WaitReady is WaitReady on a connection to the node: while nodes of its
// cluster cannot connect (Trouble), its warnings and its error say why.
func (n *Node) WaitReady(ctx context.Context, nc *nats.Conn, log *slog.Logger) error {
	return waitReady(ctx, nc, log, n.Trouble)
}

// waitReady is WaitReady; trouble, if not nil, says why the cluster
// cannot form, if it knows.
func waitReady(ctx context.Context, nc *nats.Conn, log *slog.Logger, trouble func() error) error {
	if trouble == nil {
		trouble = func() error { return nil }
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	log = logOrDiscard(log)
	start := time.Now()
	lastLog := start
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Since(lastLog) >= 5*time.Second {
			waited := time.Since(start).Round(time.Second)
			if why := trouble(); why != nil {
				log.Warn("waiting for JetStream: "+why.Error(), "waited", waited, "err", err)
			} else {
				log.Warn("waiting for JetStream (a majority of the cluster's nodes must be up)", "waited", waited, "err", err)
			}
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			if why := trouble(); why != nil {
				return fmt.Errorf("jetstream not ready: %w (%w; last error: %w)", ctx.Err(), why, err)
			}
			return fmt.Errorf("jetstream not ready: %w (last error: %w)", ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Connect returns a connection to the node, in process.
func (n *Node) Connect() (*nats.Conn, error) {
	// In process: no TCP for the node's own gateway, which carries every
	// payload in and out (about +15% tasks/s at 4 KiB; docs/SCALING.md).
	opts := []nats.Option{nats.Name("qmaster"), nats.MaxReconnects(-1), nats.InProcessServer(n.srv)}
	if n.secret != "" {
		opts = append(opts, nats.Token(n.secret))
	}
	return nats.Connect(n.srv.ClientURL(), opts...)
}

// Shutdown stops the node.
func (n *Node) Shutdown() {
	n.stopOnce.Do(func() { close(n.stop) })
	n.watching.Wait()
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// nodeNameFile keeps, in a node's data directory, the name the node
// first started with: JetStream knows its peers by their names' hashes,
// so a node renamed would find its cluster's groups full of a stranger
// and elect no leader.
const nodeNameFile = "qm-node-name"

// keptNodeName returns the name of the node of cfg (a node of a
// cluster): the one its data directory keeps (nodeNameFile), or, the
// first time, cfg.Name or its default (defaultNodeName), which it keeps
// there. A directory with JetStream's data and no name kept is a node's
// from before names were kept, named as it was then (cfg.Name or
// cfg.ClusterListen as given). A cfg.Name other than the kept one is
// refused.
func keptNodeName(cfg NodeConfig) (string, error) {
	path := filepath.Join(cfg.DataDir, nodeNameFile)
	b, err := os.ReadFile(path)
	if err == nil {
		kept := strings.TrimSpace(string(b))
		if cfg.Name != "" && cfg.Name != kept {
			return "", fmt.Errorf("data directory %s is node %q's, not %q: a node renamed loses its place in its cluster (start it as %q, or on an empty data directory)",
				cfg.DataDir, kept, cfg.Name, kept)
		}
		return kept, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read the node's name: %w", err)
	}
	name := cfg.Name
	if name == "" {
		name = defaultNodeName(cfg.ClusterListen)
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "jetstream")); err == nil {
			name = cfg.ClusterListen
		}
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("keep the node's name: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("keep the node's name: %w", err)
	}
	return name, nil
}

// defaultNodeName is the name of a node whose cluster routes listen on
// listen: listen itself, unless it names no host, as every node of an
// install would then take the same name, which their cluster refuses.
func defaultNodeName(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return listen
	}
	name, err := os.Hostname()
	if err != nil || name == "" {
		return listen
	}
	return net.JoinHostPort(name, port)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

func logOrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// natsLog passes the node's own log to qmaster's: its notices at debug
// level (they are many at start-up), the rest as they are, but each kind
// of warning or error (its format) at most once every repeatEvery: a
// peer that is down is otherwise reported every second. Errors that say
// why nodes of the cluster cannot connect are said in qm's words instead
// (explained).
type natsLog struct {
	log    *slog.Logger
	errors atomic.Int64 // errors logged, shown or not: the store's watch looks after one
	mu     sync.Mutex
	last   map[string]time.Time
	// troubles are the reasons nodes of the cluster cannot connect, and
	// when nats-server last gave each (explained); troubledRoutes the
	// remote addresses of the routes they were about.
	troubles       map[string]trouble
	troubledRoutes map[string]time.Time
}

const repeatEvery = 30 * time.Second

func (l *natsLog) Noticef(format string, v ...any) { l.log.Debug("nats: " + fmt.Sprintf(format, v...)) }
func (l *natsLog) Warnf(format string, v ...any)   { l.limited(slog.LevelWarn, format, v) }
func (l *natsLog) Fatalf(format string, v ...any)  { l.log.Error("nats: " + fmt.Sprintf(format, v...)) }
func (l *natsLog) Errorf(format string, v ...any) {
	l.errors.Add(1)
	if l.explained(fmt.Sprintf(format, v...)) {
		return
	}
	l.limited(slog.LevelError, format, v)
}
func (l *natsLog) Debugf(format string, v ...any) { l.log.Debug("nats: " + fmt.Sprintf(format, v...)) }
func (l *natsLog) Tracef(format string, v ...any) {}

func (l *natsLog) limited(level slog.Level, format string, v []any) {
	now := time.Now()
	l.mu.Lock()
	if l.last == nil {
		l.last = make(map[string]time.Time)
	}
	if now.Sub(l.last[format]) < repeatEvery {
		l.mu.Unlock()
		return
	}
	l.last[format] = now
	l.mu.Unlock()
	l.log.Log(context.Background(), level, "nats: "+fmt.Sprintf(format, v...))
}
