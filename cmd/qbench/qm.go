package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// Queue names of the qm runs.
const (
	qmTasks   = "tasks"
	qmResults = "results"
)

// qmMode is how the qm producer and workers talk to the master.
type qmMode struct {
	// batch is how many tasks one put and one get of results carry; 1 is
	// one request per operation.
	batch int
	// concurrency is qworker's --concurrency: how many tasks each worker
	// runs at once.
	concurrency int
	// defaults runs qworker with no flag but the queues and the handler:
	// what a user who starts as the README shows gets.
	defaults bool
	// storage says where qmaster keeps the queues: "" in memory, "disk"
	// in --data-dir (fsync always), "disk-interval" there with --fsync
	// interval (every 100 ms), "jetstream" in a JetStream node
	// embedded in it (--cluster-listen with itself as the only peer;
	// fsync always), "jetstream-nosync" the same with --fsync never,
	// "jetstream3" in a cluster of three such qmasters (fsync always),
	// the producer through the first and the workers through the second.
	storage string
	// pack, if set, is the JetStream setups' qmaster --pack (0: its
	// default, 32; 1: off).
	pack int
	// python, if not "", runs one qworker whose handler is the Python
	// script sq.py (x * x, through the qmworker helper), with --stdio or
	// in command mode, --concurrency W; its tasks are numbers, put by the
	// real qmaster map.
	python string
}

// storageArgs are qmaster's flags for storage, in the new directory dir.
func storageArgs(storage, dir string) ([]string, error) {
	switch storage {
	case "":
		return nil, nil
	case "disk":
		return []string{"--data-dir", dir}, nil
	case "disk-interval":
		return []string{"--data-dir", dir, "--fsync", "interval"}, nil
	case "jetstream", "jetstream-nosync":
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		peer := "127.0.0.1:" + strconv.Itoa(port)
		args := []string{"--data-dir", dir, "--cluster-listen", peer, "--cluster-peers", peer}
		if storage == "jetstream-nosync" {
			args = append(args, "--fsync", "never")
		}
		return args, nil
	}
	return nil, fmt.Errorf("unknown storage %q", storage)
}

// packArgs are qmaster's flags for mode.pack.
func packArgs(mode qmMode) []string {
	if mode.pack == 0 {
		return nil
	}
	return []string{"--pack", strconv.Itoa(mode.pack)}
}

// Python handler modes of qmMode.python.
const (
	pyStdio   = "stdio"
	pyCommand = "command"
)

// sqScript is the handler of the Python qworker rows.
const sqScript = `from qmworker import task


@task
def square(x):
    return x * x
`

var listeningRE = regexp.MustCompile(`msg=listening addr=(127\.0\.0\.1:\d+)`)

// startQMaster starts bin/qmaster on a free loopback port and returns it
// with its address once it listens.
func (b *bench) startQMaster(ctx context.Context, extra ...string) (*proc, string, error) {
	p, err := b.procs.start("qmaster", append([]string{
		filepath.Join(b.opts.Bin, "qmaster"), "--addr", "127.0.0.1:0", "--shutdown-timeout", "1s",
	}, extra...), []string{"QM_AUTHKEY=" + b.key}, nil)
	if err != nil {
		return nil, "", err
	}
	var addr string
	err = waitFor(ctx, 10*time.Second, "qmaster to listen", func() bool {
		m := listeningRE.FindStringSubmatch(p.stderr.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	}, p)
	if err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// dialQM connects a producer to the master at addr.
func (b *bench) dialQM(ctx context.Context, addr string) (*wire.Client, error) {
	return wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(b.key), Role: "producer", Name: "qbench"})
}

