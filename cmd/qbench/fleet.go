package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
	"github.com/spf13/cobra"
	"github.com/vmihailenco/msgpack/v5"
)

// fleetOptions are the flags of qbench fleet.
type fleetOptions struct {
	Bin      string
	Nodes    int
	Gateways int
	Workers  int
	Queues   int
	Window   int
	Compute  time.Duration
	Warmup   time.Duration
	Duration time.Duration
	KillAt   time.Duration
	Lease    time.Duration
	Fsync    string
	Pack     int
	PackSpan string
}

func newFleetCmd() *cobra.Command {
	o := &fleetOptions{}
	cmd := &cobra.Command{
		Use:   "fleet [flags]",
		Short: "Run real JetStream nodes, qmaster --nats gateways and many worker goroutines, and measure them (the simulator's validation)",
		Long: `qbench fleet starts --nodes qmaster --cluster-* JetStream nodes, --gateways
qmaster --nats gateways spread over them, and, in this process, --workers
worker goroutines (the worker package, Concurrency 1, no prefetch), each
given every gateway (it dials one at random and moves on when it fails),
and one producer per queue that keeps --window/--queues tasks in flight:
it gets results (up to 1000 per call) and puts as many new tasks.

A task's round trip is from its put to its result's arrival at the
producer. Reported over --duration after --warmup: tasks/s, round trip
p50/p99, and the CPU time each kind of process used per task, read from
/proc: these are the per-operation costs the simulator (qbench simulate)
takes. With --kill-at the last gateway is SIGKILLed that long into the
measurement, and the redelivered tasks (attempt > 1) are counted by the
second in which a worker got them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return runFleet(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
		SilenceUsage: true, SilenceErrors: true,
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Bin, "bin", "bin", "`dir`ectory holding qmaster")
	fl.IntVar(&o.Nodes, "nodes", 1, "JetStream nodes (qmaster --cluster-*); queues are kept by min(3, nodes) of them")
	fl.IntVar(&o.Gateways, "gateways", 20, "qmaster --nats gateways")
	fl.IntVar(&o.Workers, "workers", 1000, "worker goroutines, Concurrency 1 each")
	fl.IntVar(&o.Queues, "queues", 1, "task queues (each with its result queue and producer); worker i takes from queue i mod --queues")
	fl.IntVar(&o.Window, "window", 2000, "tasks in flight, over all producers")
	fl.DurationVar(&o.Compute, "compute", 100*time.Millisecond, "what each task's handler sleeps")
	fl.DurationVar(&o.Warmup, "warmup", 5*time.Second, "unmeasured time before the measurement")
	fl.DurationVar(&o.Duration, "duration", 15*time.Second, "measured time")
	fl.DurationVar(&o.KillAt, "kill-at", 0, "SIGKILL the last gateway this long into the measurement (0: never)")
	fl.DurationVar(&o.Lease, "lease", 5*time.Second, "qmaster --lease, and so JetStream's AckWait")
	fl.StringVar(&o.Fsync, "fsync", "never", "the nodes' --fsync")
	fl.IntVar(&o.Pack, "pack", 0, "the gateways' --pack (0: qmaster's default)")
	fl.StringVar(&o.PackSpan, "pack-span", "", "the gateways' --pack-span (empty: qmaster's default; 0: fixed packs)")
	return cmd
}

func (o *fleetOptions) validate() error {
	switch {
	case o.Nodes < 1 || o.Gateways < 1 || o.Workers < 1 || o.Queues < 1:
		return errors.New("--nodes, --gateways, --workers and --queues must be at least 1")
	case o.Window < o.Queues:
		return errors.New("--window must be at least --queues")
	case o.Duration <= 0 || o.Warmup < 0 || o.Compute < 0 || o.KillAt < 0:
		return errors.New("--duration must be positive, --warmup, --compute and --kill-at not negative")
	case o.Pack < 0:
		return errors.New("--pack must not be negative")
	case o.KillAt > 0 && o.Gateways < 2:
		return errors.New("--kill-at needs at least 2 gateways")
	}
	return nil
}

// sampleEvery is the period of qbench fleet's load trace; qbench simulate
// replays it at the same period.
const sampleEvery = 500 * time.Millisecond

// fleetStats is what the workers and producers record during a run.
type fleetStats struct {
	mu        sync.Mutex
	measuring bool
	start     time.Time
	done      int
	rtts      []time.Duration
	waits     []time.Duration // put to handler start
	backs     []time.Duration // handler end to the result's arrival at the producer
	batches   []int           // results per get of a producer
	putTimes  []time.Duration // how long each put took
	getTimes  []time.Duration // how long each get of results took
	killed    time.Time
	redeliver []time.Duration // since the kill, of each redelivered task
	again     int             // tasks measured that ran at attempt > 1
}

func (s *fleetStats) result(put, ended time.Time) {
	now := time.Now()
	s.mu.Lock()
	if s.measuring {
		s.done++
		s.rtts = append(s.rtts, now.Sub(put))
		s.backs = append(s.backs, now.Sub(ended))
	}
	s.mu.Unlock()
}

func (s *fleetStats) started(put time.Time) {
	now := time.Now()
	s.mu.Lock()
	if s.measuring {
		s.waits = append(s.waits, now.Sub(put))
	}
	s.mu.Unlock()
}

func (s *fleetStats) redelivered() {
	now := time.Now()
	s.mu.Lock()
	if s.measuring {
		s.again++
	}
	if !s.killed.IsZero() {
		s.redeliver = append(s.redeliver, now.Sub(s.killed))
	}
	s.mu.Unlock()
}

func runFleet(ctx context.Context, o *fleetOptions, stdout, log io.Writer) error {
	var k [16]byte
	_, _ = rand.Read(k[:])
	b := &bench{opts: &options{Bin: o.Bin}, key: hex.EncodeToString(k[:]), log: log}
	defer b.procs.stopAll()
	tmp, err := os.MkdirTemp("", "qbench-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	replicas := strconv.Itoa(min(3, o.Nodes))
	lease := o.Lease.String()

	// The nodes, each also taking NATS clients; started together, since
	// none serves before a majority is up.
	var peers, natsURLs []string
	for range o.Nodes {
		cp, err := freePort()
		if err != nil {
			return err
		}
		np, err := freePort()
		if err != nil {
			return err
		}
		peers = append(peers, "127.0.0.1:"+strconv.Itoa(cp))
		natsURLs = append(natsURLs, "nats://127.0.0.1:"+strconv.Itoa(np))
	}
	var nodes []*proc
	for i := range o.Nodes {
		args := []string{filepath.Join(o.Bin, "qmaster"), "--addr", "127.0.0.1:0", "--shutdown-timeout", "1s",
			"--data-dir", filepath.Join(tmp, "node"+strconv.Itoa(i)), "--cluster-listen", peers[i],
			"--cluster-peers", strings.Join(peers, ","), "--nats-listen", strings.TrimPrefix(natsURLs[i], "nats://"),
			"--fsync", o.Fsync, "--lease", lease, "--replicas", replicas, "--log-level", "warn"}
		p, err := b.procs.start("node "+strconv.Itoa(i), args, []string{"QM_AUTHKEY=" + b.key}, nil)
		if err != nil {
			return err
		}
		nodes = append(nodes, p)
	}
	// The nodes log at warn: wait for their NATS ports instead.
	for i, u := range natsURLs {
		addr := strings.TrimPrefix(u, "nats://")
		if err := waitFor(ctx, 30*time.Second, "node "+strconv.Itoa(i), func() bool { return dialable(addr) }, nodes[i]); err != nil {
			return err
		}
	}
	fmt.Fprintf(log, "qbench fleet: %d node(s) up\n", o.Nodes)
	var gws []*proc
	var addrs []string
	for i := range o.Gateways {
		args := []string{"--nats", natsURLs[i%o.Nodes], "--lease", lease, "--replicas", replicas}
		if o.Pack > 0 {
			args = append(args, "--pack", strconv.Itoa(o.Pack))
		}
		if o.PackSpan != "" {
			args = append(args, "--pack-span", o.PackSpan)
		}
		p, addr, err := b.startQMaster(ctx, args...)
		if err != nil {
			return fmt.Errorf("gateway %d: %w", i, err)
		}
		gws = append(gws, p)
		addrs = append(addrs, addr)
	}
	fmt.Fprintf(log, "qbench fleet: %d gateways up\n", o.Gateways)

	st := &fleetStats{}
	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	errs := make(chan error, o.Workers+o.Queues)
	all := strings.Join(addrs, ",")
	for i := range o.Workers {
		q := strconv.Itoa(i % o.Queues)
		cfg := worker.Config{Server: all, Authkey: []byte(b.key), Name: "w" + strconv.Itoa(i),
			Tasks: "t" + q, Results: "r" + q, Concurrency: 1, MaxPrefetch: -1,
			Handler: func(ctx context.Context, t worker.Task) (any, error) {
				if t.Attempt > 1 {
					st.redelivered()
				}
				var at int64
				if err := wire.Unmarshal(t.Payload, &at); err != nil {
					return nil, fmt.Errorf("task payload: %w", err)
				}
				st.started(time.Unix(0, at))
				if o.Compute > 0 {
					select {
					case <-time.After(o.Compute):
					case <-ctx.Done():
						return nil, ctx.Err()
					}
				}
				// The put time and the handler's end, so that the
				// producer tells the result's way back from the rest.
				return []int64{at, time.Now().UnixNano()}, nil
			}}
		wg.Go(func() {
			if err := worker.Run(wctx, cfg); err != nil && wctx.Err() == nil {
				errs <- fmt.Errorf("worker: %w", err)
			}
		})
	}
	// The producers put and get through the first gateways (the last is
	// the one --kill-at kills).
	producing := min(o.Queues, max(1, o.Gateways-1))
	// The background: what the processes use with every worker waiting
	// and no task, measured before the producers start.
	const idleFor = 3 * time.Second
	time.Sleep(time.Second)
	idle0, err := fleetCPU(nodes, gws, producing)
	if err != nil {
		return err
	}
	time.Sleep(idleFor)
	idle1, err := fleetCPU(nodes, gws, producing)
	if err != nil {
		return err
	}
	idleCPU := idle1.sub(idle0)
	for q := range o.Queues {
		addr := addrs[q%producing]
		window := o.Window / o.Queues
		if q < o.Window%o.Queues {
			window++
		}
		wg.Go(func() {
			if err := fleetProducer(wctx, b, addr, strconv.Itoa(q), window, st); err != nil && wctx.Err() == nil {
				errs <- fmt.Errorf("producer %d: %w", q, err)
			}
		})
	}

	wait := func(d time.Duration) error {
		select {
		case <-time.After(d):
			return nil
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := wait(o.Warmup); err != nil {
		return err
	}
	cpu0, err := fleetCPU(nodes, gws, producing)
	if err != nil {
		return err
	}
	mach0, err := machineBusy()
	if err != nil {
		return err
	}
	st.mu.Lock()
	st.measuring, st.start = true, time.Now()
	st.mu.Unlock()
	// The other programs' load and the task rate, sampled every
	// sampleEvery (or later: this process may not get the CPU in time),
	// then resampled to exact periods: the trace qbench simulate
	// --external-trace replays.
	type sample struct {
		at    time.Duration // since the measurement's start
		other time.Duration // the other programs' CPU so far
		done  int
	}
	samples := []sample{{}}
	sampleDone := make(chan struct{})
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer func() { stopSampling(); <-sampleDone }()
	go func() {
		defer close(sampleDone)
		tick := time.NewTicker(sampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			c, err1 := fleetCPU(nodes, gws, producing)
			m, err2 := machineBusy()
			if err1 != nil || err2 != nil {
				continue
			}
			st.mu.Lock()
			done, at := st.done, time.Since(st.start)
			st.mu.Unlock()
			d := c.sub(cpu0)
			samples = append(samples, sample{at, m - mach0 - d.nodes - d.gateways - d.self, done})
		}
	}()
	if o.KillAt > 0 {
		if err := wait(min(o.KillAt, o.Duration)); err != nil {
			return err
		}
		victim := gws[len(gws)-1]
		st.mu.Lock()
		st.killed = time.Now()
		st.mu.Unlock()
		_ = syscall.Kill(-victim.pid(), syscall.SIGKILL)
		fmt.Fprintf(log, "qbench fleet: killed gateway %d\n", len(gws)-1)
	}
	if err := wait(o.Duration - min(o.KillAt, o.Duration)); err != nil {
		return err
	}
	st.mu.Lock()
	st.measuring = false
	took := time.Since(st.start)
	st.mu.Unlock()
	cpu1, err := fleetCPU(nodes, gws, producing)
	if err != nil {
		return err
	}
	mach1, err := machineBusy()
	if err != nil {
		return err
	}
	stopSampling()
	<-sampleDone
	stopWorkers()
	external, rates, stall := resample(samples, func(s sample) (time.Duration, time.Duration, int) { return s.at, s.other, s.done })
	wg.Wait()

	st.mu.Lock()
	defer st.mu.Unlock()
	slices.Sort(st.rtts)
	slices.Sort(st.waits)
	slices.Sort(st.backs)
	n := float64(st.done)
	perTask := func(d time.Duration) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/n/1e3)
	}
	cores := func(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()/took.Seconds()) }
	fmt.Fprintf(stdout, "qbench fleet: %d node(s), %d gateways, %d workers, %d queue(s), window %d, compute %s, fsync %s, %s measured\n\n",
		o.Nodes, o.Gateways, o.Workers, o.Queues, o.Window, o.Compute, o.Fsync, took.Round(time.Millisecond))
	fmt.Fprintf(stdout, "| tasks/s | RTT p50 | RTT p99 | node CPU/task | gateways CPU/task | client CPU/task | node cores | gateway cores | client cores |\n")
	fmt.Fprintf(stdout, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	d := cpu1.sub(cpu0)
	fmt.Fprintf(stdout, "| %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n", n/took.Seconds(),
		fmtDur(percentile(st.rtts, 0.50)), fmtDur(percentile(st.rtts, 0.99)),
		perTask(d.nodes), perTask(d.gateways), perTask(d.self), cores(d.nodes), cores(d.gateways), cores(d.self))
	fmt.Fprintf(stdout, "\nput to handler start: p50 %s, p99 %s; %d tasks started at attempt > 1\n",
		fmtDur(percentile(st.waits, 0.50)), fmtDur(percentile(st.waits, 0.99)), st.again)
	fmt.Fprintf(stdout, "handler end to the result at the producer: p50 %s, p99 %s\n",
		fmtDur(percentile(st.backs, 0.50)), fmtDur(percentile(st.backs, 0.99)))
	if others := o.Gateways - producing; others > 0 && n > 0 && o.KillAt == 0 {
		// A gateway the producers use serves its share of the workers
		// too, which the other gateways' mean stands for (the workers
		// dial gateways at random: about evenly, with many). A killed
		// gateway's time is lost, so runs with --kill-at go without.
		workers := (d.gateways - d.producing) / time.Duration(others) * time.Duration(producing)
		fmt.Fprintf(stdout, "the producers' part of the gateways' CPU: %s a task, %.0f%% of it (simulate's --gateway-worker-share %.2f)\n",
			perTask(d.producing-workers), 100*float64(d.producing-workers)/float64(d.gateways), 1-float64(d.producing-workers)/float64(d.gateways))
	}
	idle := func(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()/idleFor.Seconds()) }
	fmt.Fprintf(stdout, "idle (workers waiting, no task), cores: nodes %s, gateways %s, client %s\n", idle(idleCPU.nodes), idle(idleCPU.gateways), idle(idleCPU.self))
	slices.Sort(st.getTimes)
	slices.Sort(st.putTimes)
	sum := 0
	for _, b := range st.batches {
		sum += b
	}
	fmt.Fprintf(stdout, "producers: %d loops, %.0f results per get; get p50 %s p99 %s; put p50 %s p99 %s\n", len(st.batches),
		float64(sum)/float64(max(1, len(st.batches))), fmtDur(percentile(st.getTimes, 0.5)), fmtDur(percentile(st.getTimes, 0.99)),
		fmtDur(percentile(st.putTimes, 0.5)), fmtDur(percentile(st.putTimes, 0.99)))
	if len(rates) > 0 {
		fmt.Fprintf(stdout, "tasks/s every %s: min %.0f, max %.0f; longest gap between samples %s\n", sampleEvery, slices.Min(rates), slices.Max(rates), fmtDur(stall))
		tr := make([]string, len(external))
		for i, e := range external {
			tr[i] = strconv.FormatFloat(e, 'f', 2, 64)
		}
		fmt.Fprintf(stdout, "other programs' cores every %s (qbench simulate --external-trace): %s\n", sampleEvery, strings.Join(tr, ","))
	}
	ours := d.nodes + d.gateways + d.self
	fmt.Fprintf(stdout, "machine: %s cores busy, %s of them other processes'\n", cores(mach1-mach0), cores(mach1-mach0-ours))
	if !st.killed.IsZero() {
		fmt.Fprintf(stdout, "\nredelivered after the kill: %d\n", len(st.redeliver))
		fmt.Fprint(stdout, burstProfile(st.redeliver))
	}
	return nil
}

// burstProfile counts redeliveries by the second after the kill.
func burstProfile(ds []time.Duration) string {
	var counts []int
	for _, d := range ds {
		s := int(d / time.Second)
		for len(counts) <= s {
			counts = append(counts, 0)
		}
		counts[s]++
	}
	var sb strings.Builder
	for s, c := range counts {
		if c > 0 {
			fmt.Fprintf(&sb, "  %2d–%2d s: %d\n", s, s+1, c)
		}
	}
	return sb.String()
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// fleetProducer keeps window tasks of queue t<q> in flight: it puts them,
// then for every batch of results it gets, puts as many new tasks. Each
// task's payload is the time it was put.
func fleetProducer(ctx context.Context, b *bench, addr, q string, window int, st *fleetStats) error {
	c, err := b.dialQM(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	put := func(n int) error {
		for n > 0 {
			k := min(n, 1000)
			items := make([]msgpack.RawMessage, k)
			now, err := msgpack.Marshal(time.Now().UnixNano())
			if err != nil {
				return err
			}
			for i := range items {
				items[i] = now
			}
			if _, err := c.PutRaw(ctx, "t"+q, items, wire.PutOptions{ReplyTo: "r" + q}); err != nil {
				return fmt.Errorf("put: %w", err)
			}
			n -= k
		}
		return nil
	}
	if err := put(window); err != nil {
		return err
	}
	for {
		t0 := time.Now()
		ts, err := c.Get(ctx, "r"+q, wire.GetOptions{Max: 1000, Timeout: time.Second, NoAck: true})
		if err != nil {
			return fmt.Errorf("get results: %w", err)
		}
		t1 := time.Now()
		for _, t := range ts {
			var res wire.Result
			var at []int64 // put, handler end
			if err := wire.Unmarshal(t.Payload, &res); err != nil {
				return fmt.Errorf("decode result: %w", err)
			}
			if err := wire.Unmarshal(res.Value, &at); err != nil {
				return fmt.Errorf("decode result value: %w", err)
			}
			if len(at) != 2 {
				return fmt.Errorf("result value %v: want the put time and the handler's end", at)
			}
			st.result(time.Unix(0, at[0]), time.Unix(0, at[1]))
		}
		if err := put(len(ts)); err != nil {
			return err
		}
		st.mu.Lock()
		if st.measuring {
			st.batches = append(st.batches, len(ts))
			st.getTimes = append(st.getTimes, t1.Sub(t0))
			st.putTimes = append(st.putTimes, time.Since(t1))
		}
		st.mu.Unlock()
	}
}

// fleetCPUTimes are the CPU times used so far by each kind of process;
// producing is the part of gateways used by the gateways the producers
// put and get through (which serve workers too).
type fleetCPUTimes struct{ nodes, gateways, producing, self time.Duration }

func (a fleetCPUTimes) sub(b fleetCPUTimes) fleetCPUTimes {
	return fleetCPUTimes{a.nodes - b.nodes, a.gateways - b.gateways, a.producing - b.producing, a.self - b.self}
}

// fleetCPU reads the user and system time of the nodes, of the gateways
// still running, and of this process. A killed gateway's time is lost, so
// a run with --kill-at reports its gateways' CPU low.
func fleetCPU(nodes, gws []*proc, producing int) (fleetCPUTimes, error) {
	var t fleetCPUTimes
	for _, p := range nodes {
		d, err := procCPU(p.pid())
		if err != nil {
			return t, err
		}
		t.nodes += d
	}
	for i, p := range gws {
		if p.exited() {
			continue
		}
		d, err := procCPU(p.pid())
		if err == nil {
			t.gateways += d
			if i < producing {
				t.producing += d
			}
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return t, err
	}
	t.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return t, nil
}

// procCPU is a process's user and system time, from /proc/PID/stat (in
// clock ticks of 1/100 s, as on every Linux qm runs on).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	// The command name, in parentheses, may hold spaces: count from after it.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// dialable reports whether something accepts TCP connections at addr.
func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// machineBusy is the CPU time the machine's CPUs have spent on anything
// but idling, from /proc/stat's first line (clock ticks of 1/100 s).
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("/proc/stat: no cpu line")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal: all but idle and iowait.
	for i, v := range f[1:9] {
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		busy += n
	}
	return time.Duration(busy) * 10 * time.Millisecond, nil
}

// resample turns samples of cumulative CPU time and results, taken at
// uneven times, into the other programs' cores and the task rate over
// each sampleEvery from the start (linear between samples), and returns
// the longest gap between two samples.
func resample[S any](samples []S, get func(S) (at, cpu time.Duration, done int)) (cores, rates []float64, gap time.Duration) {
	type point struct {
		at   time.Duration
		cpu  float64
		done float64
	}
	ps := make([]point, len(samples))
	for i, s := range samples {
		at, cpu, done := get(s)
		ps[i] = point{at, cpu.Seconds(), float64(done)}
		if i > 0 {
			gap = max(gap, at-ps[i-1].at)
		}
	}
	if len(ps) < 2 {
		return nil, nil, gap
	}
	at := func(t time.Duration) point {
		i := 1
		for i < len(ps)-1 && ps[i].at < t {
			i++
		}
		a, b := ps[i-1], ps[i]
		f := 0.0
		if b.at > a.at {
			f = float64(t-a.at) / float64(b.at-a.at)
		}
		return point{t, a.cpu + f*(b.cpu-a.cpu), a.done + f*(b.done-a.done)}
	}
	end := ps[len(ps)-1].at
	for t := time.Duration(0); t+sampleEvery <= end; t += sampleEvery {
		a, b := at(t), at(t+sampleEvery)
		cores = append(cores, max(0, (b.cpu-a.cpu)/sampleEvery.Seconds()))
		rates = append(rates, (b.done-a.done)/sampleEvery.Seconds())
	}
	return cores, rates, gap
}
