package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qm-dev/qm/wire"
)

// Task is a task as handed to a Handler: its ID, payload (see Task.Value),
// attempt number and the error of its previous attempt.
type Task = wire.Task

// Handler runs one task and returns its result: any msgpack-encodable
// value, or an error that fails this attempt (the master retries the task
// or, after its last attempt, dead-letters it). A panic counts as an error.
//
// ctx is not cancelled when the worker drains; it is cancelled, with cause
// ErrLeaseLost, when the task is no longer this worker's to finish. Run
// returns only after every handler it started has returned.
type Handler func(ctx context.Context, t Task) (any, error)

// Config configures Run. Zero values mean the defaults.
type Config struct {
	// Server is the master's host:port, or several, comma-separated, of
	// gateways to one cluster (see wire.Config.Addr). Required.
	Server string
	// Authkey is the master's shared secret. Empty connects without
	// authentication, to a master started with --insecure-no-auth.
	Authkey []byte
	// TLS, if not nil, connects to the master over TLS with this
	// configuration (see wire.Config.TLS).
	TLS *tls.Config
	// Name identifies the worker in the master's client list and in the
	// results it publishes; default host:pid.
	Name string
	// Tasks is the queue to take tasks from; default "tasks".
	Tasks string
	// Results is the queue that receives the results of tasks put without
	// a reply-to queue of their own; default "results".
	Results string
	// Concurrency is how many tasks run at once; default 1. Besides those
	// running, the worker holds leased at most Concurrency finished ones
	// whose results are on their way, so that the next get overlaps them,
	// and the tasks it prefetches (see MaxPrefetch).
	Concurrency int
	// Capacity, if set, says how many tasks the Handler can take at once
	// now, at most Concurrency: the worker runs no more than that, and
	// holds the rest it took waiting, as a prefetch. Stdio.Capacity is
	// one: children that take tasks ahead hold more while tasks are
	// quick. Nil is Concurrency.
	Capacity func() int
	// MaxPrefetch bounds the tasks the worker takes beyond its free slots,
	// to wait in the worker until a slot frees; 0 means the default, 128,
	// and a negative value turns prefetching off (qworker's --prefetch 0
	// sets -1). Within that bound the
	// worker prefetches as many tasks as its slots finish during one get's
	// round trip, Concurrency × round trip / mean handler time, rounded
	// down: quick tasks come in batches, a slow task (one that runs longer
	// than a round trip) only when a slot frees, so that no task waits in
	// one worker while another is idle. Until its first tasks are measured
	// the worker prefetches none.
	MaxPrefetch int
	// GetTimeout is how long one get waits at the master for a task before
	// the worker asks again; default 5s.
	GetTimeout time.Duration
	// Lease is how long the master leases each task to the worker before it
	// would hand it to another; the worker renews it every third of that
	// while the task runs. Zero means the master's default.
	Lease time.Duration
	// IdleExit ends Run (with nil) once the worker has had no task for this
	// long, time spent unable to reach the master again included; zero
	// never ends it. A worker that has not reached the master at all in
	// that time ends with the last error of its tries instead.
	IdleExit time.Duration
	// DrainTimeout bounds a drain (Run's ctx cancelled): handlers still
	// running that long after have their ctx cancelled with cause
	// ErrDrainTimeout, and their tasks go back to the master, in front of
	// their queue for other workers, with no attempt used on a single
	// master and no retry backoff; what they return is dropped. Run then
	// returns once those handlers have (a handler must honour its ctx),
	// the release is answered (up to 5s) and the outcomes that came in
	// time are sent. Set it a few seconds below the time a supervisor
	// gives a stopping worker before it kills it (Kubernetes' grace
	// period, systemd's TimeoutStopSec): killed, the worker's connection
	// closes and the master requeues its tasks as failed attempts
	// ("worker disconnected"), which a task on its last attempt does not
	// survive. Zero waits for the handlers however long they run.
	DrainTimeout time.Duration
	// MaxTasks ends Run (with nil) once this many tasks have been handled,
	// failed ones included; zero is unlimited.
	MaxTasks int
	// Handler runs each task. Required.
	Handler Handler
	// Logger receives the worker's logs, a handler's panic with its stack
	// among them; nil discards them.
	Logger *slog.Logger
	// ReconnectMin is the first delay before reconnecting to the master;
	// default 100ms. Delays double, with jitter, up to ReconnectMax.
	ReconnectMin time.Duration
	// ReconnectMax bounds the delay between reconnection attempts;
	// default 5s.
	ReconnectMax time.Duration
}