// startQWorkers starts w qworker processes running the echo built-in and
// waits until the master sees them all. With one request per operation
// (mode.batch 1) they prefetch nothing, so that each get takes one task.
func (b *bench) startQWorkers(ctx context.Context, c *wire.Client, addr string, w int, mode qmMode) ([]*proc, error) {
	var ps []*proc
	env := []string{"QM_AUTHKEY=" + b.key}
	var handler []string
	if mode.python != "" {
		py, err := exec.LookPath(b.opts.Python)
		if err != nil {
			return nil, errNoPython
		}
		script := filepath.Join(b.tmp, "sq.py")
		if err := os.WriteFile(script, []byte(sqScript), 0o644); err != nil {
			return nil, err
		}
		helper, err := filepath.Abs(b.opts.PythonHelper)
		if err != nil {
			return nil, err
		}
		env = append(env, "PYTHONPATH="+helper, "PYTHONDONTWRITEBYTECODE=1")
		if mode.python == pyStdio {
			handler = append(handler, "--stdio")
		}
		// One qworker, with W children (or W commands at once): as many
		// Python processes as the BaseManager row has workers.
		handler = append(handler, "--concurrency", strconv.Itoa(w), "--", py, script)
		w = 1
	}
	for i := range w {
		args := []string{
			filepath.Join(b.opts.Bin, "qworker"), "--server", addr,
			"--tasks", qmTasks, "--results", qmResults, "--log-level", "warn",
		}
		switch {
		case mode.python != "":
		case mode.defaults:
		case mode.batch == 1:
			args = append(args, "--concurrency", "1", "--prefetch", "0")
		default:
			args = append(args, "--concurrency", strconv.Itoa(mode.concurrency))
		}
		if handler != nil {
			args = append(args, handler...)
		} else {
			args = append(args, "--builtin", "echo")
		}
		p, err := b.procs.start("qworker "+strconv.Itoa(i), args, env, nil)
		if err != nil {
			return ps, err
		}
		ps = append(ps, p)
	}
	var werr error
	err := waitFor(ctx, 10*time.Second, "qworkers to connect", func() bool {
		cs, err := c.Clients(ctx)
		if err != nil {
			werr = err
			return true
		}
		n := 0
		for _, ci := range cs {
			if ci.Role == "worker" {
				n++
			}
		}
		return n >= w
	}, ps...)
	if werr != nil {
		return ps, werr
	}
	return ps, err
}

// qmSystem is a qmaster with its qworkers and a connected producer.
type qmSystem struct {
	processes
	c       *wire.Client
	mode    qmMode
	payload msgpack.RawMessage
	// With mode.defaults the throughput is that of the real command: the
	// user's `qmaster map`, run at addr with the bench's key.
	qmaster, addr, key string
	size               int
	dir                string // the master's data directory, if any
	// nodes are the three qmasters of the jetstream3 storage; server is
	// the first, the producer's.
	nodes []*clusterNode
	// numeric: the tasks are numbers, for the Python square handler.
	numeric bool
}

