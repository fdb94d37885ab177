package master_test

import (
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// A producer's put and the get of its result, and a worker's complete and
// its next get, each in one round trip; a failed first request runs no
// Then.
func TestChainedCalls(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	producer := qmtest.Dial(t, addr, "producer")
	worker := qmtest.Dial(t, addr, "worker")
	ctx := ctxFor(t, 10*time.Second)

	seven, _ := wire.Encode(7)
	// Nothing can answer yet: the put lands and the chained get times out.
	ids, got, putErr, err := producer.PutThenGet(ctx, "tasks", []msgpack.RawMessage{seven},
		wire.PutOptions{ReplyTo: "results"}, "results", wire.GetOptions{Timeout: 20 * time.Millisecond, NoAck: true})
	if putErr != nil || err != nil || len(ids) != 1 || len(got) != 0 {
		t.Fatalf("PutThenGet with no worker: ids %v, results %v, putErr %v, err %v", ids, got, putErr, err)
	}

	tasks, err := worker.Get(ctx, "tasks", wire.GetOptions{Max: 4, Timeout: time.Second})
	if err != nil || len(tasks) != 1 || tasks[0].ID != ids[0] {
		t.Fatalf("worker get: %v, %v", tasks, err)
	}
	// The worker completes its task and waits for the next, which the
	// producer puts while the worker's chained get is blocked.
	type next struct {
		tasks       []wire.Task
		completeErr error
		err         error
	}
	nextCh := make(chan next, 1)
	go func() {
		done := []wire.Completion{{ID: tasks[0].ID, Value: seven}}
		ts, cerr, err := worker.CompleteThenGet(ctx, "tasks", "", done, wire.GetOptions{Max: 4, Timeout: 5 * time.Second})
		nextCh <- next{ts, cerr, err}
	}()
	results, err := producer.Get(ctx, "results", wire.GetOptions{Timeout: 5 * time.Second, NoAck: true})
	if err != nil || len(results) != 1 {
		t.Fatalf("result of the completed task: %v, %v", results, err)
	}
	if r, err := wire.DecodeResult(results[0].Payload); err != nil || r.TaskID != ids[0] || string(r.Value) != string(seven) {
		t.Fatalf("result %+v, %v; want task %d with 7", r, err, ids[0])
	}
	eight, _ := wire.Encode(8)
	ids2, got, putErr, err := producer.PutThenGet(ctx, "tasks", []msgpack.RawMessage{eight},
		wire.PutOptions{ReplyTo: "results"}, "results", wire.GetOptions{Timeout: 20 * time.Millisecond, NoAck: true})
	if putErr != nil || err != nil || len(ids2) != 1 || len(got) != 0 {
		t.Fatalf("second PutThenGet: ids %v, results %v, putErr %v, err %v", ids2, got, putErr, err)
	}
	n := <-nextCh
	if n.completeErr != nil || n.err != nil || len(n.tasks) != 1 || n.tasks[0].ID != ids2[0] || n.tasks[0].Lease <= 0 {
		t.Fatalf("CompleteThenGet: tasks %+v, completeErr %v, err %v; want task %d leased", n.tasks, n.completeErr, n.err, ids2[0])
	}

	// Completing a task this client does not hold fails the complete, and
	// the chained get does not run: the task stays ready.
	if _, err := producer.PutRaw(ctx, "tasks", []msgpack.RawMessage{eight}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	other := qmtest.Dial(t, addr, "worker")
	ts, cerr, err := other.CompleteThenGet(ctx, "tasks", "", []wire.Completion{{ID: n.tasks[0].ID, Value: eight}},
		wire.GetOptions{Timeout: time.Second})
	if !errors.Is(cerr, wire.ErrNotLeased) || err != nil || len(ts) != 0 {
		t.Fatalf("CompleteThenGet of another's task: tasks %v, completeErr %v, err %v; want ErrNotLeased alone", ts, cerr, err)
	}
	if st, err := producer.Stats(ctx, "tasks"); err != nil || st[0].Ready != 1 || st[0].Leased != 1 {
		t.Fatalf("after a failed complete: %+v, %v; want the ready task untouched", st, err)
	}
	// A put to a bad queue name fails and gets nothing.
	_, got, putErr, err = producer.PutThenGet(ctx, "", []msgpack.RawMessage{eight}, wire.PutOptions{}, "results",
		wire.GetOptions{Timeout: time.Second, NoAck: true})
	if !errors.Is(putErr, wire.ErrBadRequest) || err != nil || len(got) != 0 {
		t.Fatalf("PutThenGet to a bad queue: results %v, putErr %v, err %v", got, putErr, err)
	}
}
