package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/cliflag"
	"github.com/qm-dev/qm/internal/tlsconfig"
	"github.com/qm-dev/qm/internal/version"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// options are qworker's flags and arguments.
type options struct {
	IO *factory

	Server         string
	Authkey        string
	AuthkeyFile    string
	InsecureNoAuth bool
	Builtin        string
	Command        []string // the arguments: a command to run per task
	Stdio          bool     // run Command as long-lived children instead
	StdioEnvelope  bool     // with Stdio, tasks as objects with their ID, attempt, queue and last error
	Tasks          string
	Results        string
	Concurrency    int
	Prefetch       int
	GetTimeout     time.Duration
	IdleExit       time.Duration
	DrainTimeout   time.Duration
	MaxTasks       int
	Lease          time.Duration
	TaskTimeout    time.Duration
	NoRetryExit    int
	Name           string
	LogLevel       cliflag.LogLevel
	LogFormat      *cliflag.Enum
	TLS            tlsconfig.ClientOptions
}

// errNoKey is returned when no authkey is given and --insecure-no-auth is
// not set either.
var errNoKey = usageErrorf("no authkey: give the master's key with --authkey-file FILE, the QM_AUTHKEY " +
	"environment variable or --authkey KEY; or pass --insecure-no-auth for a master started with --insecure-no-auth")

