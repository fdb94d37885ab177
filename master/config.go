package master

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store/seglog"
	"github.com/qm-dev/qm/wire"
)

// Config configures a Server. Zero values mean the defaults.
type Config struct {
	// Authkey is the shared secret every client must prove it knows. Empty
	// is refused unless InsecureNoAuth is set.
	Authkey []byte
	// InsecureNoAuth serves without authentication; for trusted networks only.
	InsecureNoAuth bool
	// HandshakeTimeout closes a connection that has not authenticated and
	// sent its preamble within this long; default 5s.
	HandshakeTimeout time.Duration
	// MaxMessageSize bounds one frame; default 64 MiB.
	MaxMessageSize int
	// MaxAttempts is how many deliveries a task gets before it is
	// dead-lettered; default 3.
	MaxAttempts int
	// DefaultLease is the lease of a get that asks for none; default 30s.
	DefaultLease time.Duration
	// MaxQueueLen is the maximum length of every queue; 0 is unlimited.
	MaxQueueLen int
	// KeepAliveInterval is the yamux keep-alive period; a client that stops
	// answering is dropped (and its leases requeued) after about this long.
	// Default 10s.
	KeepAliveInterval time.Duration
	// PyTypeIDs maps the typeid a Python BaseManager client registered
	// (e.g. "get_task_queue") to the queue it serves. A typeid not listed
	// of the form get_<name>_queue serves queue <name>.
	PyTypeIDs map[string]string
	// DataDir, if not empty, keeps the queues durable in this directory
	// (see package store/seglog); empty keeps them in memory only.
	DataDir string
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
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case len(c.Authkey) == 0 && !c.InsecureNoAuth:
		return ErrNoAuthkey
	case c.HandshakeTimeout < 0:
		return errors.New("HandshakeTimeout must not be negative")
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

func (c *Config) setDefaults() {
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = wire.DefaultMaxMessageSize
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	if c.DefaultLease == 0 {
		c.DefaultLease = 30 * time.Second
	}
	if c.KeepAliveInterval == 0 {
		c.KeepAliveInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) queueConfig(onDead func(string, queue.Task)) queue.Config {
	return queue.Config{
		MaxAttempts:  c.MaxAttempts,
		DefaultLease: c.DefaultLease,
		MaxLen:       c.MaxQueueLen,
		OnDead:       onDead,
	}
}

func (c *Config) String() string {
	return fmt.Sprintf("max-attempts=%d lease=%s max-queue-len=%d max-message=%d", c.MaxAttempts, c.DefaultLease, c.MaxQueueLen, c.MaxMessageSize)
}
