package queue_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		cfg   queue.Config
		field string // "" = valid
	}{
		{"zero", queue.Config{}, ""},
		{"set", queue.Config{MaxAttempts: 5, DefaultLease: time.Second, MaxLen: 10}, ""},
		{"MaxAttempts", queue.Config{MaxAttempts: -1}, "MaxAttempts"},
		{"DefaultLease", queue.Config{DefaultLease: -time.Second}, "DefaultLease"},
		{"MaxLen", queue.Config{MaxLen: -1}, "MaxLen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.field) || !errors.Is(err, queue.ErrBadArgument) {
				t.Fatalf("Validate = %v, want an ErrBadArgument naming %s", err, tt.field)
			}
			if _, err := queue.New(tt.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

func TestQueueNames(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"tasks", true},
		{"a.b-c_d/e:f", true},
		{"ünïcode ok", true},
		{strings.Repeat("x", queue.MaxNameLen), true},
		{strings.Repeat("x", queue.MaxNameLen) + queue.DeadSuffix, true},
		{"", false},
		{strings.Repeat("x", queue.MaxNameLen+1), false},
		{"tab\there", false},
		{"nl\n", false},
		{"nul\x00", false},
		{"del\x7f", false},
		{"c1\u0085", false},
		{"bad utf8 \xff", false},
	}
	m := newManager(t, queue.Config{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := queue.CheckName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("CheckName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			_, err = m.Put(context.Background(), queue.PutRequest{Queue: tt.name, Items: items("x")})
			if tt.ok && err != nil {
				t.Fatalf("Put: %v", err)
			}
			if !tt.ok && !errors.Is(err, queue.ErrBadQueueName) {
				t.Fatalf("Put = %v, want ErrBadQueueName", err)
			}
			_, err = m.Get(doneCtx(), queue.GetRequest{Queue: tt.name, Max: 1, Owner: 1}, nil)
			if !tt.ok && !errors.Is(err, queue.ErrBadQueueName) {
				t.Fatalf("Get = %v, want ErrBadQueueName", err)
			}
		})
	}
}

func TestFIFO(t *testing.T) {
	m := newManager(t, queue.Config{})
	want := []string{"a", "b", "c", "d", "e"}
	for _, p := range want {
		mustPut(t, m, "q", p)
	}
	var got []string
	for range want {
		got = append(got, payloads(mustGet(t, m, "q", 1, 1))...)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if ts := mustGet(t, m, "q", 1, 1); len(ts) != 0 {
		t.Fatalf("empty queue gave %v", payloads(ts))
	}
}

func TestBatch(t *testing.T) {
	clk := newFakeClock()
	m := newManager(t, queue.Config{Now: clk.Now})
	ids, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: []queue.Item{
		{Payload: []byte("a"), ReplyTo: "r"}, {Payload: []byte("b")}, {Payload: []byte("c")},
	}})

	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 3 || ids[0] == 0 || ids[1] != ids[0]+1 || ids[2] != ids[1]+1 {
		t.Fatalf("ids = %v, want 3 increasing", ids)
	}
	more := mustPut(t, m, "other", "d", "e")
	if more[0] <= ids[2] {
		t.Fatalf("ids of a later put in another queue %v not above %v", more, ids)
	}
	ts := mustGet(t, m, "q", 2, 7)
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("batch get = %v", got)
	}
	want := queue.Task{ID: ids[0], Payload: []byte("a"), ReplyTo: "r", Attempts: 1, Enqueued: clk.Now()}
	if got := ts[0]; got.ID != want.ID || got.ReplyTo != want.ReplyTo || got.Attempts != 1 || !got.Enqueued.Equal(want.Enqueued) {
		t.Fatalf("task = %+v, want %+v", got, want)
	}
	if ts := mustGet(t, m, "q", 10, 7); !slices.Equal(payloads(ts), []string{"c"}) {
		t.Fatalf("max beyond ready = %v", payloads(ts))
	}
	if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 0, Owner: 7}, nil); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("Get max 0 = %v, want ErrBadArgument", err)
	}
	s := mustStats(t, m, "q")
	if s.Leased != 3 || s.Ready != 0 || s.Puts != 3 || s.Gets != 3 {
		t.Fatalf("stats = %+v", s)
	}
	if got, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: nil}); err != nil || len(got) != 0 {
		t.Fatalf("empty Put = %v, %v", got, err)
	}
}

