//go:build linux

package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// The tests here run the master and each worker on a host of its own: a
// network namespace, joined to the master's by a veth pair (see netLab).
// They need root; elsewhere they skip and say why.

// labCluster is a lab with a master's host and worker hosts linked to it.
type labCluster struct {
	lab     *netLab
	master  string    // the master's namespace
	links   []labLink // one per worker host
	workers []string  // the worker hosts' namespaces
}

func newLabCluster(t *testing.T, workers int) *labCluster {
	t.Helper()
	l := newNetLab(t)
	c := &labCluster{lab: l, master: l.host("m")}
	for i := range workers {
		ns := l.host(fmt.Sprintf("w%d", i+1))
		c.workers = append(c.workers, ns)
		c.links = append(c.links, l.link(c.master, ns))
	}
	return c
}

// worker starts a qworker on worker host i, reaching the master over its
// own link, with a 2 s lease so that redeliveries come quickly, and waits
// until it is connected: a new link can be unroutable for a moment, and a
// worker that met that backs off for seconds, past what a test does next
// (TestNetnsShortCut once cut a worker that had never connected).
func (c *labCluster) worker(t *testing.T, i int, builtin string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"--server", c.links[i].masterAddr + ":" + labPort, "--builtin", builtin,
		"--lease", "2s", "--get-timeout", "1s", "--name", fmt.Sprintf("w%d", i+1)}, extra...)
	p := startIn(t, c.workers[i], "qworker", args...)
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(p.logs(), `msg="connected to master"`) })
	return p
}

// client connects from the master's own host, over its loopback.
func (c *labCluster) client(t *testing.T, role string) *wire.Client {
	t.Helper()
	return dialIn(t, c.master, "127.0.0.1:"+labPort, role)
}

// putSquares puts n tasks 1..n (offset by from) with reply-to results.
func putSquares(t *testing.T, c *wire.Client, l *resultLedger, from, n int) {
	t.Helper()
	for i := 0; i < n; i += 50 {
		ns := make([]int64, 0, 50)
		items := make([]any, 0, 50)
		for j := i; j < min(i+50, n); j++ {
			ns = append(ns, int64(from+j))
			items = append(items, from+j)
		}
		ids, err := c.Put(context.Background(), "tasks", items, wire.PutOptions{ReplyTo: "results"})
		if err != nil {
			t.Fatalf("put: %v", err)
		}
		l.put(ids, ns)
	}
}

// waitDone waits up to d for tasks to have no ready or leased task and
// results to hold at least want results, while tick (if not nil) runs
// between polls.
func waitDone(t *testing.T, c *wire.Client, want int, d time.Duration, tick func()) {
	t.Helper()
	if err := awaitDone(t, c, want, d, tick); err != nil {
		t.Fatal(err)
	}
}

