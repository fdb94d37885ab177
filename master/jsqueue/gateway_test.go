package jsqueue_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
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
	nc, err := nats.Connect(natsURL, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close) // after the master's shutdown, registered below
	cfg.OpenQueues = func(qc queue.Config) (master.Queues, error) {
		return jsqueue.New(jsqueue.Config{Conn: nc, MaxAttempts: qc.MaxAttempts, DefaultLease: qc.DefaultLease, AckWait: qc.DefaultLease, OnDead: qc.OnDead})
	}
	addr, _ := qmtest.StartMaster(t, cfg)
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
func TestGatewaysShareQueues(t *testing.T) {
	url := startNodeListening(t)
	a := startGateway(t, url, master.Config{})
	b := startGateway(t, url, master.Config{})
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
func TestPythonThroughAGateway(t *testing.T) {
	url := startNodeListening(t)
	a := startGateway(t, url, master.Config{})
	b := startGateway(t, url, master.Config{})
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
