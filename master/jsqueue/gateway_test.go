package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/qm-dev/qm/worker"
)

// startGateway starts a master serving the queues of the JetStream at
// natsURL, as qmaster --nats does, and returns its address.
func startGateway(t *testing.T, natsURL string, cfg master.Config) string {
	t.Helper()
	return startPackingGateway(t, natsURL, cfg, 0)
}

// startPackingGateway is startGateway with qmaster --pack.
func startPackingGateway(t *testing.T, natsURL string, cfg master.Config, pack int) string {
	t.Helper()
	addr, _, _ := startClosableGateway(t, natsURL, cfg, pack)
	return addr
}

// startNodeListening starts a node that accepts NATS clients and returns
// its URL.
func startNodeListening(t *testing.T) string {
	t.Helper()
	addr := qmtest.FreeAddrs(t, 1)[0]
	n, err := jsqueue.StartNode(jsqueue.NodeConfig{DataDir: t.TempDir(), ClientListen: addr, Secret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Shutdown)
	return "nats://" + addr
}

// runWorker runs a Go worker squaring numbers against addrs until the test ends.
func runWorker(t *testing.T, addrs string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, worker.Config{
			Server: addrs, Authkey: qmtest.Authkey, Name: "sq", Concurrency: 4,
			Handler: func(_ context.Context, task worker.Task) (any, error) {
				v, err := task.Value()
				if err != nil {
					return nil, err
				}
				n, ok := v.(int64)
				if !ok {
					return nil, fmt.Errorf("not an integer: %v", v)
				}
				return n * n, nil
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker: %v", err)
		}
	})
}

// A producer on one gateway, a worker on another (given a dead address
// first), one JetStream: every result comes back once.
func TestGatewaysShareQueues(t *testing.T) { testGatewaysShareQueues(t, 0) }

// The same with packs of 8: tasks and results.
func TestPackingGatewaysShareQueues(t *testing.T) { testGatewaysShareQueues(t, 8) }

func testGatewaysShareQueues(t *testing.T, pack int) {
	url := startNodeListening(t)
	a := startPackingGateway(t, url, master.Config{}, pack)
	b := startPackingGateway(t, url, master.Config{}, pack)
	runWorker(t, "127.0.0.1:1,"+a)

	c := qmtest.Dial(t, b, "producer")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 200
	items := make([]any, n)
	for i := range items {
		items[i] = int64(i + 1)
	}
	ids, err := c.Put(ctx, "tasks", items, wire.PutOptions{ReplyTo: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[uint64]int64, n)
	for i, id := range ids {
		want[id] = int64((i + 1) * (i + 1))
	}
	for len(want) > 0 {
		ts, err := c.Get(ctx, "mine", wire.GetOptions{Max: 64, Timeout: 5 * time.Second, NoAck: true})
		if err != nil {
			t.Fatalf("get results (%d missing): %v", len(want), err)
		}
		for _, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatal(err)
			}
			v, err := wire.DecodeValue(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			if w, ok := want[r.TaskID]; !ok || v != any(w) {
				t.Fatalf("result %d = %d: unexpected or duplicate (want %d, %v)", r.TaskID, v, w, ok)
			}
			delete(want, r.TaskID)
		}
	}
	// A task's result is stored before its ack, so the last acks may
	// still be on their way. The results taken with NoAck are acked once
	// their replies were written, not when their leases (30s) run out.
	for _, name := range []string{"tasks", "mine"} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			stats, err := c.Stats(ctx, name)
			// Figures count tasks, packed or not (pack_test.go checks
			// that they are packed, from the stream).
			if err == nil && len(stats) == 1 && stats[0].Ready == 0 && stats[0].Leased == 0 && stats[0].Done == n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s stats %+v, %v: want all %d done within 5s", name, stats, err, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// An unmodified Python BaseManager client puts through one gateway and
// reads results through it; the worker sits behind another.
func TestPythonThroughAGateway(t *testing.T) { testPythonThroughAGateway(t, 0) }

// The same with packs of 8: the worker's results come packed, and the
// Python client's gets take them one by one.
func TestPythonThroughAPackingGateway(t *testing.T) { testPythonThroughAGateway(t, 8) }

func testPythonThroughAGateway(t *testing.T, pack int) {
	url := startNodeListening(t)
	a := startPackingGateway(t, url, master.Config{}, pack)
	b := startPackingGateway(t, url, master.Config{}, pack)
	runWorker(t, a)
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			script := `
import os, sys
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager): pass
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
host, port = sys.argv[1].rsplit(':', 1)
m = QueueManager(address=(host, int(port)), authkey=os.environ['QM_AUTHKEY'].encode())
m.connect()
tasks, results = m.get_task_queue(), m.get_result_queue()
for i in range(1, 21):
    tasks.put(i)
print(sorted(results.get(timeout=30) for _ in range(20)))
`
			cmd := py.Command(t, time.Minute, script, b)
			cmd.Env = append(os.Environ(), "QM_AUTHKEY="+string(qmtest.Authkey))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			var want []string
			for i := 1; i <= 20; i++ {
				want = append(want, fmt.Sprint(i*i))
			}
			if got := strings.TrimSpace(string(out)); got != "["+strings.Join(want, ", ")+"]" {
				t.Fatalf("python read %s", got)
			}
		})
	}
}

