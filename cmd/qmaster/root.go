package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/cliflag"
	"github.com/qm-dev/qm/internal/gomaxprocs"
	"github.com/qm-dev/qm/internal/tlsconfig"
	"github.com/qm-dev/qm/internal/version"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store/seglog"
	"github.com/qm-dev/qm/wire"
)

// serveOptions are the flags of the root command, which runs the master.
type serveOptions struct {
	IO *factory

	Addr             string
	Authkey          string
	AuthkeyFile      string
	ACL              string
	InsecureNoAuth   bool
	MaxAttempts      int
	Lease            time.Duration
	RetryBackoff     string
	DedupWindow      time.Duration
	MaxQueueLen      int
	MaxMessageSize   byteSize
	HandshakeTimeout time.Duration
	ShutdownTimeout  time.Duration
	LogLevel         cliflag.LogLevel
	LogFormat        *cliflag.Enum
	DataDir          string
	Fsync            string
	FsyncInterval    time.Duration
	PyTypeIDs        map[string]string
	PyResultsQueue   string
	HTTP             httpOptions   // httpflags.go
	Engine           engineOptions // engine.go

	TLSCert, TLSKey, TLSClientCA string
	MaxUnauthConns               int
	AuthFailLimit                int
	MaxConns                     int
	MaxStreams                   int
	MaxMemory                    byteSize
}

// errNoKey is returned when the master is started without an authkey.
var errNoKey = errors.New("no authkey: give one with --authkey-file FILE, the QM_AUTHKEY environment variable " +
	"or --authkey KEY; or pass --insecure-no-auth to serve without authentication on a trusted network")

