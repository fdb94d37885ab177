package master

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store/seglog"
	"github.com/qm-dev/qm/wire"
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// Authkey is the shared secret every client must prove it knows. Empty
	// is refused unless InsecureNoAuth is set.
	Authkey []byte
	// ACL, if not nil, replaces Authkey: the keys a client may
	// authenticate with, and what each may do (see package acl). Server.SetACL
	// changes it while serving.
	ACL *acl.Rules
	// InsecureNoAuth serves without authentication; for trusted networks only.
	InsecureNoAuth bool
	// HandshakeTimeout closes a connection that has not authenticated and
	// sent its preamble within this long; default 5s.
	HandshakeTimeout time.Duration
	// MaxMessageSize bounds one frame; default 64 MiB.
	MaxMessageSize int
	// FrameStallTimeout ends a call whose frame, begun, gets no more
	// bytes for this long, and frees what it had; default 30s.
	FrameStallTimeout time.Duration
	// MaxAttempts is how many deliveries a task gets before it is
	// dead-lettered; default 3.
	MaxAttempts int
	// DefaultLease is the lease of a get that asks for none; default 30s.
	DefaultLease time.Duration
	// RetryBackoffMin and RetryBackoffMax are every queue's default
	// retry backoff (queue.Config); 0 means none.
	RetryBackoffMin, RetryBackoffMax time.Duration
	// DedupWindow is how long a put's idempotency key is remembered;
	// default 2m.
	DedupWindow time.Duration
	// MaxQueueLen is the maximum length of every queue; 0 is unlimited.
	MaxQueueLen int
	// KeepAliveInterval is the yamux keep-alive period; a client that stops
	// answering is dropped (and its leases requeued) after about this long.
	// Default 10s.
	KeepAliveInterval time.Duration
	// PyTypeIDs maps the typeid a Python BaseManager client registered
	// (e.g. "get_jobs") to the queue it serves. A typeid not listed is
	// served as pymanager.ClassicTypeIDs says (get_task_queue: tasks,
	// get_result_queue: results), else, of the form get_<name>_queue,
	// from queue <name>.
	PyTypeIDs map[string]string
	// PyResultsQueue is the workers' results queue for Python workers: a
	// Python worker's put to it, after a get of a task that names a reply
	// queue, is that task's result and goes to the reply queue. Default
	// "results", qworker's --results.
	PyResultsQueue string
	// DataDir, if not empty, keeps the queues durable in this directory
	// (see package store/seglog); empty keeps them in memory only.
	DataDir string
	// OpenQueues, if not nil, opens the queues the server serves, instead
	// of queues in this process: a gateway to a replicated engine, such as
	// package jsqueue's. It is given the queue settings, with the callback
	// that publishes dead tasks' error results (and MaxQueueLen, as
	// MaxLen). DataDir must then be unset: the engine keeps the tasks.
	OpenQueues func(queue.Config) (Queues, error)
	// Collectors are more metrics served on /metrics: those of what
	// OpenQueues opens (the JetStream node embedded in this process).
	Collectors []prometheus.Collector
	// Current, if not nil, returns why what OpenQueues opens is not
	// caught up with its cluster (the JetStream node embedded in this
	// process, after a start), or nil: /readyz?current waits for it, and
	// for all /readyz waits for.
	Current func() error
	// GatewayName names this server among the gateways of a cluster
	// (with OpenQueues): in the list of every gateway's clients. Default
	// its host name and the port it serves clients on.
	GatewayName string
	// Fsync says when the data directory's log is fsynced (with DataDir).
	Fsync seglog.FsyncMode
	// FsyncInterval is the period of seglog.FsyncInterval; default 100ms.
	FsyncInterval time.Duration
	// HTTPToken is the bearer token of the HTTP endpoints (ServeAdmin);
	// empty means the Authkey. With neither, they are open to anyone who
	// can connect.
	HTTPToken []byte
	// DashboardSampleEvery is the period of the dashboard's charts;
	// default 5s.
	DashboardSampleEvery time.Duration
	// TLS, if not nil, serves every connection over TLS with this
	// configuration (MinVersion at least TLS 1.2); the authkey handshake
	// runs inside it. Python BaseManager clients cannot connect then.
	TLS *tls.Config
	// MaxUnauthConns bounds the connections still in their handshake;
	// beyond it new connections are closed at once. Default 64.
	MaxUnauthConns int
	// AuthFailLimit is how many failed authentications one remote IP may
	// have per AuthFailWindow answered at once; each further one is
	// answered after a delay, AuthFailDelay doubled with each, at most
	// half the HandshakeTimeout, while the connection keeps its place
	// among the MaxUnauthConns (one address at most half of them). A
	// client proving a valid key is never refused at the queue port; the
	// HTTP endpoints count their own failures alike, and refuse an
	// address holding its share of delays. Default 10.
	AuthFailLimit int
	// AuthFailWindow is the window of AuthFailLimit; default 1 minute.
	AuthFailWindow time.Duration
	// AuthFailDelay is the first delay past AuthFailLimit; default 100ms.
	AuthFailDelay time.Duration
	// MaxConns bounds the authenticated connections; a client beyond it is
	// refused with wire.ErrMasterFull. Default 4096.
	MaxConns int
	// MaxStreams bounds the calls in progress on one connection (its yamux
	// streams); a call beyond it fails with wire.ErrTooManyStreams.
	// Default 256.
	MaxStreams int
	// MaxMemory, if positive, refuses puts with wire.ErrMasterFull while
	// the master's heap holds more than this many bytes; gets, acks and
	// results still go through. 0 is unlimited.
	MaxMemory int64
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case len(c.Authkey) == 0 && c.ACL == nil && !c.InsecureNoAuth:
		return ErrNoAuthkey
	case len(c.Authkey) > 0 && c.ACL != nil:
		return errors.New("give Authkey or ACL, not both")
	case c.InsecureNoAuth && c.ACL != nil:
		return errors.New("InsecureNoAuth serves without keys: drop ACL")
	case c.HandshakeTimeout < 0:
		return errors.New("HandshakeTimeout must not be negative")
	case c.FrameStallTimeout < 0:
		return errors.New("FrameStallTimeout must not be negative")
	case c.MaxMessageSize < 0:
		return errors.New("MaxMessageSize must not be negative")
	case c.MaxAttempts < 0:
		return errors.New("MaxAttempts must not be negative")
	case c.DefaultLease < 0:
		return errors.New("DefaultLease must not be negative")
	case c.MaxQueueLen < 0:
		return errors.New("MaxQueueLen must not be negative")
	case c.KeepAliveInterval < 0:
		return errors.New("KeepAliveInterval must not be negative")
	case c.FsyncInterval < 0:
		return errors.New("FsyncInterval must not be negative")
	case c.DashboardSampleEvery < 0:
		return errors.New("DashboardSampleEvery must not be negative")
	case c.MaxUnauthConns < 0:
		return errors.New("MaxUnauthConns must not be negative")
	case c.AuthFailLimit < 0:
		return errors.New("AuthFailLimit must not be negative")
	case c.AuthFailWindow < 0:
		return errors.New("AuthFailWindow must not be negative")
	case c.AuthFailDelay < 0:
		return errors.New("AuthFailDelay must not be negative")
	case c.MaxConns < 0:
		return errors.New("MaxConns must not be negative")
	case c.MaxStreams < 0:
		return errors.New("MaxStreams must not be negative")
	case c.MaxMemory < 0:
		return errors.New("MaxMemory must not be negative")
	case c.TLS != nil && c.TLS.MinVersion != 0 && c.TLS.MinVersion < tls.VersionTLS12:
		return errors.New("TLS: MinVersion must be TLS 1.2 or later")
	case c.OpenQueues != nil && c.DataDir != "":
		return errors.New("DataDir does not go with OpenQueues: the queues' engine keeps the tasks")
	}
	if c.PyResultsQueue != "" {
		if err := queue.CheckName(c.PyResultsQueue); err != nil {
			return fmt.Errorf("PyResultsQueue: %q: %w", c.PyResultsQueue, err)
		}
	}
	for typeid, q := range c.PyTypeIDs {
		if typeid == "" {
			return errors.New("PyTypeIDs: empty typeid")
		}
		if err := queue.CheckName(q); err != nil {
			return fmt.Errorf("PyTypeIDs: typeid %q: queue %q: %w", typeid, q, err)
		}
	}
	return nil
}