// An unmodified Python BaseManager client's put_with works through a
// gateway as with a single master: a delay, a priority, a key.
func TestPythonPutWithThroughAGateway(t *testing.T) {
	url := startNodeListening(t)
	a := startPackingGateway(t, url, master.Config{}, 8)
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			script := `
import os, sys
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager): pass
QueueManager.register('get_task_queue')
host, port = sys.argv[1].rsplit(':', 1)
m = QueueManager(address=(host, int(port)), authkey=os.environ['QM_AUTHKEY'].encode())
m.connect()
task = m.get_task_queue()
task.put('plain')
task.put_with('later', delay=3600)
task.put_with('urgent', priority=9)
task.put_with('once', key='order-17')
task.put_with('once again', key='order-17')
print(task.get(timeout=5), task.get(timeout=5), task.get(timeout=5))
print(task.qsize())
`
			cmd := py.Command(t, time.Minute, script, a)
			cmd.Env = append(os.Environ(), "QM_AUTHKEY="+string(qmtest.Authkey))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if want := "urgent plain once\n0\n"; string(out) != want {
				t.Fatalf("python printed\n%s\nwant\n%s", out, want)
			}
		})
	}
}

// A worker's gateway dies (its connection to JetStream closes, so it gives
// nothing back) while the worker holds two tasks. The worker completes
// them through another gateway: the one it sends the delivery's token with
// gets its result, once; the one without is not leased there, and comes
// back when its ack wait runs out.
func TestCompleteThroughAnotherGatewayOverTheWire(t *testing.T) {
	url := startNodeListening(t)
	ncA, err := nats.Connect(url, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	a, _ := qmtest.StartMaster(t, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		return jsqueue.New(jsqueue.Config{Conn: ncA, MaxAttempts: qc.MaxAttempts, DefaultLease: qc.DefaultLease, AckWait: qc.DefaultLease, OnDead: qc.OnDead})
	}})
	b := startGateway(t, url, master.Config{})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := qmtest.Dial(t, b, "producer")
	ids, err := p.Put(ctx, "tasks", []any{int64(3), int64(4)}, wire.PutOptions{ReplyTo: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, a, "worker")
	tasks := getTasks(ctx, t, w, 2)
	if len(tasks) != 2 || tasks[0].Token == "" {
		t.Fatalf("get through the first gateway: %+v, %v; want two tasks with tokens", tasks, err)
	}
	ncA.Close()

	w2 := qmtest.Dial(t, b, "worker")
	nine, _ := wire.Encode(int64(9))
	sixteen, _ := wire.Encode(int64(16))
	err = w2.Complete(ctx, "tasks", "", []wire.Completion{
		{ID: tasks[0].ID, Value: nine, Token: tasks[0].Token},
		{ID: tasks[1].ID, Value: sixteen},
	})
	if !errors.Is(err, wire.ErrNotLeased) || !strings.Contains(err.Error(), fmt.Sprint(tasks[1].ID)) {
		t.Fatalf("complete through the second gateway: %v; want the tokenless one not leased", err)
	}
	results, err := p.Get(ctx, "mine", wire.GetOptions{Max: 2, Timeout: 2 * time.Second, NoAck: true})
	if err != nil || len(results) != 1 {
		t.Fatalf("results %+v, %v; want one", results, err)
	}
	r, err := wire.DecodeResult(results[0].Payload)
	if err != nil || r.TaskID != ids[0] {
		t.Fatalf("result %+v, %v; want task %d's", r, err, ids[0])
	}
	if v, _ := wire.DecodeValue(r.Value); v != any(int64(9)) {
		t.Fatalf("result value %v, want 9", v)
	}
	// Completing it again through either gateway is refused.
	if err := w2.Complete(ctx, "tasks", "", []wire.Completion{{ID: tasks[0].ID, Value: nine, Token: tasks[0].Token}}); !errors.Is(err, wire.ErrNotLeased) {
		t.Fatalf("second completion: %v, want not leased", err)
	}
}