// newRootCmd returns the qmaster command with its subcommands. runF, if
// not nil, replaces running the server (for tests).
func newRootCmd(f *factory, runF func(*serveOptions) error) *cobra.Command {
	opts := &serveOptions{
		IO:             f,
		MaxMessageSize: wire.DefaultMaxMessageSize,
		LogFormat:      cliflag.NewEnum("text", "text", "json"),
	}
	cmd := &cobra.Command{
		Version: version.String(),
		Use:     "qmaster [flags]",
		Short:   "Run a qm master, or inspect and use a running one",
		Long: `qmaster runs a qm master: the server that holds named task queues for
producers and workers. Workers lease tasks; a task not acknowledged within
its lease goes back to its queue, and one that fails --max-attempts times
goes to the dead-letter queue QUEUE.dead.

Every client must prove it knows the authkey. Give it with --authkey-file,
the QM_AUTHKEY environment variable, or --authkey (in that order of
preference: --authkey is visible to other users in ps).

Logs go to stderr. SIGINT or SIGTERM stops the master gracefully: it stops
accepting, lets calls in progress finish for up to --shutdown-timeout, and
requeues unacknowledged tasks (kept with --data-dir; without it, every
queue ends with the master). A second signal exits at once. SIGHUP
re-reads --acl; without --acl it is logged and ignored.

Without --data-dir, queues are in memory: a restart loses them. With
--data-dir DIR, every put is written to a log in DIR before it is
acknowledged, and a restart (even after kill -9) finds every acknowledged
task again; --fsync says when the log is fsynced (see docs/STORAGE.md).

qmaster runs its Go code on one thread at a time (GOMAXPROCS=1), which
measured fastest for a master's short, kernel-bound work; set GOMAXPROCS
in its environment to change that.

The subcommands talk to a running master (see --server).`,
		Example: `  # Serve on port 5000 with the key in a file
  qmaster --authkey-file ~/.qm/key

  # Serve on loopback only, key from the environment, JSON logs
  QM_AUTHKEY=s3cret qmaster --addr 127.0.0.1:5000 --log-format json

  # What is queued?
  QM_AUTHKEY=s3cret qmaster inspect`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			if opts.DataDir == "" {
				// Taken silently, they would promise a durability that
				// an in-memory master (or a gateway) does not have.
				for _, name := range []string{"fsync", "fsync-interval"} {
					if cmd.Flags().Changed(name) {
						return usageErrorf("--%s goes with --data-dir: without it, nothing is written to disk", name)
					}
				}
			}
			if runF != nil {
				return runF(opts)
			}
			return serveRun(cmd.Context(), opts)
		},
	}
	setupRoot(cmd)

	fl := cmd.Flags()
	fl.StringVar(&opts.Addr, "addr", ":5000", "`host:port` to listen on (port 0 picks a free port; the log line \"listening\" shows it)")
	fl.StringVar(&opts.Authkey, "authkey", "", authkeyHelp)
	fl.StringVar(&opts.AuthkeyFile, "authkey-file", "", authkeyFileHelp)
	fl.StringVar(&opts.ACL, "acl", "", "serve the keys of this TOML `file`, each with a name and the queues it may put to and get from, "+
		"or admin (docs/SECURITY.md); instead of --authkey. kill -HUP re-reads it")
	fl.BoolVar(&opts.InsecureNoAuth, "insecure-no-auth", false, "serve without an authkey: anyone who can connect may read and write every queue")
	fl.IntVar(&opts.MaxAttempts, "max-attempts", queue.DefaultMaxAttempts, "deliveries of a task before it goes to the dead-letter queue")
	fl.DurationVar(&opts.Lease, "lease", queue.DefaultLease, "lease of a task taken by a worker that asks for none")
	fl.StringVar(&opts.RetryBackoff, "retry-backoff", "none", "default wait before a failed task is delivered again, `MIN..MAX`: MIN after the first failure, doubling up to MAX, with jitter (e.g. 1s..1h); none retries at once; qmaster config sets it per queue")
	fl.DurationVar(&opts.DedupWindow, "dedup-window", queue.DefaultDedupWindow, "how long a put's idempotency key (put --key) is remembered")
	fl.IntVar(&opts.MaxQueueLen, "max-queue-len", 0, "most tasks a queue holds; a put that does not fit fails with \"queue full\", at once or after waiting for room up to its timeout (qmaster put --timeout) (0: unlimited)")
	fl.Var(&opts.MaxMessageSize, "max-message-size", "largest message accepted, a byte count or e.g. 16MiB")
	fl.DurationVar(&opts.HandshakeTimeout, "handshake-timeout", wire.DefaultHandshakeTimeout, "time a new connection has to authenticate")
	fl.DurationVar(&opts.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "on SIGINT/SIGTERM, how long to wait for calls in progress (0: stop at once)")
	opts.LogLevel.Level = slog.LevelInfo
	fl.Var(&opts.LogLevel, "log-level", "least severe log level shown: debug, info, warn or error")
	fl.Var(opts.LogFormat, "log-format", "log format: text or json")
	fl.StringVar(&opts.DataDir, "data-dir", "", "keep the queues durable in `DIR` (default: in memory, lost on restart)")
	fl.StringVar(&opts.Fsync, "fsync", "always", "with --data-dir, when to fsync the log: always (before each put is acknowledged; many puts share one fsync), interval (every --fsync-interval, or give a duration: --fsync 100ms) or never (leave it to the OS)")
	fl.DurationVar(&opts.FsyncInterval, "fsync-interval", seglog.DefaultInterval, "the fsync period of --fsync interval")
	addHTTPFlags(cmd, &opts.HTTP)
	addEngineFlags(cmd, &opts.Engine)
	fl.IntVar(&opts.MaxUnauthConns, "max-unauth-conns", 64, "most connections still authenticating at once; beyond it new ones are closed at once")
	fl.IntVar(&opts.AuthFailLimit, "auth-fail-limit", 10, "failed authentications per remote IP per minute answered at once; each further one is answered after a growing delay (100ms doubling, at most half --handshake-timeout; an IP holds at most half of --max-unauth-conns in delays); a valid key is never refused")
	fl.IntVar(&opts.MaxConns, "max-conns", 4096, "most authenticated connections; beyond it a client is refused with \"master full: too many connections\"")
	fl.IntVar(&opts.MaxStreams, "max-streams", 256, "most calls in progress on one connection; beyond it a call fails with \"too many concurrent calls\"")
	fl.Var(&opts.MaxMemory, "max-memory", "refuse puts with \"master full\" while the master's heap is above this, e.g. 2GiB; gets and acks still work (0: no limit)")
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "serve over TLS (1.2 or later) with the certificate in this PEM `file` (with --tls-key); Python manager clients cannot connect then")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "private key (PEM `file`) of --tls-cert")
	fl.StringVar(&opts.TLSClientCA, "tls-client-ca", "", "with --tls-cert, require every client to present a certificate signed by a CA in this PEM `file`")
	fl.StringToStringVar(&opts.PyTypeIDs, "py-typeid", nil, "serve Python manager typeid `TYPEID=QUEUE` from that queue (repeatable; get_<name>_queue serves <name> without it, get_task_queue and get_result_queue serve tasks and results)")
	fl.StringVar(&opts.PyResultsQueue, "py-results-queue", wire.DefaultResultQueue, "`queue` whose puts by a Python worker are the results of the task it took last, sent to that task's reply queue")

	for _, sub := range []*cobra.Command{
		newCmdInspect(f, nil),
		newCmdPut(f, nil),
		newCmdGet(f, nil),
		newCmdMap(f, nil),
		newCmdClients(f, nil),
		newCmdPeek(f, nil),
		newCmdPurge(f, nil),
		newCmdConfig(f, nil),
		newCmdDelete(f, nil),
		newCmdQueues(f, nil),
		newCmdDead(f, nil),
		newCmdRequeue(f, nil),
		newCmdDrop(f, nil),
		newCmdPause(f, false, nil),
		newCmdPause(f, true, nil),
	} {
		cmd.AddCommand(sub)
	}
	return cmd
}

