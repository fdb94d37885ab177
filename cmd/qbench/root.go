package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// options are qbench's flags.
type options struct {
	N             int
	SlowN         int
	RTT           int
	MemN          int
	Sizes         []int
	Workers       []int
	Systems       []string
	Bin           string
	QMBatch       int
	QMConcurrency int
	Python        string
	PythonHelper  string
	RedisServer   string
	Out           string
	Command       string
}

// systems the bench knows, in table order.
var allSystems = []string{"qm", "qm-1req", "qm-defaults", "qm-stdio", "qm-command", "redis", "redis-1req", "python"}

// moreSystems are known but not run unless named in --systems: the
// durable and JetStream setups (docs/SCALING.md).
var moreSystems = []string{"qm-disk", "qm-disk-interval", "qm-js", "qm-js3", "qm-js-nosync", "qm-js-unpacked", "qm-js-unpacked-nosync", "qm-js3-unpacked", "qm-js-packed", "qm-js-packed-nosync", "qm-js3-packed", "nats", "nats-nosync", "nats-packed", "nats-packed-nosync"}

func newRootCmd() *cobra.Command {
	opts := &options{}
	cmd := &cobra.Command{
		Use:   "qbench [flags]",
		Short: "Measure qm against Python BaseManager and Redis lists on one workload",
		Long: `qbench runs one workload against qm and the baselines a user would
otherwise pick, in one run on this machine, and prints a table.

The workload: a producer puts N tasks with a payload of S bytes; W worker
processes take each task, echo it back as its result, and the producer
collects all N results. Reported: end-to-end tasks/s; p50 and p99 of the
round trip of a single task put alone and waited for (--rtt of them); and
the master's peak resident set (VmHWM). Then, separately, the resident set
of a master holding --mem-n ready 16-byte tasks and no worker.

The systems at one payload size and worker count run side by side: each
measures its throughput in turn, then they take 10 turns at the round
trips, so that a change in the machine's load (other tenants of a VM)
falls on all of them alike.

Systems (--systems):
  qm       bin/qmaster and bin/qworker --builtin echo; the producer puts
           --qm-batch tasks per call and gets results as many per call;
           qworker runs with --concurrency --qm-concurrency.
  qm-1req  the same binaries with one request per operation: one task per
           put, per get and per complete (qworker --concurrency 1
           --prefetch 0; its complete rides on its next get).
  qm-defaults
           what a user who starts as the README shows gets: the real
           qmaster map, fed lines, through qworkers with no flag but the
           handler.
  qm-stdio one qworker --stdio with W children of a Python handler,
           return x * x through the qmworker helper (--python-helper),
           fed the numbers 1 to N by the real qmaster map; the payload
           size does not apply.
  qm-command
           the same script in command mode: a Python process per task,
           W at once; it puts --slow-n/50 tasks and runs a twentieth of
           the round trips.
  redis    redis-server on loopback (no persistence), with qm's batching:
           the producer LPUSHes --qm-batch values per command and pops
           results with RPOP count or BRPOP; workers (qbench worker-redis)
           take up to --qm-concurrency tasks per BLMPOP COUNT and LPUSH
           their results in one command.
  redis-1req
           the same, one request per operation: workers BRPOP a task and
           LPUSH its result.
  python   the classic multiprocessing BaseManager scripts (stdlib only):
           a manager serving a task and a result queue, workers doing
           get(timeout=1) then put.

Run only when named (docs/SCALING.md), all batched as qm:
  qm-disk, qm-disk-interval
           qmaster --data-dir, fsync always or --fsync interval (100 ms).
  qm-js, qm-js-nosync
           one qmaster embedding a single JetStream node (--cluster-listen
           with itself as the only peer), fsync always or --fsync never;
           its other flags the defaults (--pack 32: a put's tasks, and a
           completion's results, stored up to 32 in a JetStream message).
  qm-js3   three such qmasters forming one JetStream cluster (each queue
           on all three, fsync always): the producer through the first,
           the workers through the second.
  qm-js-unpacked, qm-js-unpacked-nosync, qm-js3-unpacked
           the same with qmaster --pack 1: a task a message.
  qm-js-packed, qm-js-packed-nosync, qm-js3-packed
           the same with qmaster --pack set to the tasks of a pack in
           nats-packed (32 unless --qm-batch or --qm-concurrency is less).
  nats, nats-nosync
           JetStream used directly, as its users would at their best (a
           nats-server in its own process; workers qbench worker-nats).
  nats-packed, nats-packed-nosync
           the same with up to --qm-concurrency tasks in one message (at
           most --qm-batch and 64):
           the producer packs its puts, a worker fetches one message and
           publishes its results as one. Not qm's mapping (a message is
           a task there); what packing would gain (docs/SCALING.md).

The 1req systems and python put --slow-n tasks per measurement, the
others --n.

Build the binaries first (make build); --bin says where they are.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.validate(); err != nil {
				return err
			}
			return run(cmd.Context(), opts, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
		SilenceUsage: true, SilenceErrors: true,
	}
	cmd.CompletionOptions.DisableDefaultCmd = true
	fl := cmd.Flags()
	fl.IntVar(&opts.N, "n", 100000, "tasks per throughput measurement of the batched systems (qm, redis)")
	fl.IntVar(&opts.SlowN, "slow-n", 10000, "tasks per throughput measurement of the one-request-per-operation systems (qm-1req, python)")
	fl.IntVar(&opts.RTT, "rtt", 2000, "single-task round trips per measurement (after 100 unmeasured ones)")
	fl.IntVar(&opts.MemN, "mem-n", 1000000, "ready 16-byte tasks for the memory measurement (0 skips it)")
	fl.IntSliceVar(&opts.Sizes, "sizes", []int{16, 4096}, "payload sizes in bytes")
	fl.IntSliceVar(&opts.Workers, "workers", []int{1, 4}, "worker process counts")
	fl.StringSliceVar(&opts.Systems, "systems", allSystems, "systems to measure: "+strings.Join(allSystems, ", ")+"; also "+strings.Join(moreSystems, ", "))
	fl.StringVar(&opts.Bin, "bin", "bin", "`dir`ectory holding qmaster and qworker")
	fl.IntVar(&opts.QMBatch, "qm-batch", 1000, "tasks per put and per get of results in the batched runs (qm and redis)")
	fl.IntVar(&opts.QMConcurrency, "qm-concurrency", 32, "qworker --concurrency in the batched qm runs; also the most tasks a message of nats-packed carries")
	fl.StringVar(&opts.Python, "python", "python3", "Python interpreter")
	fl.StringVar(&opts.PythonHelper, "python-helper", "python", "`dir`ectory holding qmworker.py, the Python helper of the qm-stdio and qm-command rows")
	fl.StringVar(&opts.RedisServer, "redis-server", "redis-server", "redis-server binary")
	fl.StringVar(&opts.Out, "out", "", "also write the results into this markdown `file` (e.g. docs/PERFORMANCE.md), between its qbench markers")
	opts.Command = "qbench " + strings.Join(os.Args[1:], " ")

	cmd.AddCommand(newRedisWorkerCmd(), newProfileCmd(), newDriveCmd(), newNATSServerCmd(), newNATSWorkerCmd(), newFailoverCmd(), newFleetCmd(), newSimulateCmd())
	return cmd
}

func (o *options) validate() error {
	switch {
	case o.N < 1 || o.SlowN < 1:
		return errors.New("--n and --slow-n must be at least 1")
	case o.RTT < 1:
		return errors.New("--rtt must be at least 1")
	case o.MemN < 0:
		return errors.New("--mem-n must not be negative")
	case o.QMBatch < 1 || o.QMConcurrency < 1:
		return errors.New("--qm-batch and --qm-concurrency must be at least 1")
	}
	for _, s := range o.Sizes {
		if s < 0 {
			return errors.New("--sizes must not be negative")
		}
	}
	for _, w := range o.Workers {
		if w < 1 {
			return errors.New("--workers must be at least 1")
		}
	}
	for _, s := range o.Systems {
		if !slices.Contains(allSystems, s) && !slices.Contains(moreSystems, s) {
			return fmt.Errorf("--systems: unknown system %q (want %s)", s, strings.Join(append(allSystems, moreSystems...), ", "))
		}
	}
	return nil
}

// bench is one run: its options and every process it started.
type bench struct {
	// startSystem starts a system under test: b.start, or a stand-in in
	// tests of the bench's own logic.
	startSystem func(ctx context.Context, sys string, size, w int) (system, error)
	opts        *options
	procs       procs
	key         string // authkey of the masters it starts
	self        string // this executable, for the worker-redis mode
	tmp         string // scratch directory, for the Python scripts
	log         io.Writer
}

// run measures every cell and prints (and writes) the report. Whatever
// happens, the processes it started are stopped before it returns.
func run(ctx context.Context, opts *options, stdout, stderr io.Writer) error {
	b, err := newBench(opts, stderr)
	if err != nil {
		return err
	}
	defer b.close()
	rep := &report{opts: opts, Started: time.Now()}
	rep.describeMachine(opts)
	for _, size := range opts.Sizes {
		for _, w := range opts.Workers {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			cells, err := b.group(ctx, size, w)
			if err != nil {
				return err
			}
			rep.Cells = append(rep.Cells, cells...)
		}
	}
	if opts.MemN > 0 {
		for _, sys := range []string{"qm", "qm-delayed", "redis"} {
			want := strings.TrimSuffix(sys, "-delayed")
			if !slices.Contains(opts.Systems, want) && (want != "qm" || !slices.Contains(opts.Systems, "qm-1req")) {
				continue
			}
			fmt.Fprintf(stderr, "qbench: memory %s, %d 16-byte tasks ... ", sys, opts.MemN)
			m := memCell{System: sys, N: opts.MemN}
			var err error
			switch sys {
			case "qm":
				m.RSS, m.PeakRSS, err = b.qmMemory(ctx, opts.MemN, 16, 0)
			case "qm-delayed":
				m.RSS, m.PeakRSS, err = b.qmMemory(ctx, opts.MemN, 16, time.Hour)
			default:
				m.RSS, m.PeakRSS, err = b.redisMemory(ctx, opts.MemN, 16)
			}
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				m.Err = err.Error()
			}
			fmt.Fprintf(stderr, "%s\n", m.summary())
			rep.Mem = append(rep.Mem, m)
		}
	}
	rep.Finished = time.Now()
	md := rep.markdown()
	fmt.Fprint(stdout, md)
	if opts.Out != "" {
		if err := writeSection(opts.Out, md); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "qbench: wrote %s\n", opts.Out)
	}
	return nil
}

func newBench(opts *options, log io.Writer) (*bench, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	tmp, err := os.MkdirTemp("", "qbench-")
	if err != nil {
		return nil, err
	}
	b := &bench{opts: opts, key: hex.EncodeToString(k[:]), self: self, tmp: tmp, log: log}
	b.startSystem = b.start
	if slices.Contains(opts.Systems, "python") {
		if err := writePyScripts(tmp); err != nil {
			b.close()
			return nil, err
		}
	}
	return b, nil
}

// close stops every process the bench started and removes its scratch
// directory.
func (b *bench) close() {
	b.procs.stopAll()
	os.RemoveAll(b.tmp)
}

func isSkip(err error) bool {
	return errors.Is(err, errNoRedis) || errors.Is(err, errNoPython)
}

// newRedisWorkerCmd is the hidden worker process of the Redis runs.
func newRedisWorkerCmd() *cobra.Command {
	var (
		addr  string
		batch int
	)
	cmd := &cobra.Command{
		Use:    "worker-redis --addr HOST:PORT [--batch N]",
		Short:  "Take tasks (BRPOP, or BLMPOP COUNT N) and LPUSH them back as results, until killed",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return redisWorker(cmd.Context(), addr, batch)
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "", "redis-server `host:port`")
	cmd.Flags().IntVar(&batch, "batch", 1, "tasks per call: 1 BRPOPs, more BLMPOPs COUNT N")
	return cmd
}
