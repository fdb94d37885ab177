package master_test

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
)

// startGateway starts a master whose queues are a JetStream node's,
// embedded in the test, as `qmaster --data-dir D --cluster-listen` runs
// one alone.
func startGateway(t *testing.T, cfg master.Config) string {
	t.Helper()
	return startGatewayOn(t, startJetStream(t), cfg)
}

// startJetStream starts a JetStream node alone and connects to it.
func startJetStream(t *testing.T) *nats.Conn {
	t.Helper()
	nc, _ := startJetStreamNode(t)
	return nc
}

// startJetStreamNode is startJetStream, and returns the node too.
func startJetStreamNode(t *testing.T) (*nats.Conn, *jsqueue.Node) {
	t.Helper()
	node, err := jsqueue.StartNode(jsqueue.NodeConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Shutdown)
	nc, err := node.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := jsqueue.WaitReady(ctxFor(t, 10*time.Second), nc, nil); err != nil {
		t.Fatal(err)
	}
	return nc, node
}

// startGatewayOn starts a master whose queues are those of the
// JetStream behind nc: one of the gateways of a cluster.
func startGatewayOn(t *testing.T, nc *nats.Conn, cfg master.Config) string {
	t.Helper()
	addr, _ := qmtest.StartMaster(t, gatewayConfig(nc, cfg))
	return addr
}

// gatewayConfig is cfg with the queues of the JetStream behind nc.
func gatewayConfig(nc *nats.Conn, cfg master.Config) master.Config {
	cfg.OpenQueues = func(qc queue.Config) (master.Queues, error) {
		return jsqueue.New(jsqueue.Config{Conn: nc, Replicas: 1, MaxAttempts: qc.MaxAttempts,
			DefaultLease: qc.DefaultLease, AckWait: qc.DefaultLease, OnDead: qc.OnDead})
	}
	return cfg
}