// setupRoot makes cmd the root of a tree whose errors main reports (see
// exitCode), with flag errors as usage errors.
func setupRoot(cmd *cobra.Command) {
	cmd.SilenceErrors = true
	cmd.SilenceUsage = true
	cmd.CompletionOptions.HiddenDefaultCmd = true
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		// "qmaster inpsect --server X": the flag is unknown because the
		// word before it is no command, which is what to say (as args
		// does without the flag).
		if a := c.Flags().Args(); c.HasSubCommands() && len(a) > 0 {
			return usageErrorf("unknown command %q", a[0])
		}
		return &usageError{Err: err}
	})
}

func (o *serveOptions) validate() error {
	switch {
	case o.InsecureNoAuth && (o.Authkey != "" || o.AuthkeyFile != "" || o.ACL != ""):
		return usageErrorf("--insecure-no-auth serves without a key: drop --authkey, --authkey-file and --acl")
	case o.ACL != "" && (o.Authkey != "" || o.AuthkeyFile != ""):
		return usageErrorf("--acl lists the keys: drop --authkey and --authkey-file (or make that key an entry of the file)")
	case o.MaxAttempts < 1:
		return usageErrorf("--max-attempts must be at least 1")
	case o.Lease <= 0:
		return usageErrorf("--lease must be positive")
	case o.DedupWindow <= 0:
		return usageErrorf("--dedup-window must be positive")
	case badBackoff(o.RetryBackoff) != nil:
		return usageErrorf("--retry-backoff: %v", badBackoff(o.RetryBackoff))
	case o.MaxQueueLen < 0:
		return usageErrorf("--max-queue-len must not be negative (0 is unlimited)")
	case o.MaxMessageSize < 1024 || o.MaxMessageSize > 1<<31-1:
		return usageErrorf("--max-message-size must be between 1KiB and 2GiB")
	case o.HandshakeTimeout <= 0:
		return usageErrorf("--handshake-timeout must be positive")
	case o.ShutdownTimeout < 0:
		return usageErrorf("--shutdown-timeout must not be negative")
	case o.FsyncInterval <= 0:
		return usageErrorf("--fsync-interval must be positive")
	case o.MaxUnauthConns < 1:
		return usageErrorf("--max-unauth-conns must be at least 1")
	case o.AuthFailLimit < 1:
		return usageErrorf("--auth-fail-limit must be at least 1")
	case o.MaxConns < 1:
		return usageErrorf("--max-conns must be at least 1")
	case o.MaxStreams < 1:
		return usageErrorf("--max-streams must be at least 1")
	case (o.TLSCert == "") != (o.TLSKey == ""):
		return usageErrorf("--tls-cert and --tls-key go together")
	case o.TLSClientCA != "" && o.TLSCert == "":
		return usageErrorf("--tls-client-ca needs --tls-cert and --tls-key")
	}
	if _, _, err := seglog.ParseFsync(o.Fsync); err != nil {
		return usageErrorf("--fsync: %v", err)
	}
	if err := o.Engine.validate(o); err != nil {
		return err
	}
	return o.HTTP.validate()
}

