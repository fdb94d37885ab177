package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// failoverTarget is issue 15's bound on the failover gap.
const failoverTarget = 10 * time.Second

// failoverOptions are the flags of qbench failover.
type failoverOptions struct {
	// Bin is the directory holding qmaster and qworker.
	Bin string
	// Cycles is how many times the tasks stream's leader is killed.
	Cycles int
	// Rate is the producer's pace, in tasks per second.
	Rate int
	// Single puts one task a call, without an idempotency key, as a
	// Python client's put does.
	Single bool
	// Workers is how many qworker processes run.
	Workers int
	// Lease is each qmaster's --lease, JetStream's AckWait: how long the
	// tasks leased through a dead gateway wait before they run again.
	Lease time.Duration
	// Steady is how long tasks flow before each kill, and after the last.
	Steady time.Duration
	// Down is how long a killed node stays down before it is restarted.
	Down time.Duration
	// Timeout bounds the whole run.
	Timeout time.Duration
	// Command is the command line, for the report.
	Command string
}

func (o *failoverOptions) validate() error {
	switch {
	case o.Cycles < 1 || o.Workers < 1:
		return errors.New("--cycles and --workers must be at least 1")
	case o.Rate < 1 || o.Rate > 100000:
		return errors.New("--rate must be 1 to 100000 tasks/s")
	case o.Lease < time.Second:
		return errors.New("--lease must be at least 1s")
	case o.Steady < time.Second || o.Down < 0:
		return errors.New("--steady must be at least 1s, and --down not negative")
	case o.Timeout <= 0:
		return errors.New("--timeout must be positive")
	}
	return nil
}

