package master_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// A get whose tasks together exceed the message size gets those that fit,
// and the next get the rest; it used to get no answer at all, and its
// client waited for ever.
func TestGetOfTasksOverTheMessageSize(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxMessageSize: 64 << 10})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	item := strings.Repeat("x", 40<<10)
	var ids []uint64
	for _, v := range []any{item, item, "small"} {
		id, err := c.Put(ctx, "big", []any{v}, wire.PutOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id...)
	}
	var got []uint64
	for range 3 {
		ts, err := c.Get(ctx, "big", wire.GetOptions{Max: 3, Timeout: time.Second, NoAck: true})
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		for _, task := range ts {
			got = append(got, task.ID)
		}
	}
	if len(got) != 3 || got[0] != ids[0] || got[1] != ids[1] || got[2] != ids[2] {
		t.Fatalf("three gets of 3 took %v; want %v in order (at most one 40 KiB task a get)", got, ids)
	}
}

// An item that no get could hand out within the message size is refused
// at its put, with the size it may have; and a failure's text is cut so
// that its task still fits.
func TestItemsBoundedToWhatAGetCanHandOut(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{MaxMessageSize: 64 << 10})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	_, err := c.Put(ctx, "big", []any{strings.Repeat("x", 60<<10)}, wire.PutOptions{})
	if !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), "items of at most 57344 bytes") {
		t.Fatalf("a put of 60 KiB to a master of 64 KiB messages: %v; want refused, naming 57344 bytes", err)
	}
	if _, err := c.Put(ctx, "big", []any{strings.Repeat("x", 50<<10)}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	ts, err := w.Get(ctx, "big", wire.GetOptions{Timeout: time.Second})
	if err != nil || len(ts) != 1 {
		t.Fatalf("get: %d tasks, %v", len(ts), err)
	}
	traceback := "Traceback (most recent call last):\n" + strings.Repeat("  File \"x.py\", line 1\n", 1500) + "ValueError: the cause"
	if err := w.Complete(ctx, "big", "", []wire.Completion{{ID: ts[0].ID, Error: traceback}}); err != nil {
		t.Fatal(err)
	}
	again, err := w.Get(ctx, "big", wire.GetOptions{Timeout: time.Second})
	if err != nil || len(again) != 1 {
		t.Fatalf("get after a failure with a %d-byte error: %d tasks, %v; want the task again", len(traceback), len(again), err)
	}
	lastErr := again[0].LastError
	if len(lastErr) > 2<<10+100 || !strings.HasPrefix(lastErr, "Traceback") || !strings.HasSuffix(lastErr, "ValueError: the cause") || !strings.Contains(lastErr, "bytes cut") {
		t.Fatalf("last error of %d bytes, %q...; want at most about 2 KiB, its start and its end", len(lastErr), lastErr[:min(80, len(lastErr))])
	}
}

// A task stored under a larger --max-message-size than the master has now
// does not stop its queue: a leased get fails its attempt, not to be
// retried (it goes to the dead-letter queue at once, attempts left or
// not), and the tasks behind it are handed out; a get for good says why.
func TestTaskStoredTooLargeForTheMessageSize(t *testing.T) {
	dir := t.TempDir()
	addr, srv := qmtest.StartMaster(t, master.Config{DataDir: dir})
	ctx := ctxFor(t, 10*time.Second)
	c := qmtest.Dial(t, addr, "producer")
	ids, err := c.Put(ctx, "big", []any{strings.Repeat("x", 100<<10), "behind"}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Close()

	addr, _ = qmtest.StartMaster(t, master.Config{DataDir: dir, MaxMessageSize: 64 << 10, MaxAttempts: 3})
	c = qmtest.Dial(t, addr, "consumer")
	_, err = c.Get(ctx, "big", wire.GetOptions{Max: 2, NoAck: true})
	if !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), "more than a message") {
		t.Fatalf("a get for good of a 100 KiB task under 64 KiB messages: %v; want an error saying why", err)
	}
	w := qmtest.Dial(t, addr, "worker")
	var got []uint64
	for range 2 {
		ts, err := w.Get(ctx, "big", wire.GetOptions{Max: 2, Timeout: time.Second})
		if err != nil {
			t.Fatalf("leased get: %v", err)
		}
		for _, task := range ts {
			got = append(got, task.ID)
		}
	}
	if len(got) != 1 || got[0] != ids[1] {
		t.Fatalf("leased gets took %v; want only the task behind, %d", got, ids[1])
	}
	// Its peek says why it shows nothing.
	if _, err := c.Peek(ctx, "big.dead", 10); !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), fmt.Sprintf("task %d of big.dead is", ids[0])) {
		t.Fatalf("peek of the dead letters: %v; want an error naming the dead task", err)
	}
	stats, err := c.Stats(ctx, "big.dead")
	if err != nil || len(stats) != 1 || stats[0].Ready != 1 {
		t.Fatalf("dead letters: %+v, %v; want the large task", stats, err)
	}
}