func (o *serveOptions) logger(w io.Writer) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: o.LogLevel.Level}
	if o.LogFormat.String() == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}

// storageNote says in the listening line where the queues live.
func storageNote(dir string, fsync seglog.FsyncMode, interval time.Duration) string {
	switch {
	case dir == "":
		return "queues are in memory (no --data-dir): a restart loses them"
	case fsync == seglog.FsyncInterval:
		return fmt.Sprintf("durable in %s (fsync every %s)", dir, interval)
	}
	return fmt.Sprintf("durable in %s (fsync %s)", dir, fsync)
}

// adaptPeriod is how often the master looks whether it is CPU-bound.
const adaptPeriod = 5 * time.Second

// serveRun runs the master until ctx ends, then shuts it down gracefully.
func serveRun(ctx context.Context, opts *serveOptions) error {
	var key []byte
	var rules *acl.Rules
	if opts.ACL != "" {
		// QM_AUTHKEY is ignored too: the file says which keys serve.
		var err error
		if rules, err = acl.Load(opts.ACL); err != nil {
			return err
		}
	} else if !opts.InsecureNoAuth {
		var err error
		// QM_AUTHKEY is ignored under --insecure-no-auth: the flag says no key.
		if key, err = auth.LoadKey(opts.Authkey, opts.AuthkeyFile, opts.IO.getenv); err != nil {
			return err
		}
		if key == nil {
			return errNoKey
		}
	}
	httpToken, err := opts.HTTP.token(opts.IO.getenv)
	if err != nil {
		return err
	}
	var tcfg *tls.Config
	if opts.TLSCert != "" {
		if tcfg, err = tlsconfig.Server(opts.TLSCert, opts.TLSKey, opts.TLSClientCA); err != nil {
			return err
		}
	}
	if opts.MaxMemory > 0 {
		// A soft limit a quarter above --max-memory makes the GC collect
		// before garbage alone pushes the heap far past it (which would
		// refuse puts early), yet leaves the live heap room to reach
		// --max-memory without the GC running nonstop.
		debug.SetMemoryLimit(int64(opts.MaxMemory) + int64(opts.MaxMemory)/4)
	}
	log := opts.logger(opts.IO.ErrOut)
	if opts.DataDir != "" {
		if _, err := os.Stat(opts.DataDir); errors.Is(err, fs.ErrNotExist) {
			// Made below, empty: a mistyped path on a restart would start
			// a master without its tasks, and say nothing.
			log.Warn("the data directory does not exist; it is made, empty", "data_dir", opts.DataDir)
		}
	}
	fsync, interval, _ := seglog.ParseFsync(opts.Fsync) // checked by validate
	if opts.Fsync == "interval" {
		interval = opts.FsyncInterval
	}
	backoff, _ := parseBackoff(opts.RetryBackoff) // checked by validate
	mcfg := master.Config{
		DataDir:          opts.DataDir,
		PyTypeIDs:        opts.PyTypeIDs,
		PyResultsQueue:   opts.PyResultsQueue,
		Fsync:            fsync,
		FsyncInterval:    interval,
		Authkey:          key,
		ACL:              rules,
		InsecureNoAuth:   opts.InsecureNoAuth,
		HandshakeTimeout: opts.HandshakeTimeout,
		MaxMessageSize:   int(opts.MaxMessageSize),
		MaxAttempts:      opts.MaxAttempts,
		DefaultLease:     opts.Lease,
		RetryBackoffMin:  backoff.BackoffMin,
		RetryBackoffMax:  backoff.BackoffMax,
		DedupWindow:      opts.DedupWindow,
		MaxQueueLen:      opts.MaxQueueLen,
		HTTPToken:        httpToken,
		TLS:              tcfg,
		MaxUnauthConns:   opts.MaxUnauthConns,
		AuthFailLimit:    opts.AuthFailLimit,
		MaxConns:         opts.MaxConns,
		MaxStreams:       opts.MaxStreams,
		MaxMemory:        int64(opts.MaxMemory),
		Logger:           log,
	}
	storage := storageNote(opts.DataDir, fsync, interval)
	var handOver func(context.Context)
	if opts.Engine.enabled() {
		eng, err := opts.Engine.open(ctx, opts, key, log)
		if err != nil {
			return err
		}
		defer eng.close()
		handOver = eng.handOver
		mcfg.DataDir = ""
		mcfg.OpenQueues = eng.openQueues(log)
		mcfg.Collectors = eng.collectors()
		mcfg.Current = eng.current()
		mcfg.GatewayName = eng.gatewayName()
		storage = eng.note
	}
	srv, err := newMaster(mcfg, opts.IO.getenv("GOMAXPROCS") == "")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		srv.Close()
		return err // "listen tcp :5000: bind: address already in use"
	}
	authMode := "authkey"
	switch {
	case opts.InsecureNoAuth:
		authMode = "none"
	case rules != nil:
		n := len(rules.Keys())
		authMode = fmt.Sprintf("acl %s (%d %s)", opts.ACL, n, plural(n, "key", "keys"))
	}
	stopReload := reloadOnHUP(srv, opts.ACL, log) // opts.ACL "" without rules: ignored
	defer stopReload()
	tlsMode := "off"
	switch {
	case opts.TLSClientCA != "":
		tlsMode = "on, client certificates required"
	case tcfg != nil:
		tlsMode = "on"
	}
	if opts.HTTP.Addr != "" && rules != nil && len(httpToken) == 0 && !hasAdmin(rules) {
		log.Warn("no key of --acl has admin = true and no --http-token is given: every request to the HTTP endpoints (--http-addr) but /healthz and /readyz will be refused until one is (a reload of the file counts)")
	}
	log.Info("listening",
		"addr", ln.Addr().String(),
		"version", version.String(),
		"auth", authMode,
		"tls", tlsMode,
		"max_attempts", opts.MaxAttempts,
		"lease", opts.Lease,
		"max_queue_len", opts.MaxQueueLen,
		"max_message_size", opts.MaxMessageSize.String(),
		"storage", storage)
	if opts.InsecureNoAuth {
		log.Warn("serving without authentication (--insecure-no-auth): anyone who can connect may read and write every queue")
	}

	if opts.IO.getenv("GOMAXPROCS") == "" && opts.Engine.enabled() {
		// One thread, right for the master's own queues, starves a
		// JetStream node in this process (a put took 5-10 ms instead of
		// under one): a gateway or a node gets the runtime's default.
		runtime.GOMAXPROCS(runtime.NumCPU())
	} else if opts.IO.getenv("GOMAXPROCS") == "" {
		// main started the master on one thread (internal/gomaxprocs);
		// one that is CPU-bound while the machine has cores to spare gets
		// more, and says so.
		adapter := gomaxprocs.Adapt(adaptPeriod, log)
		defer adapter.Stop()
	}
	waitHTTP, err := opts.HTTP.serveHTTP(srv, log)
	if err != nil {
		ln.Close()
		srv.Close()
		return err
	}
	defer waitHTTP() // the HTTP endpoints stop with the master
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		srv.Close()
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	log.Info("shutting down", "timeout", opts.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), opts.ShutdownTimeout)
	defer cancel()
	if handOver != nil {
		handOver(sctx)
	}
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("calls still in progress at the shutdown timeout were cut off", "err", err)
	}
	if err := <-served; err != nil && !errors.Is(err, master.ErrServerClosed) {
		log.Warn("serve", "err", err)
	}
	log.Info("stopped")
	return nil
}

// newMaster is master.New, which recovers the queues of a data directory.
// Recovery is all this process does until it listens, so, unless the
// user set GOMAXPROCS, it runs on every core rather than main's one
// thread: the collector's marking of the rebuilt queues then runs beside
// the replay instead of taking turns with it. The thread count is put back
// before anything is served (the adapter may raise it later).
func newMaster(cfg master.Config, adapt bool) (*master.Server, error) {
	if !adapt || cfg.DataDir == "" {
		return master.New(cfg)
	}
	prev := runtime.GOMAXPROCS(runtime.NumCPU())
	defer runtime.GOMAXPROCS(prev)
	return master.New(cfg)
}

// hasAdmin reports whether a key of rules is an admin, whose secret the
// HTTP endpoints take.
func hasAdmin(rules *acl.Rules) bool {
	for _, k := range rules.Keys() {
		if k.Admin {
			return true
		}
	}
	return false
}