// getTasks gets n tasks of queue "tasks" through w, by as many gets as
// it takes: a get may return as soon as it has one.
func getTasks(ctx context.Context, t *testing.T, w *wire.Client, n int) []wire.Task {
	t.Helper()
	var tasks []wire.Task
	for len(tasks) < n {
		more, err := w.Get(ctx, "tasks", wire.GetOptions{Max: n - len(tasks), Timeout: 5 * time.Second})
		if err != nil || len(more) == 0 {
			t.Fatalf("get: %+v then %+v, %v", tasks, more, err)
		}
		tasks = append(tasks, more...)
	}
	return tasks
}

// startClosableGateway is startGateway with its own NATS connection, which
// the test closes to kill the gateway without its giving anything back.
func startClosableGateway(t *testing.T, natsURL string, cfg master.Config, pack int) (string, *nats.Conn, *master.Server) {
	t.Helper()
	return startWrappedGateway(t, natsURL, cfg, pack, nil)
}

// startWrappedGateway is startClosableGateway whose master serves the
// queues wrap makes of the gateway's (nil: those themselves), and nc, the
// gateway's connection to JetStream.
func startWrappedGateway(t *testing.T, natsURL string, cfg master.Config, pack int, wrap func(q *jsqueue.Queues, nc *nats.Conn) master.Queues) (string, *nats.Conn, *master.Server) {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close) // after the master's shutdown, registered below
	cfg.OpenQueues = func(qc queue.Config) (master.Queues, error) {
		q, err := jsqueue.New(jsqueue.Config{Conn: nc, MaxAttempts: qc.MaxAttempts, DefaultLease: qc.DefaultLease, AckWait: qc.DefaultLease, OnDead: qc.OnDead, Pack: pack})
		if err != nil || wrap == nil {
			return q, err
		}
		return wrap(q, nc), nil
	}
	addr, srv := qmtest.StartMaster(t, cfg)
	return addr, nc, srv
}

// A worker's gateway dies while its handler runs. The handler is not
// cancelled; the worker reconnects to the other gateway and completes the
// task through it: one run, one result, at once rather than after the
// dead gateway's ack wait (30s).
func TestWorkerCompletesThroughAnotherGateway(t *testing.T) {
	testWorkerCompletesThroughAnotherGateway(t, master.Config{}, 0, 0)
}

// The same with packing gateways (--pack): the worker's two tasks share a
// pack, and each carries a token of its own.
func TestWorkerCompletesPackedTasksThroughAnotherGateway(t *testing.T) {
	testWorkerCompletesThroughAnotherGateway(t, master.Config{}, 0, 8)
}

// The same with a lease of 1.5s, the gateways' ack wait, and a handler
// that runs on for three times that after its gateway died: the worker
// renews the lease through the other gateway, by the delivery's token.
// The worker renews at a third of the lease, so a renewal may be up to a
// second late; 600ms (400ms of slack) failed under CI's load.
func TestWorkerRenewsThroughAnotherGateway(t *testing.T) {
	const lease = 1500 * time.Millisecond
	testWorkerCompletesThroughAnotherGateway(t, master.Config{DefaultLease: lease}, 3*lease, 0)
}