// newRootCmd returns the qworker command. runF, if not nil, replaces
// running the worker (for tests of the flags).
func newRootCmd(f *factory, runF func(*options) error) *cobra.Command {
	opts := &options{IO: f, LogFormat: cliflag.NewEnum("text", "text", "json")}
	cmd := &cobra.Command{
		Version: version.String(),
		Use:     "qworker --server HOST:PORT [flags] (--builtin NAME | [--stdio] [--] COMMAND [ARG...])",
		Short:   "Run tasks from a qm master's queue",
		Long: `qworker takes tasks from a queue of a qm master and runs each one, with a
built-in handler (--builtin NAME) or by running COMMAND once per task.

Built-in handlers:
` + builtinList() + `
COMMAND gets the task's payload on stdin: a string as its raw text, bytes as
they are, anything else as one line of JSON; QM_PAYLOAD in its environment
says which (text, bytes or json), with QM_TASK_ID, QM_ATTEMPT and QM_QUEUE. Its stdout, less a trailing newline, is
the task's result: the value if it is JSON, else the text as it is, spaces
kept (bytes if it is not UTF-8). A non-zero exit
fails the attempt, with the end of stderr as the error; the master retries
the task, and dead-letters it after its last attempt, or at once for the
exit status given to --no-retry-exit (bad input). --task-timeout kills
a command that runs too long, with every process it started. No shell is
involved: use sh -c '...' for pipes and redirections.

With --stdio, qworker starts --concurrency copies of COMMAND once and keeps
them: it writes each task's payload to a child's stdin as one line of JSON,
and the child answers with one line on stdout, the result as JSON, or
"!error TEXT" to fail the attempt ("!fail TEXT": not to be retried;
docs/WORKERS.md has the exact bytes). A
child's stderr goes to the log. A child that exits, hangs past
--task-timeout or breaks the protocol is stopped, the attempt it held
fails with the end of its stderr, and it is restarted with backoff. The
children's environment adds QM_STDIO=1, QM_CHILD (1 to N) and, unless
set, PYTHONUNBUFFERED=1.

Results go to the task's reply-to queue if its producer named one, else to
--results. qworker runs up to --concurrency tasks at once. When tasks
finish faster than a request to the master takes, it also takes up to
--prefetch more, as many as it runs during one request, so that quick tasks
come in batches; slow tasks it takes only as it runs them, so none waits in
one worker while another is idle. It renews the leases of the tasks it
holds, so a long task is not given to another worker. When it cannot reach the master, or the
connection drops, it reconnects with backoff; a rejected authkey ends it
at once.

The authkey comes from --authkey-file, the QM_AUTHKEY environment variable
or --authkey, in that order of preference (--authkey is visible to other
users in ps).

qworker's own work runs on one thread at a time (GOMAXPROCS=1), which is
fastest for moving tasks and results; set GOMAXPROCS in its environment to
change that.

SIGINT, SIGTERM or SIGHUP drains: qworker takes no new task, gives back
those it took and has not started, lets the running ones finish and
report their results, and exits 0. With --drain-timeout, tasks still
running that long after are stopped (a command killed, a --stdio child
stopped as qworker exits) and given back for other workers at once,
with no attempt used on a single master; set it a few seconds below the time your
supervisor waits before it kills (Kubernetes' grace period, systemd's
TimeoutStopSec), which would count a failed attempt for each. A second signal exits at once, killing the commands
still running with all they started (their tasks run again after their
leases). Logs go to stderr.

Exit status: 0 after a drain, --idle-exit or --max-tasks; 1 on an error,
such as a rejected authkey; 2 on a usage error.`,
		Example: `  # The classic distributed-queue demo: square the numbers in "tasks"
  QM_AUTHKEY=s3cret qworker --server master:5000 --builtin square

  # Run a script per task, 8 at a time, each for at most a minute
  qworker --server master:5000 --authkey-file ~/.qm/key --concurrency 8 \
      --task-timeout 1m -- python3 process.py --verbose

  # Keep 4 Python processes running; each reads tasks and prints results
  qworker --server master:5000 --authkey-file ~/.qm/key --stdio --concurrency 4 \
      -- python3 -c 'import json,sys
  for line in sys.stdin: print(json.dumps(json.loads(line) ** 2))'

  # Work through a batch and exit once the queue has been empty for 10s
  qworker --server master:5000 --authkey-file ~/.qm/key --tasks thumbs \
      --idle-exit 10s -- sh -c 'convert "$(cat)" -resize 128x128 "thumb-$QM_TASK_ID.png"'`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Command = args
			if err := opts.validate(); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return runWorker(cmd.Context(), opts)
		},
	}
	cmd.SilenceErrors = true
	cmd.SilenceUsage = true
	cmd.CompletionOptions.DisableDefaultCmd = true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{Err: err} })

	fl := cmd.Flags()
	// Flags after COMMAND belong to it: "qworker --server m:5000 grep -c x".
	fl.SetInterspersed(false)
	fl.SortFlags = false
	fl.StringVar(&opts.Server, "server", "", "`host:port` of the master (required), or several, comma-separated, of gateways to one cluster: the worker starts at a random one and moves on when it fails")
	fl.StringVar(&opts.Authkey, "authkey", "", "the master's shared `key`; visible to other users in `ps`; prefer QM_AUTHKEY or --authkey-file")
	fl.StringVar(&opts.AuthkeyFile, "authkey-file", "", "read the shared key from this `file` (trailing newlines are ignored)")
	fl.BoolVar(&opts.InsecureNoAuth, "insecure-no-auth", false, "connect to a master started with --insecure-no-auth (sends no key)")
	tlsconfig.AddClientFlags(fl, &opts.TLS)
	fl.StringVar(&opts.Builtin, "builtin", "", "run the built-in handler `name` on each task: "+strings.Join(worker.BuiltinNames(), ", "))
	fl.BoolVar(&opts.Stdio, "stdio", false, "start --concurrency long-lived copies of COMMAND and pass them tasks, a line each, on stdin (see docs/WORKERS.md)")
	fl.BoolVar(&opts.StdioEnvelope, "stdio-envelope", false, `with --stdio, write each task as {"id":ID,"attempt":N,"queue":Q,"last_error":E,"payload":P} instead of its payload alone (the children get QM_STDIO_ENVELOPE=1)`)
	fl.StringVar(&opts.Tasks, "tasks", wire.DefaultTaskQueue, "`queue` to take tasks from")
	fl.StringVar(&opts.Results, "results", wire.DefaultResultQueue, "`queue` for the results of tasks that name no reply-to queue")
	fl.IntVar(&opts.Concurrency, "concurrency", 1, "tasks run at once")
	fl.IntVar(&opts.Prefetch, "prefetch", worker.DefaultMaxPrefetch, "most tasks taken beyond those running, when they finish faster than a request to the master (0: none)")
	fl.DurationVar(&opts.GetTimeout, "get-timeout", 5*time.Second, "how long each request for tasks waits at the master")
	fl.DurationVar(&opts.IdleExit, "idle-exit", 0, "exit 0 after this long without a task, time unable to reach the master again included (0: never); exit 1 if the master was not reached at all in that time")
	fl.DurationVar(&opts.DrainTimeout, "drain-timeout", 0, "on a drain, stop the tasks still running after this long (killing their commands) and give them back to the master for other workers (0: wait however long they run)")
	fl.IntVar(&opts.MaxTasks, "max-tasks", 0, "exit 0 after handling this many tasks, failed ones included (0: unlimited)")
	fl.DurationVar(&opts.Lease, "lease", 0, "lease asked for each task; renewed every third of it while the task runs (0: the master's default)")
	fl.IntVar(&opts.NoRetryExit, "no-retry-exit", 0, "an exit `status` of COMMAND (run per task) that fails its task not to be retried: it goes to the dead-letter queue at once, e.g. 65 for bad input (0: none)")
	fl.DurationVar(&opts.TaskTimeout, "task-timeout", 0, "kill COMMAND, and all it started, after this long on one task; the attempt fails; a --stdio child is restarted (0: no limit)")
	fl.StringVar(&opts.Name, "name", "", "`name` of this worker in the master's client list and in results (default host:pid)")
	opts.LogLevel.Level = slog.LevelInfo
	fl.Var(&opts.LogLevel, "log-level", "least severe log level shown: debug, info, warn or error")
	fl.Var(opts.LogFormat, "log-format", "log format: text or json")
	return cmd
}