// TestAckOfManyUnknownTasks: an ack naming a million tasks not leased
// fails with a short error that names the first few and counts the rest.
func TestAckOfManyUnknownTasks(t *testing.T) {
	m := newManager(t, queue.Config{})
	mustPut(t, m, "q", "a")
	ids := make([]uint64, 1_000_000)
	for i := range ids {
		ids[i] = uint64(i + 100)
	}
	_, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: ids}, nil)
	if !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Ack = %v, want ErrNotLeased", err)
	}
	var te *queue.TaskError
	if msg := err.Error(); len(msg) > 2000 || !strings.HasPrefix(msg, "task 100: ") || !strings.HasSuffix(msg, "\n999980 more tasks: "+queue.ErrNotLeased.Error()) || !errors.As(err, &te) {
		t.Fatalf("Ack's error, %d bytes: %.300q ... %q", len(msg), msg, msg[max(0, len(msg)-100):])
	}
}

func TestAckTasks(t *testing.T) {
	m := newManager(t, queue.Config{})
	ids := mustPut(t, m, "q", "a", "b", "c")
	mustGet(t, m, "q", 3, 1)
	acked, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ids[2], ids[0]}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := payloads(acked); !slices.Equal(got, []string{"c", "a"}) {
		t.Fatalf("acked %v", got)
	}
	// Acking twice, by the wrong owner, an unknown id.
	acked, err = m.Ack(queue.AckRequest{Queue: "q", Owner: 2, IDs: []uint64{ids[1]}}, nil)
	if len(acked) != 0 || !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Ack by wrong owner = %v, %v; want ErrNotLeased", acked, err)
	}
	acked, err = m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ids[0], ids[1], 999}}, nil)
	if !slices.Equal(payloads(acked), []string{"b"}) {
		t.Fatalf("acked %v, want [b]", payloads(acked))
	}
	var failed []uint64
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var te *queue.TaskError
		if !errors.As(e, &te) || !errors.Is(e, queue.ErrNotLeased) {
			t.Fatalf("error %v is not a TaskError of ErrNotLeased", e)
		}
		failed = append(failed, te.ID)
	}
	if !slices.Equal(failed, []uint64{ids[0], 999}) {
		t.Fatalf("failed ids %v", failed)
	}
	s := mustStats(t, m, "q")
	if s.Done != 3 || s.Acks != 3 || s.Leased != 0 {
		t.Fatalf("stats = %+v", s)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "nope", Owner: 1, IDs: ids}, nil); !errors.Is(err, queue.ErrUnknownQueue) {
		t.Fatalf("Ack on unknown queue = %v", err)
	}
}

func TestNoAck(t *testing.T) {
	m := newManager(t, queue.Config{})
	mustPut(t, m, "q", "a", "b")
	ts, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1, NoAck: true}, nil)
	if err != nil || len(ts) != 1 || ts[0].Attempts != 1 {
		t.Fatalf("Get noAck = %+v, %v", ts, err)
	}
	s := mustStats(t, m, "q")
	if s.Done != 1 || s.Leased != 0 || s.Ready != 1 {
		t.Fatalf("stats = %+v", s)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[0].ID}}, nil); !errors.Is(err, queue.ErrNotLeased) {
		t.Fatalf("Ack of a noAck task = %v", err)
	}
	if m.LeasedBy(1) != 0 {
		t.Fatal("noAck task is leased")
	}
	// A noAck task that could not be delivered goes back.
	m.Unget(queue.GetRequest{Queue: "q", NoAck: true}, ts)
	again := mustGet(t, m, "q", 2, 1)
	if got := payloads(again); !slices.Equal(got, []string{"a", "b"}) || again[0].Attempts != 1 {
		t.Fatalf("after Unget of NoAck tasks got %v (%+v)", got, again)
	}
}