// Validate reports the first invalid field of c, by name.
func (c *Config) Validate() error {
	if c.Server == "" {
		return errors.New("worker config: Server is required (host:port)")
	}
	for _, addr := range wire.SplitAddrs(c.Server) {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return fmt.Errorf("worker config: Server %q is not host:port", addr)
		}
	}
	switch {
	case c.Handler == nil:
		return errors.New("worker config: Handler is required")
	case c.Concurrency < 0:
		return errors.New("worker config: Concurrency must not be negative")
	case c.GetTimeout < 0:
		return errors.New("worker config: GetTimeout must not be negative")
	case c.Lease < 0:
		return errors.New("worker config: Lease must not be negative")
	case c.Lease > 0 && c.Lease < minLease:
		return fmt.Errorf("worker config: Lease must be at least %s", minLease)
	case c.IdleExit < 0:
		return errors.New("worker config: IdleExit must not be negative")
	case c.DrainTimeout < 0:
		return errors.New("worker config: DrainTimeout must not be negative")
	case c.MaxTasks < 0:
		return errors.New("worker config: MaxTasks must not be negative")
	case c.ReconnectMin < 0:
		return errors.New("worker config: ReconnectMin must not be negative")
	case c.ReconnectMax < 0:
		return errors.New("worker config: ReconnectMax must not be negative")
	case c.ReconnectMin > 0 && c.ReconnectMax > 0 && c.ReconnectMin > c.ReconnectMax:
		return errors.New("worker config: ReconnectMin must not be above ReconnectMax")
	case !plainName(c.Tasks):
		return fmt.Errorf("worker config: Tasks %q is no queue name (control characters or invalid UTF-8)", c.Tasks)
	case !plainName(c.Results):
		// Else every completion would be refused (the master checks
		// the rest of the rules).
		return fmt.Errorf("worker config: Results %q is no queue name (control characters or invalid UTF-8)", c.Results)
	}
	return nil
}

// plainName reports whether name is valid UTF-8 without control
// characters, as a queue's name must be: a name read from a file with its
// line's end is not.
func plainName(name string) bool {
	return utf8.ValidString(name) && !strings.ContainsFunc(name, unicode.IsControl)
}

// DefaultMaxPrefetch is what MaxPrefetch 0 means.
const DefaultMaxPrefetch = 128

// minLease keeps lease renewals from turning into a busy loop.
const minLease = 10 * time.Millisecond

func (c *Config) setDefaults() {
	if c.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			host = "localhost"
		}
		c.Name = host + ":" + strconv.Itoa(os.Getpid())
	}
	if c.Tasks == "" {
		c.Tasks = wire.DefaultTaskQueue
	}
	if c.Results == "" {
		c.Results = wire.DefaultResultQueue
	}
	if c.Concurrency == 0 {
		c.Concurrency = 1
	}
	switch {
	case c.MaxPrefetch == 0:
		c.MaxPrefetch = DefaultMaxPrefetch
	case c.MaxPrefetch < 0:
		c.MaxPrefetch = 0
	}
	if c.GetTimeout == 0 {
		c.GetTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 100 * time.Millisecond
		if c.ReconnectMax > 0 {
			c.ReconnectMin = min(c.ReconnectMin, c.ReconnectMax)
		}
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = max(5*time.Second, c.ReconnectMin)
	}
}
