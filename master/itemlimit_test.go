package master_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// A result too large for the engine to store becomes an error result
// saying so: the others of its completion are stored, and no task runs
// again.
func TestOversizedResultFailsItsTaskAlone(t *testing.T) {
	addr := startGateway(t, master.Config{})
	ctx := ctxFor(t, 20*time.Second)
	producer := qmtest.Dial(t, addr, "producer")
	ids, err := producer.Put(ctx, "tasks", []any{"a", "b", "c"}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	huge, err := msgpack.Marshal(strings.Repeat("x", 9<<20)) // NATS takes 8 MiB here
	if err != nil {
		t.Fatal(err)
	}
	tasks, err := w.Get(ctx, "tasks", wire.GetOptions{Max: 3, Timeout: 5 * time.Second})
	if err != nil || len(tasks) != 3 {
		t.Fatalf("got %d tasks, %v", len(tasks), err)
	}
	var done []wire.Completion
	for _, task := range tasks {
		value := task.Payload
		if task.ID == ids[1] {
			value = huge
		}
		done = append(done, wire.Completion{ID: task.ID, Value: value, Token: task.Token})
	}
	if err := w.Complete(ctx, "tasks", "results", done); err != nil {
		t.Fatalf("complete: %v", err)
	}
	results, err := producer.Get(ctx, "results", wire.GetOptions{Max: 10, Timeout: 5 * time.Second, NoAck: true})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]wire.Result{}
	for _, r := range results {
		res, err := wire.DecodeResult(r.Payload)
		if err != nil {
			t.Fatal(err)
		}
		got[res.TaskID] = res
	}
	if len(got) != 3 || !strings.Contains(got[ids[1]].Error, "not stored") || got[ids[0]].Error != "" || got[ids[2]].Error != "" ||
		!bytes.Equal(got[ids[0]].Value, mustMarshal(t, "a")) {
		t.Fatalf("results %+v, want a's and c's, and an error result for b", got)
	}
	if again, err := w.Get(ctx, "tasks", wire.GetOptions{Max: 3}); err != nil || len(again) != 0 {
		t.Fatalf("after the completion: %d tasks, %v; want none to run again", len(again), err)
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