// startQM starts a master and w workers in mode, for payloads of size bytes.
func (b *bench) startQM(ctx context.Context, mode qmMode, size, w int) (sys system, err error) {
	s := &qmSystem{mode: mode, qmaster: filepath.Join(b.opts.Bin, "qmaster"), key: b.key, size: size}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.numeric = mode.python != ""
	if s.numeric {
		s.payload, err = msgpack.Marshal(12)
	} else {
		s.payload, err = qmPayload(size)
	}
	if err != nil {
		return nil, err
	}
	if mode.storage != "" {
		if s.dir, err = os.MkdirTemp("", "qbench-"); err != nil {
			return nil, err
		}
	}
	if mode.storage == "jetstream3" {
		if err := b.startQMCluster(ctx, s, w); err != nil {
			return nil, err
		}
		return s, nil
	}
	extra, err := storageArgs(mode.storage, s.dir)
	if err != nil {
		return nil, err
	}
	extra = append(extra, packArgs(mode)...)
	master, addr, err := b.startQMaster(ctx, extra...)
	if err != nil {
		return nil, err
	}
	s.server, s.addr = master, addr
	if s.c, err = b.dialQM(ctx, addr); err != nil {
		return nil, err
	}
	s.workers, err = b.startQWorkers(ctx, s.c, addr, w, mode)
	if err != nil {
		return nil, err
	}
	if mode.python != "" {
		// The workers are connected but their Python processes may still
		// be starting (a second or more through a version manager's shim
		// on a busy machine): a few tasks first, as a worker pool that
		// has been up a while would have run.
		if _, err := mapThroughput(ctx, s.qmaster, s.addr, s.key, 2*w, size, true); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	return s, nil
}

// startQMCluster starts the jetstream3 setup of s: three qmasters, each
// embedding a node of one JetStream cluster (queues kept by all three,
// fsync always), the producer connected to the first and w workers to the
// second. The first is s.server, whose peak RSS the report shows.
func (b *bench) startQMCluster(ctx context.Context, s *qmSystem, w int) error {
	nodes, err := b.startCluster(ctx, s.dir, false, packArgs(s.mode)...)
	s.nodes = nodes
	if err != nil {
		return err
	}
	s.server, s.addr = nodes[0].p, nodes[0].addr
	if s.c, err = b.dialQM(ctx, s.addr); err != nil {
		return err
	}
	// A gateway lists only its own clients: count the workers through
	// theirs.
	wc, err := b.dialQM(ctx, nodes[1].addr)
	if err != nil {
		return err
	}
	defer wc.Close()
	s.workers, err = b.startQWorkers(ctx, wc, nodes[1].addr, w, s.mode)
	return err
}

func (s *qmSystem) throughput(ctx context.Context, n int) (time.Duration, error) {
	if s.mode.defaults || s.numeric {
		return mapThroughput(ctx, s.qmaster, s.addr, s.key, n, s.size, s.numeric)
	}
	return qmThroughput(ctx, s.c, s.mode.batch, n, s.payload)
}

// mapThroughput runs `qmaster map` at addr, as a user would, on n input
// lines of size bytes each (each a string task), or of the numbers 1 to n,
// and returns how long it took to print every result.
func mapThroughput(ctx context.Context, qmaster, addr, key string, n, size int, numeric bool) (time.Duration, error) {
	line := append(bytes.Repeat([]byte{'x'}, size), '\n')
	in := bytes.Repeat(line, n)
	if numeric {
		in = in[:0]
		for i := 1; i <= n; i++ {
			in = strconv.AppendInt(in, int64(i), 10)
			in = append(in, '\n')
		}
	}
	cmd := exec.CommandContext(ctx, qmaster, "map", "--server", addr, "--tasks", qmTasks)
	cmd.Env = append(os.Environ(), "QM_AUTHKEY="+key)
	cmd.Stdin = bytes.NewReader(in)
	var out countWriter
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("qmaster map: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	took := time.Since(start)
	if out.lines != n {
		return 0, fmt.Errorf("qmaster map printed %d results for %d inputs", out.lines, n)
	}
	return took, nil
}

// countWriter counts the lines written to it.
type countWriter struct{ lines int }

func (w *countWriter) Write(p []byte) (int, error) {
	w.lines += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

func (s *qmSystem) roundTrips(ctx context.Context, count int) ([]time.Duration, error) {
	if s.mode.python == pyCommand {
		// A Python start per task: a twentieth of the round trips (at
		// least one a turn) already takes longer than all the others.
		count = max(count/commandRTTShare, 1)
	}
	return qmRoundTrips(ctx, s.c, count, s.payload)
}

// commandRTTShare is the share of the round trips the qm-command row runs.
const commandRTTShare = 20

func (s *qmSystem) close() {
	if s.c != nil {
		s.c.Close()
	}
	if s.nodes != nil {
		stopAll(s.workers)
		stopNodes(s.nodes)
	} else {
		s.stop()
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// qmPayload is a msgpack byte string of size bytes.
func qmPayload(size int) (msgpack.RawMessage, error) {
	return msgpack.Marshal(bytes.Repeat([]byte{'x'}, size))
}

// qmThroughput puts n tasks, batch per put, while it collects their n
// results, batch per get, and returns how long that took. Puts and gets run
// concurrently, on two streams of the one connection.
func qmThroughput(ctx context.Context, c *wire.Client, batch, n int, payload msgpack.RawMessage) (time.Duration, error) {
	items := make([]msgpack.RawMessage, min(batch, n))
	for i := range items {
		items[i] = payload
	}
	start := time.Now()
	err := both(ctx, func(gctx context.Context) error {
		for sent := 0; sent < n; {
			k := min(batch, n-sent)
			if _, err := c.PutRaw(gctx, qmTasks, items[:k], wire.PutOptions{ReplyTo: qmResults}); err != nil {
				return fmt.Errorf("put: %w", err)
			}
			sent += k
		}
		return nil
	}, func(gctx context.Context) error {
		for got := 0; got < n; {
			ts, err := c.Get(gctx, qmResults, wire.GetOptions{Max: batch, Timeout: time.Second, NoAck: true})
			if err != nil {
				return fmt.Errorf("get results: %w", err)
			}
			if got == 0 && len(ts) > 0 {
				if err := checkQMResult(ts[0], payload); err != nil {
					return err
				}
			}
			got += len(ts)
		}
		return nil
	})
	return time.Since(start), err
}

// checkQMResult checks that a result carries the task's payload back.
func checkQMResult(t wire.Task, payload []byte) error {
	var res wire.Result
	if err := wire.Unmarshal(t.Payload, &res); err != nil {
		return fmt.Errorf("decode result: %w", err)
	}
	if res.Error != "" {
		return fmt.Errorf("task %d failed: %s", res.TaskID, res.Error)
	}
	if !bytes.Equal(res.Value, payload) {
		return fmt.Errorf("task %d: result %x is not the payload", res.TaskID, res.Value)
	}
	return nil
}

// rttWarmup round trips run before the measured ones.
const rttWarmup = 100

// qmRoundTrips puts one task and waits for its result, count times, and
// returns each round trip. The put and the get of the result go in one
// call (PutThenGet), as a producer waiting for each result would send them.
func qmRoundTrips(ctx context.Context, c *wire.Client, count int, payload msgpack.RawMessage) ([]time.Duration, error) {
	items := []msgpack.RawMessage{payload}
	out := make([]time.Duration, 0, count)
	for range count {
		start := time.Now()
		_, ts, putErr, err := c.PutThenGet(ctx, qmTasks, items, wire.PutOptions{ReplyTo: qmResults},
			qmResults, wire.GetOptions{Max: 1, Timeout: 10 * time.Second, NoAck: true})
		if putErr != nil {
			return nil, fmt.Errorf("put: %w", putErr)
		}
		if err != nil {
			return nil, fmt.Errorf("get result: %w", err)
		}
		if len(ts) != 1 {
			return nil, errors.New("no result within 10s")
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

// qmMemory puts n tasks of size bytes into a fresh master, with no
// worker, and returns its resident set then and its peak. With a delay
// the tasks are put delayed by that long (held in the delay heap, not
// ready).
func (b *bench) qmMemory(ctx context.Context, n, size int, delay time.Duration) (rss, hwm int64, err error) {
	master, addr, err := b.startQMaster(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer master.stop()
	c, err := b.dialQM(ctx, addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	payload, err := qmPayload(size)
	if err != nil {
		return 0, 0, err
	}
	items := make([]msgpack.RawMessage, 1000)
	for i := range items {
		items[i] = payload
	}
	for sent := 0; sent < n; {
		k := min(len(items), n-sent)
		if _, err := c.PutRaw(ctx, qmTasks, items[:k], wire.PutOptions{ReplyTo: qmResults, Delay: delay}); err != nil {
			return 0, 0, fmt.Errorf("put: %w", err)
		}
		sent += k
	}
	st, err := c.Stats(ctx, qmTasks)
	if err != nil {
		return 0, 0, err
	}
	if held := st[0].Ready + st[0].Delayed; len(st) != 1 || held != n || delay > 0 && st[0].Delayed != n {
		return 0, 0, fmt.Errorf("master holds %+v, want %d tasks (delayed: %v)", st, n, delay > 0)
	}
	hwm, rss, err = memStatus(master.pid())
	return rss, hwm, err
}

func stopAll(ps []*proc) {
	for _, p := range ps {
		go p.stop()
	}
	for _, p := range ps {
		<-p.done
	}
}