// builtinList is the built-in handlers as indented lines for the help.
func builtinList() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, name := range worker.BuiltinNames() {
		fmt.Fprintf(tw, "  %s\t%s\n", name, worker.BuiltinHelp(name))
	}
	tw.Flush()
	return b.String()
}

func (o *options) validate() error {
	if o.Server == "" {
		return usageErrorf("--server is required: the host:port of the master")
	}
	for _, addr := range wire.SplitAddrs(o.Server) {
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return usageErrorf("--server %q is not host:port", addr)
		}
	}
	switch {
	case o.Stdio && len(o.Command) == 0:
		return usageErrorf("--stdio needs a command to run after --")
	case o.StdioEnvelope && !o.Stdio:
		return usageErrorf("--stdio-envelope applies to --stdio children (a command run per task has QM_TASK_ID, QM_ATTEMPT and QM_QUEUE)")
	case o.Builtin != "" && len(o.Command) > 0:
		return usageErrorf("give --builtin or a command to run, not both (got --builtin %s and %q)", o.Builtin, o.Command[0])
	case o.Builtin == "" && len(o.Command) == 0:
		return usageErrorf("nothing to run: give --builtin NAME (%s) or a command after --", strings.Join(worker.BuiltinNames(), ", "))
	case o.Builtin != "" && o.TaskTimeout != 0:
		return usageErrorf("--task-timeout applies to a command, not to --builtin")
	case o.NoRetryExit != 0 && (o.Builtin != "" || o.Stdio):
		return usageErrorf("--no-retry-exit applies to a command run per task (a --stdio child says !fail TEXT instead)")
	case o.NoRetryExit < 0 || o.NoRetryExit > 255:
		return usageErrorf("--no-retry-exit must be an exit status, 1 to 255 (0 is none)")
	case o.InsecureNoAuth && (o.Authkey != "" || o.AuthkeyFile != ""):
		return usageErrorf("--insecure-no-auth sends no key: drop --authkey and --authkey-file")
	case o.Concurrency < 1:
		return usageErrorf("--concurrency must be at least 1")
	case o.Prefetch < 0:
		return usageErrorf("--prefetch must not be negative (0 is none)")
	case o.GetTimeout <= 0:
		return usageErrorf("--get-timeout must be positive")
	case o.IdleExit < 0:
		return usageErrorf("--idle-exit must not be negative (0 is never)")
	case o.DrainTimeout < 0:
		return usageErrorf("--drain-timeout must not be negative (0 is no limit)")
	case o.MaxTasks < 0:
		return usageErrorf("--max-tasks must not be negative (0 is unlimited)")
	case o.Lease < 0:
		return usageErrorf("--lease must not be negative (0 is the master's default)")
	case o.TaskTimeout < 0:
		return usageErrorf("--task-timeout must not be negative (0 is no limit)")
	case o.Tasks == "" || o.Results == "":
		return usageErrorf("--tasks and --results must not be empty")
	}
	if err := o.TLS.Check(); err != nil {
		return &usageError{Err: err}
	}
	if o.Builtin != "" {
		if _, err := worker.Builtin(o.Builtin); err != nil {
			return usageErrorf("--builtin: %w", err)
		}
	}
	if len(o.Command) > 0 {
		// Not found, every task would fail all its attempts at once, and
		// the queue would end in its dead-letter queue.
		if _, err := exec.LookPath(o.Command[0]); err != nil {
			return usageErrorf("cannot run the command: %w", err)
		}
	}
	// Whatever else the worker would refuse (e.g. a --lease too short).
	cfg := o.config(nil, nil)
	cfg.Handler = func(context.Context, worker.Task) (any, error) { return nil, nil }
	if err := cfg.Validate(); err != nil {
		return &usageError{Err: err}
	}
	return nil
}