// awaitDone is waitDone returning an error for a timeout.
func awaitDone(t *testing.T, c *wire.Client, want int, d time.Duration, tick func()) error {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		stats, err := c.Stats(ctx, "")
		cancel()
		if err != nil {
			t.Fatalf("stats: %v", err)
		}
		var busy, results int
		for _, s := range stats {
			switch s.Queue {
			case "tasks":
				busy = s.Ready + s.Leased
			case "results":
				results = s.Ready
			}
		}
		if busy == 0 && results >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %d tasks still ready or leased, %d of %d results in", d, busy, results, want)
		}
		if tick != nil {
			tick()
		} else {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestNetnsLinkCut: the link of a worker running a task is cut. After its
// lease the task goes to another worker, which completes it; when the
// link comes back the first worker's late completion adds no result.
func TestNetnsLinkCut(t *testing.T) {
	c := newLabCluster(t, 2)
	startMasterIn(t, c.master, "--max-attempts", "10")
	cl := c.client(t, "producer")
	w1 := c.worker(t, 0, "sleep")
	if _, err := cl.Put(context.Background(), "tasks", []any{3}, wire.PutOptions{ReplyTo: "results"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		cs, err := cl.Clients(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, ci := range cs {
			if ci.Name == "w1" && ci.InFlight == 1 {
				return true
			}
		}
		return false
	})
	c.lab.setLink(c.links[0], false)
	cut := time.Now()
	// The rescuer echoes at once rather than sleeping.
	c.worker(t, 1, "echo")
	ts, err := cl.Get(context.Background(), "results", wire.GetOptions{Timeout: 20 * time.Second, NoAck: true})
	if err != nil || len(ts) != 1 {
		t.Fatalf("result after the cut: %v, %v", ts, err)
	}
	took := time.Since(cut)
	r, err := wire.DecodeResult(ts[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if r.Worker != "w2" || r.Attempt != 2 || r.Error != "" {
		t.Fatalf("result %+v: want w2's, on attempt 2", r)
	}
	c.lab.setLink(c.links[0], true)
	// w1's sleep ends about 3 s after it began; give it time to try to
	// complete over the healed link.
	late, err := cl.Get(context.Background(), "results", wire.GetOptions{Timeout: 5 * time.Second, NoAck: true})
	if err != nil || len(late) != 0 {
		t.Fatalf("after the link came back: %d more results (%v): want none", len(late), err)
	}
	settled(t, cl)
	t.Logf("link cut mid-task: redelivered and completed by w2 %s after the cut; w1's late completion refused (w1 log: %s)",
		took.Round(100*time.Millisecond), lastLines(w1.logs(), 2))
}

// lastLines is the last n lines of s, on one line.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// TestNetnsImpaired: tasks run over bad links, and every task still has
// exactly one result. With tc netem (20 ms ± 5 ms of delay and 2% loss
// each way) where the kernel has it, else with 2% loss each way from
// iptables' statistic match; and everywhere, with a token bucket of
// 2 Mbit/s and links going down for 50 to 400 ms at random moments.
func TestNetnsImpaired(t *testing.T) {
	t.Run("netem", func(t *testing.T) {
		c := newLabCluster(t, 2)
		if err := c.lab.in(c.master, "tc", "qdisc", "add", "dev", c.links[0].masterIf, "root", "netem", "delay", "20ms", "5ms", "loss", "2%"); err != nil {
			if strings.Contains(err.Error(), "unknown") || strings.Contains(err.Error(), "executable file not found") || strings.Contains(err.Error(), "No such file") {
				t.Skipf("skipped: tc netem is not available here (this kernel has no sch_netem, or tc is missing): %v", err)
			}
			t.Fatal(err)
		}
		for i, k := range c.links {
			if i > 0 {
				c.lab.must(c.master, "tc", "qdisc", "add", "dev", k.masterIf, "root", "netem", "delay", "20ms", "5ms", "loss", "2%")
			}
			c.lab.must(k.other, "tc", "qdisc", "add", "dev", k.otherIf, "root", "netem", "delay", "20ms", "5ms", "loss", "2%")
		}
		runImpaired(t, c, 600, nil)
	})
	t.Run("iptables-loss", func(t *testing.T) {
		// Where the kernel has no sch_netem, random loss comes from
		// iptables' statistic match instead: 2% of the packets dropped
		// each way on every worker's link, in the worker's namespace.
		c := newLabCluster(t, 2)
		if c.lab.in(c.master, "tc", "qdisc", "add", "dev", c.links[0].masterIf, "root", "netem", "loss", "2%") == nil {
			t.Skip("skipped: tc netem is available here, and the netem subtest covers loss")
		}
		if _, err := exec.LookPath("iptables"); err != nil {
			t.Skip("skipped: no `iptables` command (Debian package iptables); it makes the random loss where tc netem is missing")
		}
		const loss = "0.02"
		for i, ns := range c.workers {
			for _, rule := range [][]string{
				{"INPUT", "-i", c.links[i].otherIf},
				{"OUTPUT", "-o", c.links[i].otherIf},
			} {
				// A rule with no target only counts: every packet of the
				// link, before the drop.
				if err := c.lab.in(ns, append([]string{"iptables", "-w", "-A"}, rule...)...); err != nil {
					t.Skipf("skipped: iptables does not work here: %v", err)
				}
				args := append([]string{"iptables", "-w", "-A"}, rule...)
				args = append(args, "-m", "statistic", "--mode", "random", "--probability", loss, "-j", "DROP")
				if err := c.lab.in(ns, args...); err != nil {
					t.Skipf("skipped: iptables cannot drop packets at random here (no xt_statistic?): %v", err)
				}
			}
		}
		runImpaired(t, c, 10000, nil)
		var dropped, seen [2]int64
		for _, ns := range c.workers {
			d, s := droppedPackets(t, c.lab, ns)
			for i := range 2 {
				dropped[i] += d[i]
				seen[i] += s[i]
			}
		}
		t.Logf("iptables statistic match, probability %s each way: %d of %d packets to the workers dropped, %d of %d from them",
			loss, dropped[0], seen[0], dropped[1], seen[1])
		if dropped[0] == 0 || dropped[1] == 0 {
			t.Errorf("no packet dropped one way (%v): the loss rules did not apply", dropped)
		}
	})
	t.Run("tbf-flaps", func(t *testing.T) {
		c := newLabCluster(t, 2)
		for _, k := range c.links {
			if err := c.lab.in(c.master, "tc", "qdisc", "add", "dev", k.masterIf, "root", "tbf", "rate", "2mbit", "burst", "16kb", "latency", "20ms"); err != nil {
				t.Skipf("skipped: tc tbf is not available here: %v", err)
			}
			c.lab.must(k.other, "tc", "qdisc", "add", "dev", k.otherIf, "root", "tbf", "rate", "2mbit", "burst", "16kb", "latency", "20ms")
		}
		flaps := 0
		runImpaired(t, c, 4000, func() {
			time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
			k := c.links[rand.IntN(len(c.links))]
			c.lab.setLink(k, false)
			time.Sleep(time.Duration(50+rand.IntN(350)) * time.Millisecond)
			c.lab.setLink(k, true)
			flaps++
		})
		t.Logf("%d link flaps", flaps)
	})
}

// droppedPackets reads the counters of the loss rules in namespace ns:
// packets of the link that met them, and packets dropped, each way.
func droppedPackets(t *testing.T, l *netLab, ns string) (dropped, seen [2]int64) {
	t.Helper()
	for i, chain := range []string{"INPUT", "OUTPUT"} {
		text, err := l.output(ns, "iptables", "-w", "-L", chain, "-v", "-x", "-n")
		if err != nil {
			t.Fatal(err)
		}
		// After two header lines, one rule a line: "pkts bytes target
		// prot opt in out source destination [match]"; the counting rule
		// has no target.
		for line := range strings.SplitSeq(text, "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] == "Chain" || f[0] == "pkts" {
				continue
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				t.Fatalf("iptables -L %s in %s: %q", chain, ns, line)
			}
			if f[2] == "DROP" {
				dropped[i] += n
			} else {
				seen[i] += n
			}
		}
	}
	return dropped, seen
}

func runImpaired(t *testing.T, c *labCluster, n int, tick func()) {
	t.Helper()
	startMasterIn(t, c.master, "--max-attempts", "100")
	for i := range c.workers {
		c.worker(t, i, "square", "--concurrency", "4")
	}
	cl := c.client(t, "producer")
	l := newResultLedger()
	begin := time.Now()
	putSquares(t, cl, l, 1, n)
	waitDone(t, cl, n, 90*time.Second, tick)
	took := time.Since(begin)
	drainResults(t, cl, "results", l, 500*time.Millisecond)
	l.check(t)
	settled(t, cl)
	t.Logf("%d tasks, each with exactly one result, in %s (%d from a later attempt)", n, took.Round(100*time.Millisecond), l.retried)
}

// TestNetnsPartition: the master is cut off from every worker until each
// worker has given its connection up; then the partition heals. The
// workers reconnect by themselves, and the tasks put before and during
// the partition all complete, each with exactly one result.
func TestNetnsPartition(t *testing.T) {
	c := newLabCluster(t, 2)
	startMasterIn(t, c.master, "--max-attempts", "100")
	var ws []*proc
	for i := range c.workers {
		ws = append(ws, c.worker(t, i, "square", "--concurrency", "2"))
	}
	cl := c.client(t, "producer")
	l := newResultLedger()
	putSquares(t, cl, l, 1, 200)
	waitDone(t, cl, 200, 30*time.Second, nil)
	for _, k := range c.links {
		c.lab.setLink(k, false)
	}
	cut := time.Now()
	putSquares(t, cl, l, 1001, 200) // the master takes puts while partitioned
	waitFor(t, 60*time.Second, func() bool {
		for _, w := range ws {
			if !strings.Contains(w.logs(), "connection to master lost") {
				return false
			}
		}
		return true
	})
	held := time.Since(cut)
	for _, k := range c.links {
		c.lab.setLink(k, true)
	}
	healed := time.Now()
	waitDone(t, cl, 400, 60*time.Second, nil)
	recovered := time.Since(healed)
	drainResults(t, cl, "results", l, 500*time.Millisecond)
	l.check(t)
	settled(t, cl)
	// One worker may have done every task before the other's next dial,
	// which backs off up to a few seconds: wait for it.
	for i, w := range ws {
		reconnected := func() bool { return strings.Count(w.logs(), `msg="connected to master"`) >= 2 }
		deadline := time.Now().Add(15 * time.Second)
		for !reconnected() && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !reconnected() {
			t.Errorf("worker %d did not reconnect within 15s of the partition healing:\n%s", i+1, w.logs())
		}
	}
	t.Logf("partition held %s (until both workers gave up their connections); after healing, the 200 tasks put meanwhile done in %s",
		held.Round(100*time.Millisecond), recovered.Round(100*time.Millisecond))
}

// TestNetnsMasterRestart: the master, with --data-dir, is killed with
// SIGKILL while its workers on other hosts are busy, and started again.
// The workers reconnect by themselves and nothing is lost: every task
// put has a result (two equal ones if the kill fell between storing a
// result and storing its ack).
func TestNetnsMasterRestart(t *testing.T) {
	c := newLabCluster(t, 2)
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--max-attempts", "100"}
	m := startMasterIn(t, c.master, args...)
	for i := range c.workers {
		c.worker(t, i, "square", "--concurrency", "4")
	}
	cl := c.client(t, "producer")
	// A completion's result and ack are stored together: a crash
	// leaves no task to run again whose result is stored.
	l := newResultLedger()
	const n = 3000
	putSquares(t, cl, l, 1, n)
	waitFor(t, 30*time.Second, func() bool {
		stats, err := cl.Stats(context.Background(), "results")
		return err == nil && len(stats) == 1 && stats[0].Ready >= n/10
	})
	stats, err := cl.Stats(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	var leased, resultsIn int
	for _, s := range stats {
		switch s.Queue {
		case "tasks":
			leased = s.Leased
		case "results":
			resultsIn = s.Ready
		}
	}
	kill(t, m)
	cl.Close()
	startMasterIn(t, c.master, args...)
	cl = c.client(t, "producer")
	waitErr := awaitDone(t, cl, n, 20*time.Second, nil)
	drainResults(t, cl, "results", l, 500*time.Millisecond)
	if waitErr != nil {
		t.Error(waitErr)
	}
	l.check(t)
	settled(t, cl)
	t.Logf("master killed with %d of %d results in and %d tasks leased; after the restart all %d have one result (%d from a later attempt)",
		resultsIn, n, leased, n, l.retried)
}

// TestNetnsOneWayPartition: one worker's link loses every packet in one
// direction only (iptables DROP in the worker's namespace), under load.
// Neither end is told: the worker's calls reach the master and the
// replies are lost, or the other way round. The master gives its leased
// tasks to the other worker when the leases run out; the worker gives
// its connection up when its keep-alive goes unanswered; when the link
// heals it reconnects by itself and, the other worker stopped, does the
// next tasks alone. Every task has exactly one result.
func TestNetnsOneWayPartition(t *testing.T) {
	for _, tc := range []struct {
		name        string
		chain, flag string // the worker namespace's chain and interface flag
	}{
		{"to-worker", "INPUT", "-i"},
		{"from-worker", "OUTPUT", "-o"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newLabCluster(t, 2)
			if _, err := exec.LookPath("iptables"); err != nil {
				t.Skip("skipped: no `iptables` command (Debian package iptables); it makes the one-way partition")
			}
			startMasterIn(t, c.master, "--max-attempts", "100")
			w1 := c.worker(t, 0, "square", "--concurrency", "2")
			w2 := c.worker(t, 1, "square", "--concurrency", "2")
			cl := c.client(t, "producer")
			l := newResultLedger()
			putSquares(t, cl, l, 1, 200)
			waitDone(t, cl, 200, 30*time.Second, nil)

			rule := []string{tc.chain, tc.flag, c.links[0].otherIf, "-j", "DROP"}
			if err := c.lab.in(c.workers[0], append([]string{"iptables", "-w", "-A"}, rule...)...); err != nil {
				t.Skipf("skipped: iptables does not work here: %v", err)
			}
			cut := time.Now()
			// Put while w1 keeps asking for tasks it will never receive
			// (to-worker) or cannot ask (from-worker).
			putSquares(t, cl, l, 1001, 400)
			waitDone(t, cl, 600, 60*time.Second, nil)
			doneBy := time.Since(cut)
			waitFor(t, 60*time.Second, func() bool { return strings.Contains(w1.logs(), "connection to master lost") })
			gaveUp := time.Since(cut)
			c.lab.must(c.workers[0], append([]string{"iptables", "-w", "-D"}, rule...)...)
			healed := time.Now()
			waitFor(t, 30*time.Second, func() bool { return strings.Count(w1.logs(), `msg="connected to master"`) >= 2 })
			back := time.Since(healed)
			// w1 is back in the work: with the other worker stopped,
			// these tasks are its alone.
			if err := w2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := w2.wait(t, 20*time.Second); code != 0 {
				t.Fatalf("w2 exited %d after SIGTERM:\n%s", code, w2.logs())
			}
			putSquares(t, cl, l, 2001, 200)
			waitDone(t, cl, 800, 30*time.Second, nil)
			drainResults(t, cl, "results", l, 500*time.Millisecond)
			l.check(t)
			settled(t, cl)
			for id, rs := range l.got {
				if sq := l.want[id]; sq > 2000*2000 && rs[0].Worker != "w1" {
					t.Errorf("task %d (square %d), put after the heal, done by %s; want w1", id, sq, rs[0].Worker)
				}
			}
			t.Logf("w1's packets %s dropped: the 400 tasks put meanwhile done %s after the cut (%d results from a later attempt); "+
				"w1 gave its connection up after %s and was back %s after healing, then did the last 200 alone; 800 tasks, each with exactly one result",
				map[string]string{"INPUT": "from the master", "OUTPUT": "to the master"}[tc.chain],
				doneBy.Round(100*time.Millisecond), l.retried, gaveUp.Round(100*time.Millisecond), back.Round(100*time.Millisecond))
		})
	}
}

// TestNetnsShortCut: a busy worker's link is cut for 5 s, longer than
// its 2 s leases but shorter than the keep-alive takes to give a
// connection up. The leases run out meanwhile and the other worker does
// those tasks; after the cut the first worker's late completions are
// refused, and it goes on working on the same connection. Every task has
// exactly one result.
func TestNetnsShortCut(t *testing.T) {
	c := newLabCluster(t, 2)
	startMasterIn(t, c.master, "--max-attempts", "100")
	w1 := c.worker(t, 0, "square", "--concurrency", "4")
	c.worker(t, 1, "square", "--concurrency", "4")
	cl := c.client(t, "producer")
	l := newResultLedger()
	putSquares(t, cl, l, 1, 3000)
	waitFor(t, 10*time.Second, func() bool {
		stats, err := cl.Stats(context.Background(), "results")
		return err == nil && len(stats) == 1 && stats[0].Ready >= 300
	})
	c.lab.setLink(c.links[0], false)
	putSquares(t, cl, l, 10001, 1000) // for w2 alone while w1 is cut off
	time.Sleep(5 * time.Second)
	c.lab.setLink(c.links[0], true)
	healed := time.Now()
	waitDone(t, cl, 4000, 30*time.Second, nil)
	putSquares(t, cl, l, 20001, 1000)
	waitDone(t, cl, 5000, 30*time.Second, nil)
	drainResults(t, cl, "results", l, 500*time.Millisecond)
	l.check(t)
	settled(t, cl)
	logs := w1.logs()
	if strings.Contains(logs, "connection to master lost") || strings.Count(logs, `msg="connected to master"`) != 1 {
		t.Errorf("w1 lost its connection over a 5 s cut; want it kept:\n%s", logs)
	}
	late := strings.Count(logs, "lease lost")
	var w1Results int
	for _, rs := range l.got {
		if rs[0].Worker == "w1" {
			w1Results++
		}
	}
	t.Logf("w1 cut off for 5 s under load: its connection kept; %d results from a later attempt, %d 'lease lost' warnings in w1's log; "+
		"all 5000 tasks done %s after healing, each with exactly one result (%d by w1)",
		l.retried, late, time.Since(healed).Round(100*time.Millisecond), w1Results)
}

// TestNetnsProducerPartition: a producer, `qmaster map` on a host of its
// own, loses its link to the master in the middle of a run. A 5 s cut
// only delays it: map prints every result, in order, and exits 0. A cut
// for good ends map, which does not reconnect: it exits 1 once its get
// of results times out, and the tasks it had put are still done by the
// workers, nothing left leased.
func TestNetnsProducerPartition(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  time.Duration // 0: until map gives up
	}{
		{"short", 5 * time.Second},
		{"long", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newLabCluster(t, 3) // the third host is the producer's
			startMasterIn(t, c.master, "--max-attempts", "100")
			for i := range 2 {
				c.worker(t, i, "square", "--concurrency", "4")
			}
			admin := c.client(t, "admin")
			const n = 30000
			var out syncBuffer
			mapper := startInIO(t, c.workers[2], strings.NewReader(seq(n)), &out, "qmaster", "map",
				"--server", c.links[2].masterAddr+":"+labPort)
			waitFor(t, 30*time.Second, func() bool {
				stats, err := admin.Stats(context.Background(), "tasks")
				return err == nil && len(stats) == 1 && stats[0].Done >= 1000
			})
			c.lab.setLink(c.links[2], false)
			cut := time.Now()
			if tc.cut > 0 {
				time.Sleep(tc.cut)
				c.lab.setLink(c.links[2], true)
				if code := mapper.wait(t, 60*time.Second); code != 0 {
					t.Fatalf("map exited %d after a %s cut:\n%s", code, tc.cut, mapper.logs())
				}
				lines := strings.Split(strings.TrimSpace(out.String()), "\n")
				if len(lines) != n {
					t.Fatalf("map printed %d lines, want %d", len(lines), n)
				}
				for i, line := range lines {
					if want := strconv.Itoa((i + 1) * (i + 1)); line != want {
						t.Fatalf("line %d = %q, want %s", i+1, line, want)
					}
				}
				t.Logf("map's link cut for %s mid-run: all %d results printed in order, exit 0, %s after the cut",
					tc.cut, n, time.Since(cut).Round(100*time.Millisecond))
				return
			}
			code := mapper.wait(t, 60*time.Second)
			gaveUp := time.Since(cut)
			c.lab.setLink(c.links[2], true)
			// Its get of results times out (resultWait + callSlack in
			// cmd/qmaster: 11 s) before any keep-alive gives up; then it
			// tries for 5 s to delete its result queue.
			if code != 1 || !strings.Contains(mapper.logs(), "no answer from the master in 11s (is it reachable?)") {
				t.Fatalf("map exited %d after a long cut, want 1 saying the master did not answer; stderr:\n%s\nstdout (end): %s",
					code, mapper.logs(), lastLines(out.String(), 3))
			}
			var put int
			waitFor(t, 30*time.Second, func() bool {
				stats, err := admin.Stats(context.Background(), "tasks")
				if err != nil || len(stats) != 1 {
					return false
				}
				put = int(stats[0].Puts)
				return stats[0].Ready+stats[0].Leased == 0 && stats[0].Done == stats[0].Puts
			})
			t.Logf("map's link cut for good: map gave up after %s (exit 1: %s); the %d tasks it had put were all done, nothing leased; "+
				"their results stay in its private queue (map does not reconnect)",
				gaveUp.Round(100*time.Millisecond), lastLines(mapper.logs(), 1), put)
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the test's
// reads at once.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