func TestClose(t *testing.T) {
	m := newManager(t, queue.Config{MaxLen: 1})
	mustPut(t, m, "full", "x")
	getCh := goGet(context.Background(), m, "q", 1, 1)
	putErr := make(chan error, 1)
	go func() {
		_, err := m.Put(context.Background(), queue.PutRequest{Queue: "full", Items: items("y")})
		putErr <- err
	}()
	waitConsumers(t, m, "q", 1)
	m.Close()
	if r := recvGet(t, getCh); r.err != queue.ErrClosed || r.ts != nil {
		t.Fatalf("blocked Get after Close = %v, %v", r.ts, r.err)
	}
	select {
	case err := <-putErr:
		if !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("blocked Put after Close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked Put did not return")
	}
	m.Close() // idempotent
	if _, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("a")}); err != queue.ErrClosed {
		t.Fatalf("Put after Close = %v", err)
	}
	if _, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil); err != queue.ErrClosed {
		t.Fatalf("Get after Close = %v", err)
	}
	if _, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{1}}, nil); err != queue.ErrClosed {
		t.Fatalf("Ack after Close = %v", err)
	}
	if _, err := m.Stats("q"); err != queue.ErrClosed {
		t.Fatalf("Stats after Close = %v", err)
	}
}

func TestBadArguments(t *testing.T) {
	m := newManager(t, queue.Config{})
	mustPut(t, m, "q", "a")
	ts := mustGet(t, m, "q", 1, 1)
	tests := []struct {
		name string
		call func() error
	}{
		{"Get max 0", func() error {
			_, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 0, Owner: 1}, nil)
			return err
		}},
		{"Get negative lease", func() error {
			_, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 1, Lease: -time.Second, Owner: 1}, nil)
			return err
		}},
		{"Extend negative lease", func() error { return m.Extend("q", 1, []uint64{ts[0].ID}, -time.Second) }},
		{"Peek negative", func() error { _, err := m.Peek("q", -1); return err }},
		{"SetMaxLen negative", func() error { return m.SetMaxLen("q", -1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, queue.ErrBadArgument) {
				t.Fatalf("%s = %v, want ErrBadArgument", tt.name, err)
			}
		})
	}
	if err := m.SetMaxLen("new", 5); err != nil {
		t.Fatal(err)
	}
	if s := mustStats(t, m, "new"); s.MaxLen != 5 {
		t.Fatalf("SetMaxLen on a new queue: %+v", s)
	}
	if err := m.SetMaxLen("bad\n", 5); !errors.Is(err, queue.ErrBadQueueName) {
		t.Fatalf("SetMaxLen with a bad name = %v", err)
	}
}

// MaxWait bounds a blocked get without a deadline in its ctx, and a
// getter's timer is reused from one get to the next without a stale tick
// cutting the next wait short.
func TestGetMaxWait(t *testing.T) {
	m := newManager(t, queue.Config{})
	for i := range 3 {
		start := time.Now()
		ts, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1, MaxWait: 20 * time.Millisecond}, nil)
		if took := time.Since(start); ts != nil || err != nil || took < 20*time.Millisecond {
			t.Fatalf("get %d of an empty queue = %v, %v after %v; want nothing after 20ms", i, ts, err, took)
		}
	}
	if ts, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1}, nil); ts != nil || err != nil {
		t.Fatalf("get with a done ctx = %v, %v", ts, err)
	}
	if _, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 1, MaxWait: -time.Second}, nil); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("get with a negative MaxWait = %v, want ErrBadArgument", err)
	}

	done := make(chan []queue.Task, 1)
	go func() {
		ts, _ := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 1, Owner: 1, MaxWait: time.Minute}, nil)
		done <- ts
	}()
	waitConsumers(t, m, "q", 1)
	mustPut(t, m, "q", "a")
	if got := payloads(<-done); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("waiting get gave %v, want a", got)
	}
}