func newFailoverCmd() *cobra.Command {
	o := &failoverOptions{}
	cmd := &cobra.Command{
		Use:   "failover [flags]",
		Short: "Measure the gap in results when the node leading the tasks stream is killed",
		Long: `failover measures how long results stop when a qm cluster loses the
node leading its tasks (issue 15's failover gap, target at most 10s).

It starts three qmasters on loopback, each embedding a node of one
JetStream cluster (--cluster-listen, --cluster-peers, a temporary
--data-dir, --lease), and --workers qworker --builtin echo processes, each
given all three addresses. A producer puts tasks at --rate a second through
the first qmaster, with an idempotency key each (so that a put retried
during a failover stores nothing twice), and collects their results through
it.

Each cycle: tasks flow for --steady; the node leading the tasks stream is
found (moved off the producer's node if it is there) and SIGKILLed; after
--down it is restarted, and the cycle ends once its replicas of the tasks
and results streams are current again. After the last cycle tasks flow for
--steady more, the producer stops, and every result is waited for.

Reported per cycle: the gap, the longest stretch with no result arriving
from the last result before the kill until the next kill (or the end); the
time from the kill to the first result after it, and to the first result of
a task put after it; the longest a batch of the producer took to be put
(from its first send, failed sends retried, from a second before the kill
on); how many tasks had a second result. Then the median and max gap,
and whether every task had exactly one result. A task lost, or a result
carrying an error, fails the run. A task with two results is reported
(which cycle, which workers, which attempts) but does not fail it: a qmaster
killed after it stored a worker's results and before it acked their tasks
leaves them to run again once their lease runs out (docs/SCALING.md), as
qmaster map, which drops the second result, expects. Everything it started is stopped at the end, on error and on Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			rep, err := runFailover(cmd.Context(), o, cmd.ErrOrStderr())
			if err != nil {
				return err // the cycles done so far are in the progress lines
			}
			fmt.Fprint(cmd.OutOrStdout(), rep.markdown())
			return rep.check()
		},
		SilenceUsage: true, SilenceErrors: true,
	}
	fl := cmd.Flags()
	fl.StringVar(&o.Bin, "bin", "bin", "`dir`ectory holding qmaster and qworker")
	fl.IntVar(&o.Cycles, "cycles", 3, "how many times the tasks stream's leader is killed")
	fl.IntVar(&o.Rate, "rate", 200, "tasks put per second")
	fl.BoolVar(&o.Single, "single", false, "put one task a call, without an idempotency key (as a Python client's put does)")
	fl.IntVar(&o.Workers, "workers", 2, "qworker processes")
	// qmaster's own default: the figure a user of the defaults gets.
	fl.DurationVar(&o.Lease, "lease", queue.DefaultLease, "qmaster --lease (JetStream's AckWait)")
	fl.DurationVar(&o.Steady, "steady", 5*time.Second, "how long tasks flow before each kill, and after the last")
	fl.DurationVar(&o.Down, "down", 3*time.Second, "how long a killed node stays down")
	fl.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "bound on the whole run")
	o.Command = "qbench " + strings.Join(os.Args[1:], " ")
	return cmd
}

// failoverCycle is one kill of the tasks stream's leader.
type failoverCycle struct {
	Victim      string        // the node killed
	LedResults  bool          // it also led the results stream
	Gap         time.Duration // longest stretch with no result around the kill
	FirstResult time.Duration // kill to the first result after it
	FirstNew    time.Duration // kill to the first result of a task put after it
	Current     time.Duration // restart to its replicas current again
	LongestPut  time.Duration // the longest a batch took to be put, retries included
	FailedPuts  int           // sends of a batch that failed and were sent again
	PutErrors   []string      // the first few failed sends: when (from the kill), how long each took, why
	NoResult    bool          // no result came in the cycle's window
	Twice       int           // second results that came after this kill

	kill, restart, end time.Time
}

// failoverReport is what one run of qbench failover measured.
type failoverReport struct {
	opts     *failoverOptions
	Baseline time.Duration // longest stretch with no result before the first kill
	Cycles   []failoverCycle
	Put      int // tasks put (each acknowledged by the gateway)
	Results  int // results received, duplicates included
	Lost     int // tasks with no result
	Dup      int // tasks with more than one result
	Failed   int // results carrying an error
	Twice    []string
	Drain    time.Duration
}

// failoverClock collects what the producer and the collector saw.
type failoverClock struct {
	mu       sync.Mutex
	putAt    []time.Time // per task, when its put was first sent
	arrivals []time.Time // per result received, in order
	arrival  []int       // the task of each arrival
	count    []int       // results per task
	first    []string    // per task, the worker and attempt of its first result
	twice    []twice     // each further result
	failed   int
	put      int // tasks whose put was acknowledged
	puts     []putCall
}

// twice is a result for a task that already had one.
type twice struct {
	at   time.Time
	what string // the task and both results' worker and attempt
}

// putCall is one batch the producer put: when it was first sent, how long
// until the gateway took it, and how many sends failed before.
type putCall struct {
	at     time.Time
	took   time.Duration
	failed int
	errs   []failedSend
}

// failedSend is a send of a batch that failed: when it was sent, how long
// it took to fail, and why.
type failedSend struct {
	at   time.Time
	took time.Duration
	err  string
}

// runFailover runs the failover benchmark. Whatever happens, the
// processes it started are stopped before it returns.
func runFailover(ctx context.Context, o *failoverOptions, log io.Writer) (rep *failoverReport, err error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	b, err := newBench(&options{Bin: o.Bin}, log)
	if err != nil {
		return nil, err
	}
	defer b.close()
	rep = &failoverReport{opts: o}

	lease := o.Lease.String()
	nodes, err := b.startCluster(ctx, b.tmp, true, "--lease", lease)
	defer stopNodes(nodes)
	if err != nil {
		return rep, err
	}
	fmt.Fprintf(log, "qbench failover: three nodes serving at %s, %s, %s\n", nodes[0].addr, nodes[1].addr, nodes[2].addr)
	nc, err := nats.Connect("nats://"+nodes[0].natsAddr, nats.Token(jsqueue.SecretFromAuthkey([]byte(b.key))),
		nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return rep, fmt.Errorf("connect to %s's NATS port: %w", nodes[0].name, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return rep, err
	}
	c, err := b.dialQM(ctx, nodes[0].addr)
	if err != nil {
		return rep, err
	}
	defer c.Close()

	all := nodes[0].addr + "," + nodes[1].addr + "," + nodes[2].addr
	var workers []*proc
	defer func() { stopAll(workers) }()
	for i := range o.Workers {
		p, err := b.procs.start("qworker "+strconv.Itoa(i), []string{
			filepath.Join(b.opts.Bin, "qworker"), "--server", all, "--tasks", qmTasks, "--results", qmResults,
			"--log-level", "warn", "--name", "w" + strconv.Itoa(i), "--builtin", "echo",
		}, []string{"QM_AUTHKEY=" + b.key}, nil)
		if err != nil {
			return rep, err
		}
		workers = append(workers, p)
	}

	clock := &failoverClock{}
	flowCtx, stopFlow := context.WithCancel(ctx)
	stopPuts := make(chan struct{})
	var wg sync.WaitGroup
	putErr := make(chan error, 1)
	wg.Add(2)
	go func() { defer wg.Done(); putErr <- clock.produce(flowCtx, c, o.Rate, o.Single, stopPuts) }()
	go func() { defer wg.Done(); clock.collect(flowCtx, c) }()
	defer func() {
		stopFlow()
		wg.Wait()
	}()
	// The first results show the workers connected and the queues made.
	if err := waitFor(ctx, 60*time.Second, "the first results", func() bool {
		clock.mu.Lock()
		defer clock.mu.Unlock()
		return len(clock.arrivals) > 0
	}, workers...); err != nil {
		return rep, err
	}
	flowing := time.Now()
	for i := range o.Cycles {
		if err := sleepCtx(ctx, o.Steady); err != nil {
			return rep, err
		}
		if i == 0 {
			rep.Baseline = clock.longestStretch(flowing, time.Now())
		}
		cy, err := b.killLeader(ctx, js, nodes, o.Down)
		if err != nil {
			return rep, fmt.Errorf("cycle %d: %w", i+1, err)
		}
		rep.Cycles = append(rep.Cycles, cy)
		// The next kill, or the end, only once tasks put since this kill
		// have come back: the cycle's window holds the whole failover.
		if err := waitFor(ctx, clusterStartTimeout, "a result of a task put after the kill", func() bool {
			return clock.resultPutAfter(cy.kill)
		}, nodes[0].p); err != nil {
			return rep, fmt.Errorf("cycle %d: %w", i+1, err)
		}
		fmt.Fprintf(log, "qbench failover: cycle %d: killed %s; restarted after %s, its replicas current %s later; new tasks done %s after the kill\n",
			i+1, cy.Victim, o.Down, fmtSecs(cy.Current), fmtSecs(time.Since(cy.kill)))
	}
	if err := sleepCtx(ctx, o.Steady); err != nil {
		return rep, err
	}
	close(stopPuts)
	select {
	case err := <-putErr:
		if err != nil {
			return rep, err
		}
	case <-ctx.Done():
		return rep, ctx.Err()
	}
	putsEnded := time.Now()
	// Tasks leased through a killed gateway run again once its lease
	// (AckWait) has run out; a result stored twice would come soon after.
	drain := 3*o.Lease + 30*time.Second
	err = waitFor(ctx, drain, "every result", func() bool {
		clock.mu.Lock()
		defer clock.mu.Unlock()
		return clock.distinct() >= clock.put
	}, nodes[0].p)
	rep.Drain = time.Since(putsEnded)
	if err == nil {
		err = sleepCtx(ctx, o.Lease+time.Second)
	}
	stopFlow()
	wg.Wait()
	rep.fill(clock, putsEnded)
	return rep, err
}

// killLeader finds the node leading the tasks stream (moving it off the
// producer's node, nodes[0], if it is there), SIGKILLs it, restarts it after
// down, and waits until its replicas of the tasks and results streams are
// current again.
func (b *bench) killLeader(ctx context.Context, js jetstream.JetStream, nodes []*clusterNode, down time.Duration) (failoverCycle, error) {
	var cy failoverCycle
	var leaders map[string]string
	for tries := 0; ; tries++ {
		var err error
		if leaders, err = streamLeaders(ctx, js); err != nil {
			return cy, err
		}
		if leaders[qmTasks] != nodes[0].name || tries == 10 {
			break
		}
		// The producer goes through the first node: keep it, move the leader.
		_, _ = js.Conn().Request("$JS.API.STREAM.LEADER.STEPDOWN."+leaders["stream:"+qmTasks], nil, 5*time.Second)
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return cy, err
		}
	}
	var victim *clusterNode
	for _, n := range nodes[1:] {
		if n.name == leaders[qmTasks] {
			victim = n
		}
	}
	if victim == nil {
		return cy, fmt.Errorf("the tasks stream's leader %q stayed on the producer's node", leaders[qmTasks])
	}
	cy.Victim, cy.LedResults = victim.name, leaders[qmResults] == victim.name
	cy.kill = time.Now()
	_ = victim.p.cmd.Process.Kill()
	<-victim.p.done
	if err := sleepCtx(ctx, down); err != nil {
		return cy, err
	}
	cy.restart = time.Now()
	if err := b.startNode(victim); err != nil {
		return cy, err
	}
	if err := victim.waitServing(ctx); err != nil {
		return cy, err
	}
	err := waitFor(ctx, clusterStartTimeout, victim.name+"'s replicas to be current", func() bool {
		ok, err := replicasCurrent(ctx, js)
		return err == nil && ok
	}, victim.p)
	cy.Current = time.Since(cy.restart)
	return cy, err
}

// streamLeaders maps queue names (tasks, results) to the node leading
// their stream, and "stream:" + queue name to the stream's name. While a
// stream has no leader it asks again, for up to 30s.
func streamLeaders(ctx context.Context, js jetstream.JetStream) (map[string]string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := map[string]string{}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l := js.ListStreams(lctx)
		for si := range l.Info() {
			q := si.Config.Metadata["qm.queue"]
			if (q == qmTasks || q == qmResults) && si.Cluster != nil && si.Cluster.Leader != "" {
				out[q], out["stream:"+q] = si.Cluster.Leader, si.Config.Name
			}
		}
		err := l.Err()
		cancel()
		if out[qmTasks] != "" && out[qmResults] != "" {
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no leader for the tasks and results streams within 30s (%v)", err)
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// replicasCurrent reports whether the tasks and results streams have a
// leader and two replicas, both current.
func replicasCurrent(ctx context.Context, js jetstream.JetStream) (bool, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l := js.ListStreams(lctx)
	current := 0
	for si := range l.Info() {
		q := si.Config.Metadata["qm.queue"]
		if q != qmTasks && q != qmResults || si.Cluster == nil || si.Cluster.Leader == "" || len(si.Cluster.Replicas) != 2 {
			continue
		}
		ok := true
		for _, r := range si.Cluster.Replicas {
			ok = ok && r.Current && !r.Offline
		}
		if ok {
			current++
		}
	}
	return current == 2, l.Err()
}

// produce puts tasks at rate a second, until stop is closed: each a
// number, its idempotency key that number, its results to qmResults. A put
// that fails is sent again, the same tasks with the same keys, until it is
// taken; tasks that fell due meanwhile go in the next put. With single,
// each put is of one task, without a key.
func (fc *failoverClock) produce(ctx context.Context, c *wire.Client, rate int, single bool, stop <-chan struct{}) error {
	maxBatch := 500
	if single {
		maxBatch = 1
	}
	tick := max(time.Second/time.Duration(rate), 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	next := 0
	for {
		select {
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		due := int(time.Since(start).Seconds() * float64(rate))
		for next < due {
			k := min(due-next, maxBatch)
			items := make([]msgpack.RawMessage, k)
			keys := make([]string, k)
			now := time.Now()
			fc.mu.Lock()
			for i := range k {
				b, err := msgpack.Marshal(next + i)
				if err != nil {
					fc.mu.Unlock()
					return err
				}
				items[i], keys[i] = b, "f"+strconv.Itoa(next+i)
				fc.putAt = append(fc.putAt, now)
				fc.count = append(fc.count, 0)
				fc.first = append(fc.first, "")
			}
			fc.mu.Unlock()
			call := putCall{at: now}
			for {
				sent := time.Now()
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				opts := wire.PutOptions{ReplyTo: qmResults, Keys: keys}
				if single {
					opts.Keys = nil
				}
				_, err := c.PutRaw(pctx, qmTasks, items, opts)
				cancel()
				if err == nil {
					break
				}
				call.failed++
				call.errs = append(call.errs, failedSend{at: sent, took: time.Since(sent), err: err.Error()})
				if ctx.Err() != nil {
					return nil
				}
				if errors.Is(err, wire.ErrClosed) {
					return fmt.Errorf("put: %w", err)
				}
				if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
					return nil
				}
			}
			next += k
			call.took = time.Since(now)
			fc.mu.Lock()
			fc.put = next
			fc.puts = append(fc.puts, call)
			fc.mu.Unlock()
		}
	}
}

// collect takes results for good until ctx ends, noting when each came.
func (fc *failoverClock) collect(ctx context.Context, c *wire.Client) {
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		ts, err := c.Get(gctx, qmResults, wire.GetOptions{Max: 1000, Timeout: time.Second, NoAck: true})
		cancel()
		now := time.Now()
		if err != nil {
			_ = sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		fc.mu.Lock()
		for _, t := range ts {
			task := -1
			res, err := wire.DecodeResult(t.Payload)
			if err == nil && res.Error == "" {
				_ = wire.Unmarshal(res.Value, &task)
			}
			if task < 0 || task >= len(fc.count) {
				fc.failed++
				continue
			}
			who := fmt.Sprintf("%s attempt %d", res.Worker, res.Attempt)
			if fc.count[task] == 0 {
				fc.first[task] = who
			} else {
				fc.twice = append(fc.twice, twice{at: now, what: fmt.Sprintf("task %d: %s, then %s", task, fc.first[task], who)})
			}
			fc.count[task]++
			fc.arrivals = append(fc.arrivals, now)
			fc.arrival = append(fc.arrival, task)
		}
		fc.mu.Unlock()
	}
}

// resultPutAfter reports whether a task put after t has had a result.
func (fc *failoverClock) resultPutAfter(t time.Time) bool {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for k := len(fc.arrival) - 1; k >= 0; k-- {
		if fc.putAt[fc.arrival[k]].After(t) {
			return true
		}
	}
	return false
}

// distinct is how many tasks have had a result. fc.mu is held.
func (fc *failoverClock) distinct() int {
	n := 0
	for _, k := range fc.count {
		if k > 0 {
			n++
		}
	}
	return n
}

// longestStretch is the longest time with no result arriving between
// from and to, counting from the last arrival before from.
func (fc *failoverClock) longestStretch(from, to time.Time) time.Duration {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	g, _ := stretch(fc.arrivals, from, to)
	return g
}

// stretch is the longest gap between consecutive arrivals from the last
// one before from to the last one before to; none is true if nothing
// arrived in (from, to], and the gap then runs to to.
func stretch(arrivals []time.Time, from, to time.Time) (gap time.Duration, none bool) {
	i, _ := slices.BinarySearchFunc(arrivals, from, func(a, t time.Time) int { return a.Compare(t) })
	prev := from
	if i > 0 {
		prev = arrivals[i-1]
	}
	none = true
	for ; i < len(arrivals) && !arrivals[i].After(to); i++ {
		gap = max(gap, arrivals[i].Sub(prev))
		prev, none = arrivals[i], false
	}
	if none {
		gap = to.Sub(prev)
	}
	return gap, none
}

// fill computes the report's figures from what the clock saw; the last
// cycle's window ends when the puts did.
func (r *failoverReport) fill(fc *failoverClock, putsEnded time.Time) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	for i := range r.Cycles {
		cy := &r.Cycles[i]
		cy.end = putsEnded
		if i+1 < len(r.Cycles) {
			cy.end = r.Cycles[i+1].kill
		}
		cy.Gap, cy.NoResult = stretch(fc.arrivals, cy.kill, cy.end)
		for _, p := range fc.puts {
			// A put sent shortly before the kill may be the one it holds
			// up, so a cycle's puts start a second before it (and end a
			// second before the next).
			if p.at.After(cy.kill.Add(-time.Second)) && p.at.Before(cy.end.Add(-time.Second)) {
				cy.LongestPut = max(cy.LongestPut, p.took)
				cy.FailedPuts += p.failed
				for _, e := range p.errs {
					if len(cy.PutErrors) < 3 {
						cy.PutErrors = append(cy.PutErrors, fmt.Sprintf("sent at %+.2f s, failed after %s: %s",
							e.at.Sub(cy.kill).Seconds(), fmtSecs(e.took), e.err))
					}
				}
			}
		}
		for k, at := range fc.arrivals {
			if !at.After(cy.kill) {
				continue
			}
			if cy.FirstResult == 0 {
				cy.FirstResult = at.Sub(cy.kill)
			}
			if fc.putAt[fc.arrival[k]].After(cy.kill) {
				cy.FirstNew = at.Sub(cy.kill)
				break
			}
		}
	}
	r.Put, r.Results, r.Failed = fc.put, len(fc.arrivals), fc.failed
	for _, tw := range fc.twice {
		c := 0 // the cycle of the last kill before the second result
		for i := range r.Cycles {
			if r.Cycles[i].kill.Before(tw.at) {
				c = i + 1
			}
		}
		if c > 0 {
			r.Cycles[c-1].Twice++
		}
		r.Twice = append(r.Twice, fmt.Sprintf("cycle %d, %s", c, tw.what))
	}
	for _, k := range fc.count[:fc.put] {
		switch {
		case k == 0:
			r.Lost++
		case k > 1:
			r.Dup++
		}
	}
}

// gaps are the cycles' gaps, sorted.
func (r *failoverReport) gaps() []time.Duration {
	var g []time.Duration
	for _, cy := range r.Cycles {
		g = append(g, cy.Gap)
	}
	slices.Sort(g)
	return g
}

// check fails a run in which no kill happened, a task had no result or a
// result carried an error. A task with two results does not fail it: see
// the command's help.
func (r *failoverReport) check() error {
	switch {
	case len(r.Cycles) == 0:
		return errors.New("no kill happened")
	case r.Lost > 0 || r.Failed > 0:
		return fmt.Errorf("of %d tasks, %d lost; %d results failed", r.Put, r.Lost, r.Failed)
	}
	return nil
}

// markdown is the report as a table, with the settings and the command.
func (r *failoverReport) markdown() string {
	var b strings.Builder
	o := r.opts
	puts := " (each put with an idempotency key a task)"
	if o.Single {
		puts = " (a task a put, without a key)"
	}
	fmt.Fprintf(&b, "Failover: three qmasters embedding a JetStream cluster (fsync always), %d qworker --builtin echo, "+
		"%d tasks/s put through one qmaster%s, lease %s; the node leading the tasks stream SIGKILLed and restarted %s later, "+
		"%d times (`%s`).\n\n", o.Workers, o.Rate, puts, o.Lease, o.Down, o.Cycles, o.Command)
	b.WriteString("| cycle | killed | gap | kill → first result | kill → first result of a task put after it | longest put (failed sends) | restart → replicas current | second results |\n")
	b.WriteString("|---:|---|---:|---:|---:|---:|---:|---:|\n")
	for i, cy := range r.Cycles {
		victim := cy.Victim + " (tasks)"
		if cy.LedResults {
			victim = cy.Victim + " (tasks and results)"
		}
		gap := fmtSecs(cy.Gap)
		if cy.NoResult {
			gap += " (no result)"
		}
		firstNew := fmtSecs(cy.FirstNew)
		if cy.FirstNew == 0 {
			firstNew = "none"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s (%d) | %s | %d |\n", i+1, victim, gap, fmtSecs(cy.FirstResult), firstNew,
			fmtSecs(cy.LongestPut), cy.FailedPuts, fmtSecs(cy.Current), cy.Twice)
	}
	for i, cy := range r.Cycles {
		if len(cy.PutErrors) > 0 {
			fmt.Fprintf(&b, "\nCycle %d, failed puts: %s.", i+1, strings.Join(cy.PutErrors, "; "))
		}
	}
	b.WriteString("\n")
	if g := r.gaps(); len(g) > 0 {
		med, worst := g[len(g)/2], g[len(g)-1]
		if len(g)%2 == 0 {
			med = (g[len(g)/2-1] + g[len(g)/2]) / 2
		}
		met := "met"
		if worst > failoverTarget {
			met = "not met"
		}
		fmt.Fprintf(&b, "\nGap: median %s, max %s (target ≤ %s: %s). Longest stretch with no result before the first kill: %s.\n",
			fmtSecs(med), fmtSecs(worst), fmtSecs(failoverTarget), met, fmtSecs(r.Baseline))
	}
	fmt.Fprintf(&b, "Tasks put: %d; results: %d; lost: %d; more than one result: %d; failed: %d (all in %s after the last put).\n",
		r.Put, r.Results, r.Lost, r.Dup, r.Failed, fmtSecs(r.Drain))
	if len(r.Twice) > 0 {
		const shown = 5
		more := ""
		if len(r.Twice) > shown {
			more = fmt.Sprintf("; and %d more", len(r.Twice)-shown)
		}
		fmt.Fprintf(&b, "Second results (the worker and attempt of each result): %s%s.\n", strings.Join(r.Twice[:min(shown, len(r.Twice))], "; "), more)
	}
	return b.String()
}

// fmtSecs formats d in seconds, to a hundredth.
func fmtSecs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