// defaultFrameStallTimeout is Config.FrameStallTimeout's default: far
// beyond a pause of a client sending, short enough that frames left half
// sent do not hold the master's memory for long.
const defaultFrameStallTimeout = 30 * time.Second

func (c *Config) setDefaults() {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = wire.DefaultHandshakeTimeout
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if c.FrameStallTimeout == 0 {
		c.FrameStallTimeout = defaultFrameStallTimeout
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = queue.DefaultMaxAttempts
	}
	if c.DefaultLease == 0 {
		c.DefaultLease = queue.DefaultLease
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = wire.DefaultKeepAliveInterval
	}
	if c.PyResultsQueue == "" {
		c.PyResultsQueue = wire.DefaultResultQueue
	}
	if c.MaxUnauthConns == 0 {
		c.MaxUnauthConns = 64
	}
	if c.AuthFailLimit == 0 {
		c.AuthFailLimit = 10
	}
	if c.AuthFailWindow == 0 {
		c.AuthFailWindow = time.Minute
	}
	if c.AuthFailDelay == 0 {
		c.AuthFailDelay = 100 * time.Millisecond
	}
	if c.MaxConns == 0 {
		c.MaxConns = 4096
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = 256
	}
	if c.TLS != nil && c.TLS.MinVersion == 0 {
		c.TLS = c.TLS.Clone()
		c.TLS.MinVersion = tls.VersionTLS12
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) queueConfig(onDead func(string, queue.Task)) queue.Config {
	return queue.Config{
		MaxAttempts:     c.MaxAttempts,
		DefaultLease:    c.DefaultLease,
		RetryBackoffMin: c.RetryBackoffMin,
		RetryBackoffMax: c.RetryBackoffMax,
		DedupWindow:     c.DedupWindow,
		MaxLen:          c.MaxQueueLen,
		OnDead:          onDead,
	}
}

func (c *Config) String() string {
	return fmt.Sprintf("max-attempts=%d lease=%s retry-backoff=%s..%s max-queue-len=%d max-message=%d",
		c.MaxAttempts, c.DefaultLease, c.RetryBackoffMin, c.RetryBackoffMax, c.MaxQueueLen, c.MaxMessageSize)
}