// config is the worker configuration for the flags, without a handler.
func (o *options) config(key []byte, log *slog.Logger) worker.Config {
	return worker.Config{
		Server:       o.Server,
		Authkey:      key,
		Name:         o.Name,
		Tasks:        o.Tasks,
		Results:      o.Results,
		Concurrency:  o.Concurrency,
		MaxPrefetch:  o.maxPrefetch(),
		GetTimeout:   o.GetTimeout,
		Lease:        o.Lease,
		IdleExit:     o.IdleExit,
		DrainTimeout: o.DrainTimeout,
		MaxTasks:     o.MaxTasks,
		Logger:       log,
	}
}

// maxPrefetch is worker.Config.MaxPrefetch for --prefetch, whose 0 turns
// the prefetch off.
func (o *options) maxPrefetch() int {
	if o.Prefetch == 0 {
		return -1
	}
	return o.Prefetch
}

// handler is the handler the flags ask for.
func (o *options) handler() (worker.Handler, error) {
	if o.Builtin != "" {
		return worker.Builtin(o.Builtin)
	}
	return worker.Command(o.Command, o.TaskTimeout, worker.NoRetryExit(o.NoRetryExit)), nil
}

// stdioConfig is the configuration of the --stdio children.
func (o *options) stdioConfig(log *slog.Logger) worker.StdioConfig {
	return worker.StdioConfig{
		Command:     o.Command,
		Children:    o.Concurrency,
		TaskTimeout: o.TaskTimeout,
		Envelope:    o.StdioEnvelope,
		Logger:      log,
	}
}

// key loads the authkey, or nil under --insecure-no-auth.
func (o *options) key() ([]byte, error) {
	if o.InsecureNoAuth {
		return nil, nil // QM_AUTHKEY is ignored: the flag says no key
	}
	key, err := auth.LoadKey(o.Authkey, o.AuthkeyFile, o.IO.getenv)
	if err != nil {
		return nil, err
	}
	if key == nil {
		return nil, errNoKey
	}
	return key, nil
}

func (o *options) logger(w io.Writer) *slog.Logger {
	hopts := &slog.HandlerOptions{Level: o.LogLevel.Level}
	if o.LogFormat.String() == "json" {
		return slog.New(slog.NewJSONHandler(w, hopts))
	}
	return slog.New(slog.NewTextHandler(w, hopts))
}

// runWorker runs the worker until ctx ends (then it drains) or the worker
// stops by itself.
func runWorker(ctx context.Context, opts *options) error {
	key, err := opts.key()
	if err != nil {
		return err
	}
	tcfg, err := tlsconfig.Client(opts.TLS)
	if err != nil {
		return err
	}
	log := opts.logger(opts.IO.ErrOut)
	cfg := opts.config(key, log)
	cfg.TLS = tcfg
	mode := "builtin " + opts.Builtin
	// A --stdio command that fails again and again before it answers any
	// task stops the worker (drained), rather than fail every task of the
	// queue one attempt per restart; the context's cause says why.
	signalled := ctx
	ctx, broken := context.WithCancelCause(ctx)
	defer broken(nil)
	// brokenErr keeps why the command is broken even if a signal ended
	// the run first (the cause is then the signal's).
	var brokenErr atomic.Pointer[error]
	switch {
	case opts.Stdio:
		mode = "stdio " + strings.Join(opts.Command, " ")
		scfg := opts.stdioConfig(log)
		scfg.Broken = func(err error) {
			log.Error("stopping: the --stdio command cannot run here; its tasks go back to the master", "err", err)
			brokenErr.Store(&err)
			broken(worker.GiveBackNow(err))
		}
		children, err := worker.NewStdio(scfg)
		if err != nil {
			return err
		}
		defer func() {
			if err := children.Close(); err != nil {
				log.Warn("stopping children", "err", err)
			}
		}()
		cfg.Handler = children.Handle
		// Up to Slots run at once, as the children hold them: one each,
		// more while those that take tasks ahead answer quickly.
		cfg.Concurrency, cfg.Capacity = children.Slots(), children.Capacity
	default:
		if opts.Builtin == "" {
			mode = "command " + strings.Join(opts.Command, " ")
		}
		if cfg.Handler, err = opts.handler(); err != nil {
			return err
		}
	}
	log.Info("starting", "server", opts.Server, "queue", opts.Tasks, "run", mode, "concurrency", opts.Concurrency)
	stopLog := context.AfterFunc(signalled, func() {
		log.Info("signal received: draining; a second signal exits at once")
	})
	defer stopLog()

	err = worker.Run(ctx, cfg)
	if b := brokenErr.Load(); err == nil && b != nil {
		return *b // the --stdio command is broken, whatever stopped the run first
	}
	if errors.Is(err, auth.ErrAuthFailed) {
		return fmt.Errorf("%w (the key must be the master's: check --authkey-file, QM_AUTHKEY or --authkey)", err)
	}
	return err
}