// The same with packing gateways: the renewals through the other gateway
// keep the pack from being delivered again. Each such renewal reads the
// pack and its record before it is sent: 1.5s failed once under CI's
// load, the pack delivered again before the first renewal came.
func TestWorkerRenewsPackedTasksThroughAnotherGateway(t *testing.T) {
	const lease = 3 * time.Second
	testWorkerCompletesThroughAnotherGateway(t, master.Config{DefaultLease: lease}, 3*lease, 8)
}

// testWorkerCompletesThroughAnotherGateway runs one task, or with pack
// (gateways packing that many) two tasks of one put at once.
func testWorkerCompletesThroughAnotherGateway(t *testing.T, cfg master.Config, runOn time.Duration, pack int) {
	tasks := 1
	if pack > 0 {
		tasks = 2
	}
	url := startNodeListening(t)
	addrs := make([]string, 2)
	ncs := make([]*nats.Conn, 2)
	srvs := make([]*master.Server, 2)
	for i := range 2 {
		addrs[i], ncs[i], srvs[i] = startClosableGateway(t, url, cfg, pack)
	}
	started := make(chan struct{}, tasks)
	release := make(chan struct{})
	var runs, cancelled atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, worker.Config{
			Server: strings.Join(addrs, ","), Authkey: qmtest.Authkey, Name: "w", Concurrency: tasks,
			ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
			Handler: func(hctx context.Context, task worker.Task) (any, error) {
				runs.Add(1)
				started <- struct{}{}
				select {
				case <-release:
					return "done", nil
				case <-hctx.Done():
					cancelled.Add(1)
					return nil, context.Cause(hctx)
				}
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // first: a test that fails early lets the handler end

	// The producer uses the gateway the worker is not on.
	on := workerGateway(t, addrs[:])
	survivor := addrs[1-on]
	p := qmtest.Dial(t, survivor, "producer")
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	ids, err := p.Put(pctx, "tasks", []any{"x", "y"}[:tasks], wire.PutOptions{ReplyTo: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	for range tasks {
		<-started
	}
	ncs[on].Close() // the worker's gateway dies, giving nothing back
	srvs[on].Close()
	waitUntil(t, 10*time.Second, "the worker to reconnect", func() bool { return workersOn(t, survivor) > 0 })
	if runOn > 0 {
		// Meanwhile nobody else gets the task: its lease is renewed.
		other := qmtest.Dial(t, survivor, "worker")
		if ts, err := other.Get(pctx, "tasks", wire.GetOptions{Max: 1, Timeout: runOn}); err != nil || len(ts) != 0 {
			t.Fatalf("while the moved task ran, another worker got %+v, %v", ts, err)
		}
	}
	letGo()

	var results []wire.Task
	for len(results) < tasks {
		rs, err := p.Get(pctx, "mine", wire.GetOptions{Max: tasks + 1, Timeout: 5 * time.Second, NoAck: true})
		if err != nil || len(rs) == 0 {
			t.Fatalf("results %+v then %v; want %d within 5s, not after the dead gateway's ack wait", results, err, tasks)
		}
		results = append(results, rs...)
	}
	if rs, err := p.Get(pctx, "mine", wire.GetOptions{Max: 1, Timeout: 300 * time.Millisecond, NoAck: true}); err != nil || len(rs) != 0 {
		t.Fatalf("more results: %+v, %v", rs, err)
	}
	var resultIDs []uint64 // in the order the handlers finished
	for _, res := range results {
		r, err := wire.DecodeResult(res.Payload)
		if err != nil || r.Error != "" {
			t.Fatalf("result %+v, %v", r, err)
		}
		resultIDs = append(resultIDs, r.TaskID)
	}
	if slices.Sort(resultIDs); !slices.Equal(resultIDs, ids) {
		t.Fatalf("results of tasks %v, want one of each of %v", resultIDs, ids)
	}
	if runs.Load() != int32(tasks) || cancelled.Load() != 0 {
		t.Fatalf("%d runs, %d cancelled; want %d, not cancelled", runs.Load(), cancelled.Load(), tasks)
	}
	// The result is stored before the ack: the ack may still be on its way.
	waitUntil(t, 5*time.Second, "the task to be done", func() bool {
		st, err := p.Stats(pctx, "tasks")
		return err == nil && st[0].Ready == 0 && st[0].Leased == 0
	})
}

func workersOn(t *testing.T, addr string) int {
	c, err := wire.Dial(context.Background(), wire.Config{Addr: addr, Authkey: qmtest.Authkey, Role: "admin", Name: "probe"})
	if err != nil {
		return 0
	}
	defer c.Close()
	cs, err := c.Clients(context.Background())
	if err != nil {
		return 0
	}
	// A gateway lists every gateway's clients, each named by its
	// gateway's host and port: count those of addr's port.
	_, port, _ := net.SplitHostPort(addr)
	n := 0
	for _, ci := range cs {
		if _, p, _ := net.SplitHostPort(ci.Gateway); ci.Role == "worker" && p == port {
			n++
		}
	}
	return n
}

// workerGateway waits until a worker is connected to one of the gateways
// at addrs, and returns that one's index.
func workerGateway(t *testing.T, addrs []string) int {
	t.Helper()
	on := -1
	waitUntil(t, 10*time.Second, "the worker to connect", func() bool {
		for i, a := range addrs {
			if workersOn(t, a) > 0 {
				on = i
				return true
			}
		}
		return false
	})
	return on
}

func waitUntil(t *testing.T, d time.Duration, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// diesAfterStoring is a gateway's queues that die, as their process
// would, after storing a completion's results and before acking its
// tasks: their connection to the node closes there.
type diesAfterStoring struct {
	*gatewayQueues
	conn *nats.Conn
}

// gatewayQueues is jsqueue.Queues under a name that, embedded, leaves
// the method Queues to it.
type gatewayQueues = jsqueue.Queues

func (q diesAfterStoring) Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error) {
	publish := req.Publish
	req.Publish = func(ts []queue.Task) ([]queue.Task, error) {
		if _, err := publish(ts); err != nil {
			return nil, err
		}
		q.conn.Close()
		return nil, errors.New("died after storing the results")
	}
	return q.gatewayQueues.Ack(req, dst)
}

// A gateway stores a completion's results and dies before it acks. The
// worker sends the completion again through another gateway, which takes
// it (the deliveries are still current): the results are stored once,
// packed or not.
func TestCompletionSentAgainStoresItsResultsOnce(t *testing.T) {
	for _, pack := range []int{1, 32} {
		t.Run(fmt.Sprintf("pack %d", pack), func(t *testing.T) {
			url := startNodeListening(t)
			a, _, _ := startWrappedGateway(t, url, master.Config{}, pack, func(q *jsqueue.Queues, nc *nats.Conn) master.Queues {
				return diesAfterStoring{q, nc}
			})
			b := startPackingGateway(t, url, master.Config{}, pack)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p := qmtest.Dial(t, b, "producer")
			if _, err := p.Put(ctx, "tasks", []any{int64(3), int64(4)}, wire.PutOptions{ReplyTo: "mine"}); err != nil {
				t.Fatal(err)
			}
			w := qmtest.Dial(t, a, "worker")
			done := completionsOf(getTasks(ctx, t, w, 2))
			if err := w.Complete(ctx, "tasks", "", done); err == nil {
				t.Fatal("the completion through the dying gateway succeeded")
			}
			w2 := qmtest.Dial(t, b, "worker")
			if err := w2.Complete(ctx, "tasks", "", done); err != nil {
				t.Fatalf("the completion sent again through the other gateway: %v", err)
			}
			if results := takeAll(ctx, t, p, "mine"); len(results) != 2 {
				t.Fatalf("%d results, want 2", len(results))
			}
		})
	}
}

// A gateway stores the results of a completion that spans two packs,
// finishing one and not the other, writes the record of the one it
// leaves with tasks to do, and dies before it acks the one it finished.
// The worker sends the completion again, as it was, through another
// gateway, which refuses the recorded pack's tasks and stores the other's
// results again: in the messages the first gateway stored them in, so
// each is kept once. (Packed by position, the refusal moved them into
// messages of new IDs: 28 of 36 results stored twice.)
//
// The second pack's tasks come first, or in among the first's, as a
// worker with several handlers completes them.
func TestCompletionSettledInPartStoresItsResultsOnce(t *testing.T) {
	for _, order := range []string{"in order", "interleaved"} {
		t.Run(order, func(t *testing.T) { testCompletionSettledInPart(t, order == "interleaved") })
	}
}

func testCompletionSettledInPart(t *testing.T, interleave bool) {
	url := startNodeListening(t)
	var settling atomic.Bool
	a, _, _ := startWrappedGateway(t, url, master.Config{}, 32, func(q *jsqueue.Queues, nc *nats.Conn) master.Queues {
		jsqueue.SetTestHookSettling(q, func() {
			if settling.Load() {
				nc.Close()
			}
		})
		return q
	})
	b := startPackingGateway(t, url, master.Config{}, 32)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := qmtest.Dial(t, b, "producer")
	items := make([]any, 64) // two packs of 32
	for i := range items {
		items[i] = int64(i)
	}
	if _, err := p.Put(ctx, "tasks", items, wire.PutOptions{ReplyTo: "mine"}); err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, a, "worker")
	done := completionsOf(getTasks(ctx, t, w, 36))
	if err := w.Complete(ctx, "tasks", "", done[:4]); err != nil {
		t.Fatal(err)
	}
	second := slices.Clone(done[4:]) // the first pack's 28 others, and 4 of the second's
	if interleave {
		second = nil
		for i, c := range done[4:32] {
			second = append(second, c)
			if i%2 == 1 && 32+i/2 < len(done) {
				second = append(second, done[32+i/2])
			}
		}
	}
	settling.Store(true)
	_ = w.Complete(ctx, "tasks", "", second)
	w2 := qmtest.Dial(t, b, "worker")
	if err := w2.Complete(ctx, "tasks", "", second); err != nil && !errors.Is(err, wire.ErrNotLeased) {
		t.Fatalf("the completion sent again through the other gateway: %v", err)
	}
	perTask := map[uint64]int{}
	for _, r := range takeAll(ctx, t, p, "mine") {
		res, err := wire.DecodeResult(r.Payload)
		if err != nil {
			t.Fatal(err)
		}
		perTask[res.TaskID]++
	}
	twice := 0
	for _, n := range perTask {
		if n > 1 {
			twice++
		}
	}
	if len(perTask) != 36 || twice > 0 {
		t.Fatalf("results of %d tasks, %d of them stored twice; want 36, each once", len(perTask), twice)
	}
}

// completionsOf completes tasks, task i with the value i.
func completionsOf(tasks []wire.Task) []wire.Completion {
	done := make([]wire.Completion, len(tasks))
	for i, task := range tasks {
		v, _ := wire.Encode(int64(i))
		done[i] = wire.Completion{ID: task.ID, Value: v, Token: task.Token}
	}
	return done
}

// takeAll takes every item of queue name for good, until none comes for
// half a second.
func takeAll(ctx context.Context, t *testing.T, c *wire.Client, name string) []wire.Task {
	t.Helper()
	var all []wire.Task
	for {
		more, err := c.Get(ctx, name, wire.GetOptions{Max: 100, Timeout: 500 * time.Millisecond, NoAck: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(more) == 0 {
			return all
		}
		all = append(all, more...)
	}
}

// A worker told to stop waits for its running handler; meanwhile its
// gateway dies. The handler's result cannot go anywhere (there is no
// next connection to complete it through): the worker drops it and
// stops, rather than passing it round for ever.
func TestDrainingWorkerWhoseGatewayDiesStops(t *testing.T) {
	url := startNodeListening(t)
	addr, nc, srv := startClosableGateway(t, url, master.Config{}, 0)
	started, release := make(chan struct{}, 1), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, worker.Config{
			Server: addr, Authkey: qmtest.Authkey, Name: "w",
			ReconnectMin: 10 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
			Handler: func(context.Context, worker.Task) (any, error) {
				started <- struct{}{}
				<-release
				return "done", nil
			},
		})
	}()
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	defer letGo()
	p := qmtest.Dial(t, addr, "producer")
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	if _, err := p.Put(pctx, "tasks", []any{"x"}, wire.PutOptions{ReplyTo: "mine"}); err != nil {
		t.Fatal(err)
	}
	<-started
	cancel() // the worker drains: it waits for the handler
	nc.Close()
	srv.Close() // and its gateway dies, giving nothing back
	letGo()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not stop within 10s of its handler's return")
	}
}

// slowResults is a gateway's queues whose results take delay to store
// (their queue unavailable meanwhile, say).
type slowResults struct {
	*gatewayQueues
	delay time.Duration
}

func (q slowResults) Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error) {
	publish := req.Publish
	req.Publish = func(ts []queue.Task) ([]queue.Task, error) {
		time.Sleep(q.delay)
		return publish(ts)
	}
	return q.gatewayQueues.Ack(req, dst)
}

// A worker completes through another gateway the task its dead gateway
// handed out, and storing the results takes three ack waits: meanwhile
// JetStream hands the task to nobody else, and it has one result.
func TestSlowResultsOfAnAdoptedDeliveryKeepItsTask(t *testing.T) {
	const ackWait = time.Second
	url := startNodeListening(t)
	cfg := master.Config{DefaultLease: ackWait}
	a, ncA, srvA := startClosableGateway(t, url, cfg, 0)
	b, _, _ := startWrappedGateway(t, url, cfg, 0, func(q *jsqueue.Queues, _ *nats.Conn) master.Queues {
		return slowResults{q, 3 * ackWait}
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := qmtest.Dial(t, b, "producer")
	if _, err := p.Put(ctx, "tasks", []any{int64(3)}, wire.PutOptions{ReplyTo: "mine"}); err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, a, "worker")
	tasks, err := w.Get(ctx, "tasks", wire.GetOptions{Max: 1, Timeout: 5 * time.Second})
	if err != nil || len(tasks) != 1 || tasks[0].Token == "" {
		t.Fatalf("get through the first gateway: %+v, %v; want a task with a token", tasks, err)
	}
	ncA.Close() // the worker's gateway dies, giving nothing back
	srvA.Close()

	// The other worker's get, through the gateway storing the results,
	// must not get the task: it returns empty at its timeout.
	other := make(chan []wire.Task, 1)
	const otherWait = 4 * ackWait
	go func() {
		o := qmtest.Dial(t, b, "other worker")
		start := time.Now()
		ts, err := o.Get(ctx, "tasks", wire.GetOptions{Max: 1, Timeout: otherWait})
		if err != nil {
			t.Errorf("the other worker's get: %v", err)
		}
		if took := time.Since(start); len(ts) == 0 && took < otherWait-100*time.Millisecond {
			t.Errorf("the other worker's get returned empty after %v, before its timeout (%v)", took, otherWait)
		}
		other <- ts
	}()
	nine, _ := wire.Encode(int64(9))
	w2 := qmtest.Dial(t, b, "worker")
	if err := w2.Complete(ctx, "tasks", "", []wire.Completion{{ID: tasks[0].ID, Value: nine, Token: tasks[0].Token}}); err != nil {
		t.Fatalf("complete through the second gateway: %v", err)
	}
	if ts := <-other; len(ts) != 0 {
		t.Fatalf("while its results were stored, the task was handed out again: %+v", ts)
	}
	results, err := p.Get(ctx, "mine", wire.GetOptions{Max: 2, Timeout: time.Second, NoAck: true})
	if err != nil || len(results) != 1 {
		t.Fatalf("results %+v, %v; want one", results, err)
	}
}

// firstToStoreDies is a gateway's queues of which the first, of all the
// gateways sharing die, to store a completion's results dies then, before
// it acks (die returns true to it; it blocks until the test lets the
// dead gateway's handler end).
type firstToStoreDies struct {
	*gatewayQueues
	die func() bool
}

func (q firstToStoreDies) Ack(req queue.AckRequest, dst []queue.Task) ([]queue.Task, error) {
	publish := req.Publish
	req.Publish = func(ts []queue.Task) ([]queue.Task, error) {
		unpublished, err := publish(ts)
		if err != nil {
			return nil, err
		}
		if q.die() {
			return nil, errors.New("died after storing the results")
		}
		return unpublished, nil
	}
	return q.gatewayQueues.Ack(req, dst)
}

// A worker's gateway stores the results of its first completion and
// dies before it acks; the worker's other handlers finish while it
// reconnects. The worker sends the cut-off completion again alone, as it
// was, so the next gateway packs its results alike and JetStream keeps
// them once: every task has one result.
func TestWorkerSendsACutOffCompletionAgainAsItWas(t *testing.T) {
	url := startNodeListening(t)
	var (
		addrs   [2]string
		srvs    [2]*master.Server
		dieOnce sync.Once
	)
	release, unblock := make(chan struct{}), make(chan struct{})
	var unblockOnce sync.Once
	t.Cleanup(func() { unblockOnce.Do(func() { close(unblock) }) })
	for i := range 2 {
		addrs[i], _, srvs[i] = startWrappedGateway(t, url, master.Config{}, 32, func(q *jsqueue.Queues, nc *nats.Conn) master.Queues {
			return firstToStoreDies{q, func() bool {
				first := false
				dieOnce.Do(func() { first = true })
				if !first {
					return false
				}
				nc.Close()         // it cannot ack
				go srvs[i].Close() // and its clients' connections drop
				close(release)     // the worker's other handlers finish meanwhile
				<-unblock
				return true
			}}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- worker.Run(ctx, worker.Config{
			Server: strings.Join(addrs[:], ","), Authkey: qmtest.Authkey, Name: "w", Concurrency: 4,
			// Long enough for the held handlers to finish before it reconnects.
			ReconnectMin: 300 * time.Millisecond, ReconnectMax: 300 * time.Millisecond,
			Handler: func(_ context.Context, task worker.Task) (any, error) {
				v, err := wire.DecodeValue(task.Payload)
				if err != nil {
					return nil, err
				}
				if v == "c" || v == "d" {
					<-release
				}
				return v, nil
			},
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	on := workerGateway(t, addrs[:])
	survivor := addrs[1-on]
	p := qmtest.Dial(t, survivor, "producer")
	pctx, pcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer pcancel()
	if _, err := p.Put(pctx, "tasks", []any{"a", "b", "c", "d"}, wire.PutOptions{ReplyTo: "mine"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the worker to reconnect", func() bool { return workersOn(t, survivor) > 0 })
	unblockOnce.Do(func() { close(unblock) })

	var results []wire.Task
	for {
		more, err := p.Get(pctx, "mine", wire.GetOptions{Max: 10, Timeout: time.Second, NoAck: true})
		if err != nil {
			t.Fatal(err)
		}
		if len(more) == 0 {
			break
		}
		results = append(results, more...)
	}
	seen := make(map[uint64]int)
	for _, r := range results {
		res, err := wire.DecodeResult(r.Payload)
		if err != nil {
			t.Fatal(err)
		}
		seen[res.TaskID]++
	}
	if len(results) != 4 || len(seen) != 4 {
		t.Fatalf("%d results of %d tasks (%v), want one of each of 4", len(results), len(seen), seen)
	}
}

// A put with a request ID sent again (wire.PutOptions.Resent) through a
// gateway that packs smaller now is stored as the first send was: the
// same IDs, no task twice.
func TestResentPutOverTheWireKeepsItsLayout(t *testing.T) {
	url := startNodeListening(t)
	a := startPackingGateway(t, url, master.Config{}, 8)
	b, _, _ := startWrappedGateway(t, url, master.Config{}, 8, func(q *jsqueue.Queues, _ *nats.Conn) master.Queues {
		jsqueue.HearPackSize(q, "tasks", 1) // its gateways' workers take a task at a time
		return q
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	items := []any{int64(1), int64(2), int64(3), int64(4), int64(5), int64(6), int64(7), int64(8)}
	opts := wire.PutOptions{RequestID: "map-1/1"}
	first, err := qmtest.Dial(t, a, "producer").Put(ctx, "tasks", items, opts)
	if err != nil {
		t.Fatal(err)
	}
	opts.Resent = true
	again, err := qmtest.Dial(t, b, "producer").Put(ctx, "tasks", items, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, first) {
		t.Fatalf("sent again: ids %v, want the first send's %v", again, first)
	}
	tasks, err := qmtest.Dial(t, a, "worker").Get(ctx, "tasks", wire.GetOptions{Max: 100, Timeout: 500 * time.Millisecond})
	if err != nil || len(tasks) != len(items) {
		t.Fatalf("the queue holds %d tasks (%v), want %d", len(tasks), err, len(items))
	}
}