// Ack returns the acked tasks in the caller's buffer, and what it returns
// is what it passed to Publish.
func TestAckReusesBuffer(t *testing.T) {
	m := newManager(t, queue.Config{})
	mustPut(t, m, "q", "a")
	mustPut(t, m, "q", "b")
	ts, err := m.Get(context.Background(), queue.GetRequest{Queue: "q", Max: 2, Lease: time.Minute, Owner: 1}, nil)
	if err != nil || len(ts) != 2 {
		t.Fatalf("get: %d tasks, %v", len(ts), err)
	}
	buf := make([]queue.Task, 4)
	var published []queue.Task
	acked, err := m.Ack(queue.AckRequest{Queue: "q", Owner: 1, IDs: []uint64{ts[0].ID, ts[1].ID, 999},
		Publish: func(a []queue.Task) ([]queue.Task, error) { published = a; return a, nil }}, buf)
	if !errors.Is(err, queue.ErrNotLeased) {
		t.Errorf("ack of an unknown id: %v, want ErrNotLeased", err)
	}
	if len(acked) != 2 || &acked[0] != &buf[0] || &published[0] != &buf[0] {
		t.Fatalf("acked %d tasks, not in the buffer given (published %d)", len(acked), len(published))
	}
	if got := payloads(acked); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("acked %v, want a and b", got)
	}
}

// Get takes tasks into the caller's buffer, whether they were ready or
// came to a blocked get, and overwrites whatever it held.
func TestGetReusesBuffer(t *testing.T) {
	m := newManager(t, queue.Config{})
	buf := make([]queue.Task, 8)
	buf[0] = queue.Task{ID: 999, LastError: "stale"}
	mustPut(t, m, "q", "a")
	mustPut(t, m, "q", "b")
	ts, err := m.Get(doneCtx(), queue.GetRequest{Queue: "q", Max: 4, Lease: time.Minute, Owner: 1}, buf)
	if err != nil || len(ts) != 2 || &ts[0] != &buf[0] {
		t.Fatalf("Get of ready tasks: %d tasks, %v; want 2 in the buffer given", len(ts), err)
	}
	if got := payloads(ts); !slices.Equal(got, []string{"a", "b"}) || ts[0].LastError != "" {
		t.Fatalf("Get gave %v (last error %q), want a and b, nothing stale", got, ts[0].LastError)
	}

	done := make(chan []queue.Task, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts, _ := m.Get(ctx, queue.GetRequest{Queue: "q", Max: 4, Lease: time.Minute, Owner: 1}, buf)
		done <- ts
	}()
	waitConsumers(t, m, "q", 1)
	mustPut(t, m, "q", "c")
	ts = <-done
	if got := payloads(ts); !slices.Equal(got, []string{"c"}) || &ts[0] != &buf[0] {
		t.Fatalf("blocked Get gave %v, want c in the buffer given", got)
	}
}

// MaxWait bounds a put waiting for room as it does a get.
func TestPutMaxWait(t *testing.T) {
	m := newManager(t, queue.Config{MaxLen: 1})
	mustPut(t, m, "q", "a")
	start := time.Now()
	_, err := m.Put(context.Background(), queue.PutRequest{Queue: "q", Items: items("b"), MaxWait: 20 * time.Millisecond})
	if took := time.Since(start); !errors.Is(err, queue.ErrQueueFull) || took < 20*time.Millisecond || took > 5*time.Second {
		t.Fatalf("put to a full queue = %v after %v; want ErrQueueFull after 20ms", err, took)
	}
	if _, err := m.Put(queue.NoWait, queue.PutRequest{Queue: "q", Items: items("b")}); !errors.Is(err, queue.ErrQueueFull) {
		t.Fatalf("put under NoWait to a full queue = %v, want ErrQueueFull at once", err)
	}
	if _, err := m.Put(queue.NoWait, queue.PutRequest{Queue: "q", MaxWait: -1}); !errors.Is(err, queue.ErrBadArgument) {
		t.Fatalf("put with a negative MaxWait = %v, want ErrBadArgument", err)
	}
}