// An item nested deeper than a get can hand out is refused at its put,
// and a result's value nested deeper than its result can be handed out
// is stored as a failure: either would have failed every get it came in,
// with the tasks beside it, for good. What is within the bounds goes
// through a worker's chained get, the deepest message that carries it.
func TestPayloadsBoundedToWhatAGetCanHandOut(t *testing.T) {
	addr, _ := qmtest.StartMaster(t, master.Config{})
	ctx := ctxFor(t, 10*time.Second)
	nest := func(k int) msgpack.RawMessage { return append(bytes.Repeat([]byte{0x91}, k), 0x01) }
	c := qmtest.Dial(t, addr, "producer")
	_, err := c.PutRaw(ctx, "deep", []msgpack.RawMessage{{0x01}, nest(wire.MaxPayloadDepth + 1)}, wire.PutOptions{})
	if !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), fmt.Sprintf("item 2 nests more than %d arrays and maps", wire.MaxPayloadDepth)) {
		t.Fatalf("a put of an item %d deep: %v; want it refused, saying how deep an item may be", wire.MaxPayloadDepth+1, err)
	}
	ids, err := c.PutRaw(ctx, "deep", []msgpack.RawMessage{nest(wire.MaxPayloadDepth), {0x02}, {0x03}}, wire.PutOptions{ReplyTo: "answers"})
	if err != nil {
		t.Fatal(err)
	}
	w := qmtest.Dial(t, addr, "worker")
	first, err := w.Get(ctx, "deep", wire.GetOptions{Max: 1, Timeout: time.Second})
	if err != nil || len(first) != 1 {
		t.Fatalf("get: %d tasks, %v", len(first), err)
	}
	// The deepest task comes in the response to a chained get, the
	// results going back as deep as each may and one deeper.
	rest, completeErr, err := w.CompleteThenGet(ctx, "deep", "", []wire.Completion{{ID: first[0].ID, Value: nest(wire.MaxResultDepth)}}, wire.GetOptions{Max: 2, Timeout: time.Second})
	if err != nil || completeErr != nil || len(rest) != 2 {
		t.Fatalf("chained get: %d tasks, %v, %v", len(rest), completeErr, err)
	}
	if !bytes.Equal(first[0].Payload, nest(wire.MaxPayloadDepth)) {
		t.Fatalf("the deepest task came as %x", first[0].Payload)
	}
	if err := w.Complete(ctx, "deep", "", []wire.Completion{{ID: rest[0].ID, Value: nest(wire.MaxResultDepth + 1)}, {ID: rest[1].ID, Value: msgpack.RawMessage{0x03}}}); err != nil {
		t.Fatal(err)
	}
	results, err := c.Get(ctx, "answers", wire.GetOptions{Max: 3, Timeout: time.Second, NoAck: true})
	if err != nil || len(results) != 3 {
		t.Fatalf("results: %d, %v; want all three, in one get", len(results), err)
	}
	for i, want := range []string{"", fmt.Sprintf("nests more than %d arrays and maps", wire.MaxResultDepth), ""} {
		r, err := wire.DecodeResult(results[i].Payload)
		if err != nil || r.TaskID != ids[i] || !strings.Contains(r.Error, want) || want == "" && r.Error != "" {
			t.Errorf("result %d: %+v, %v; want task %d's, error %q", i, r, err, ids[i], want)
		}
	}
}