// Through any gateway of a cluster, the clients of every gateway are
// listed, each with its gateway.
func TestClientsOfEveryGateway(t *testing.T) {
	nc := startJetStream(t)
	a, b := startGatewayOn(t, nc, master.Config{}), startGatewayOn(t, nc, master.Config{})
	qmtest.Dial(t, a, "worker-a")
	qmtest.Dial(t, b, "worker-b")
	admin := qmtest.Dial(t, b, "admin")
	clients, err := admin.Clients(ctxFor(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	gatewayOf := map[string]string{}
	for _, c := range clients {
		gatewayOf[c.Role] = c.Gateway
	}
	if len(clients) != 3 || gatewayOf["worker-a"] == "" || gatewayOf["worker-b"] == "" ||
		gatewayOf["worker-a"] == gatewayOf["worker-b"] || gatewayOf["admin"] != gatewayOf["worker-b"] {
		t.Fatalf("clients %+v, want the three, worker-a on one gateway and worker-b and admin on the other", clients)
	}
	if !slices.IsSortedFunc(clients, func(x, y wire.ClientInfo) int {
		return cmp.Or(cmp.Compare(x.Gateway, y.Gateway), cmp.Compare(x.ID, y.ID))
	}) {
		t.Errorf("clients not sorted by gateway and ID: %+v", clients)
	}
}

// The dashboard of any gateway lists every gateway's clients, with the
// tasks those of its own hold.
func TestDashboardListsEveryGatewaysClients(t *testing.T) {
	nc := startJetStream(t)
	a := startGatewayOn(t, nc, master.Config{})
	b, url, _ := qmtest.StartMasterHTTP(t, gatewayConfig(nc, master.Config{HTTPToken: []byte("tok")}))
	ctx := ctxFor(t, 10*time.Second)
	qmtest.Dial(t, a, "worker-a")
	wb := qmtest.Dial(t, b, "worker-b")
	if _, err := wb.Put(ctx, "jobs", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if ts, err := wb.Get(ctx, "jobs", wire.GetOptions{Timeout: 5 * time.Second}); err != nil || len(ts) != 1 {
		t.Fatalf("get: %d tasks, %v", len(ts), err)
	}
	code, body := httpGet(t, url+"/api/state", "tok")
	if code != http.StatusOK {
		t.Fatalf("state: %d %s", code, body)
	}
	var st struct {
		Clients []struct {
			Role    string
			Gateway string
			Tasks   []struct{ Queue string }
		}
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	byRole := map[string]int{}
	for _, c := range st.Clients {
		byRole[c.Role] = len(c.Tasks)
		if c.Gateway == "" {
			t.Errorf("client %s with no gateway", c.Role)
		}
	}
	if n, ok := byRole["worker-a"]; !ok || n != 0 || byRole["worker-b"] != 1 {
		t.Fatalf("dashboard clients %s, want worker-a (another gateway's) and worker-b holding its task", body)
	}
}

// A gateway whose JetStream is out of its reach says on its dashboard
// and in /metrics that it cannot list the queues, rather than show none.
func TestUnlistedQueuesSaidSo(t *testing.T) {
	nc, node := startJetStreamNode(t)
	addr, url, _ := qmtest.StartMasterHTTP(t, gatewayConfig(nc, master.Config{HTTPToken: []byte("tok")}))
	if _, err := qmtest.Dial(t, addr, "producer").Put(ctxFor(t, 10*time.Second), "jobs", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	says := func(listed bool) func() error {
		return func() error {
			_, state := httpGet(t, url+"/api/state", "tok")
			_, metrics := httpGet(t, url+"/metrics", "tok")
			var st struct {
				QueuesError string `json:"queues_error"`
			}
			if err := json.Unmarshal([]byte(state), &st); err != nil {
				return err
			}
			if (st.QueuesError == "") != listed || !strings.Contains(metrics, fmt.Sprintf("qm_queues_list_ok %d", map[bool]int{true: 1}[listed])) {
				return fmt.Errorf("listed %v: state says %q; metrics:\n%s", listed, st.QueuesError, metrics)
			}
			return nil
		}
	}
	qmtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, says(true))
	node.Shutdown()
	start := time.Now()
	qmtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, says(false))
	t.Logf("said after %v", time.Since(start))
}

// A Python client may take tasks through one gateway and mark them done
// through another: join() through either waits for both, and a
// task_done() once too often is still refused.
func TestPythonTaskDoneThroughAnotherGateway(t *testing.T) {
	nc := startJetStream(t)
	a, b := startGatewayOn(t, nc, master.Config{}), startGatewayOn(t, nc, master.Config{})
	py := qmtest.Pythons(t)[0]
	out := runPy(t, py, a, `
mb = QueueManager(address=(sys.argv[3].rsplit(':', 1)[0], int(sys.argv[3].rsplit(':', 1)[1])), authkey=KEY)
mb.connect()
ta, tb = manager().get_task_queue(), mb.get_task_queue()
ta.put(1); ta.put(2)
ta.get(timeout=5); ta.get(timeout=5)
th = threading.Thread(target=tb.join); th.start()
th.join(0.3)
print('joined' if not th.is_alive() else 'waiting')
tb.task_done()
tb.task_done()
th.join(10)
print('joined' if not th.is_alive() else 'waiting')
ta.join()
try:
    tb.task_done()
except ValueError as e:
    print('ValueError', e)
`, b)
	if out != "waiting\njoined\nValueError task_done() called too many times\n" {
		t.Fatalf("python: %q", out)
	}
}

// A reply queue deleted with its tasks through one gateway cancels them
// at every gateway: a worker of another takes the tasks behind them.
func TestDeleteCancelsTasksAtEveryGateway(t *testing.T) {
	nc := startJetStream(t)
	a, b := startGatewayOn(t, nc, master.Config{}), startGatewayOn(t, nc, master.Config{})
	ctx := ctxFor(t, 20*time.Second)
	c := qmtest.Dial(t, a, "producer")
	if _, err := c.Put(ctx, "replies", []any{"made"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{1, 2, 3, 4}, wire.PutOptions{ReplyTo: "replies"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteCancelling(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	later, err := c.Put(ctx, "jobs", []any{5}, wire.PutOptions{ReplyTo: "replies"})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, b, "worker")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 5 * time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != later[0] {
		t.Fatalf("get through the other gateway: %+v, %v; want task %d alone", ts, err, later[0])
	}
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: ts[0].ID, Value: ts[0].Payload}}); err != nil {
		t.Fatal(err)
	}
	if ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 200 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Fatalf("get: %+v, %v; want none left", ts, err)
	}
}

var (
	_ master.DeletionKeeper  = (*jsqueue.Queues)(nil)
	_ master.DeletionWatcher = (*jsqueue.Queues)(nil)
)

// A gateway that missed another's notice of a deletion (it was cut off
// from the deleting gateway, or started in between) learns it from the
// cluster while it runs, not only when it starts again. The deletions are
// kept here as a deleting gateway that could not tell this one keeps
// them: the first before this gateway starts, the second after.
func TestGatewayLearnsDeletionsItWasNotTold(t *testing.T) {
	nc := startJetStream(t)
	deleter, err := jsqueue.New(jsqueue.Config{Conn: nc, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer deleter.Close()
	if err := deleter.KeepDeletion("map-0", queue.Deletion{At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	addr, srv := qmtest.StartMaster(t, gatewayConfig(nc, master.Config{}))
	if !srv.KnowsDeletion("map-0") {
		t.Fatal("a deletion kept before the gateway started is not known")
	}
	ctx := ctxFor(t, 20*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	if _, err := c.Put(ctx, "jobs", []any{1}, wire.PutOptions{ReplyTo: "map-1"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := deleter.KeepDeletion("map-1", queue.Deletion{At: now, CancelAt: now}); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if !srv.KnowsDeletion("map-1") {
			return errors.New("the running gateway has not learnt a deletion kept in the cluster")
		}
		return nil
	})
	later, err := c.Put(ctx, "jobs", []any{2}, wire.PutOptions{ReplyTo: "map-1"})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 5 * time.Second})
	if err != nil || len(ts) != 1 || ts[0].ID != later[0] {
		t.Fatalf("get: %+v, %v; want task %d alone, the cancelled one passed over", ts, err, later[0])
	}
}

// A gateway that starts after a queue's deletion (a restart, a new one)
// knows it from the cluster: the tasks it cancelled stay cancelled, and
// the result of a task put before a plain deletion goes nowhere.
func TestGatewayStartedLaterKnowsDeletions(t *testing.T) {
	nc := startJetStream(t)
	a := startGatewayOn(t, nc, master.Config{})
	ctx := ctxFor(t, 20*time.Second)
	c := qmtest.Dial(t, a, "producer")
	if _, err := c.Put(ctx, "replies", []any{"made"}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	stale, err := c.Put(ctx, "jobs", []any{"stale"}, wire.PutOptions{ReplyTo: "replies"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "jobs", []any{1, 2, 3}, wire.PutOptions{ReplyTo: "map-1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "replies"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteCancelling(ctx, "map-1"); !errors.Is(err, wire.ErrUnknownQueue) {
		t.Fatalf("delete map-1: %v, want it unknown (never made), and its tasks cancelled", err)
	}
	later, err := c.Put(ctx, "jobs", []any{"later"}, wire.PutOptions{ReplyTo: "map-1"})
	if err != nil {
		t.Fatal(err)
	}

	b := startGatewayOn(t, nc, master.Config{})
	w := qmtest.Dial(t, b, "worker")
	var ts []wire.Task
	for len(ts) < 2 {
		got, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 2 * time.Second})
		if err != nil || len(got) == 0 {
			t.Fatalf("get through the later gateway: %+v, %v; have %+v", got, err, ts)
		}
		ts = append(ts, got...)
	}
	if len(ts) != 2 || ts[0].ID != stale[0] || ts[1].ID != later[0] {
		t.Fatalf("got %+v; want tasks %d and %d, the cancelled ones passed over", ts, stale[0], later[0])
	}
	if err := w.Complete(ctx, "jobs", "", []wire.Completion{{ID: ts[0].ID, Value: ts[0].Payload}, {ID: ts[1].ID, Value: ts[1].Payload}}); err != nil {
		t.Fatal(err)
	}
	if ts, err := w.Get(ctx, "jobs", wire.GetOptions{Max: 10, Timeout: 200 * time.Millisecond}); err != nil || len(ts) != 0 {
		t.Fatalf("get: %+v, %v; want none left", ts, err)
	}
	pb := qmtest.Dial(t, b, "producer")
	if _, err := pb.Stats(ctx, "replies"); !errors.Is(err, wire.ErrUnknownQueue) {
		t.Errorf("stats of the deleted reply queue: %v; want it unknown, not made again by a late result", err)
	}
	rs, err := pb.Get(ctx, "map-1", wire.GetOptions{Max: 5, Timeout: 5 * time.Second, NoAck: true})
	if err != nil || len(rs) != 1 {
		t.Fatalf("map-1: %d items, %v; want the result of the task put after its deletion", len(rs), err)
	}
}
