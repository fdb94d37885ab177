package pymanager

import (
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/wire"
)

// testBackend is a real queue.Manager as the Backend.
type testBackend struct{ *queue.Manager }

func (testBackend) Closing() bool   { return false }
func (testBackend) AdmitPut() error { return nil }

func (testBackend) DeletedSince(string, time.Time) bool { return false }

// testClient is the little of a Client that result routing reads.
type testClient struct{ Client }

func (testClient) Addr() string { return "127.0.0.1:4000" }

// The routing rule of results.go: after a get delivers a task with a
// reply queue, the next put to the results queue (or the reply queue) is
// its result, in the reply queue; a put to any other queue, and any put
// after that result, go where they name.
func TestResultRouting(t *testing.T) {
	m, err := queue.New(queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	p := &conn{s: New(Config{Backend: testBackend{m}, ResultsQueue: "results"}), c: testClient{}, name: "worker-1"}

	p.took("tasks", queue.Task{ID: 7, Attempts: 2}) // no reply queue: owes nothing
	if _, ok := p.resultOf("results"); ok {
		t.Fatal("a task without a reply queue made a put a result")
	}
	p.took("tasks", queue.Task{ID: 8, Attempts: 1, ReplyTo: "replies"})
	for _, q := range []string{"tasks", "b"} {
		if r, ok := p.resultOf(q); ok {
			t.Fatalf("a put to %s was taken as the task's result: %+v", q, r)
		}
	}
	r, ok := p.resultOf("results")
	if !ok || r.id != 8 || r.replyTo != "replies" {
		t.Fatalf("the put after the task = %+v, want task 8's result", r)
	}
	if again, ok := p.resultOf("results"); ok {
		t.Fatalf("a second put was taken as the result too: %+v", again)
	}
	// Several tasks, then their results: answered in the order taken,
	// each by a put to its reply queue or to the results queue.
	p.took("tasks", queue.Task{ID: 9, ReplyTo: "replies"})
	p.took("tasks", queue.Task{ID: 10, ReplyTo: "other-replies"})
	p.took("tasks", queue.Task{ID: 11, ReplyTo: "replies"})
	var answered []uint64
	for _, q := range []string{"other-replies", "results", "results"} {
		if h, ok := p.resultOf(q); ok {
			answered = append(answered, h.id)
		}
	}
	if !slices.Equal(answered, []uint64{10, 9, 11}) {
		t.Fatalf("puts to other-replies, results, results answered tasks %v; want [10 9 11]", answered)
	}
	// A pipeline stage: a put elsewhere passes its task on, and the next
	// get forgets it; a put elsewhere before the result (a progress
	// note) leaves it held until then.
	p.took("tasks", queue.Task{ID: 12, ReplyTo: "replies"})
	if _, ok := p.resultOf("b"); ok {
		t.Fatal("a put to b answered task 12")
	}
	p.took("tasks", queue.Task{ID: 13, ReplyTo: "replies"})
	if h, ok := p.resultOf("progress"); ok {
		t.Fatalf("a put to progress answered task %d", h.id)
	}
	if h, ok := p.resultOf("results"); !ok || h.id != 13 {
		t.Fatalf("the result after a stage's task and a progress note answered %+v, %v; want task 13", h, ok)
	}
	if err := p.publishResult(r, []byte{0x2a}); err != nil {
		t.Fatal(err)
	}
	ts, err := m.Get(queue.NoWait, queue.GetRequest{Queue: "replies", Max: 2, NoAck: true}, nil)
	if err != nil || len(ts) != 1 {
		t.Fatalf("reply queue holds %d items, %v; want the one result", len(ts), err)
	}
	res, err := wire.DecodeResult(ts[0].Payload)
	if err != nil {
		t.Fatal(err)
	}
	if res.TaskID != 8 || res.Attempt != 1 || res.Worker != "worker-1@127.0.0.1:4000" || string(res.Value) != "\x2a" {
		t.Fatalf("result = %+v", res)
	}
}

// fullStore is a store whose disk is full: it takes appends, as a log
// that retries them does, and writes none.
type fullStore struct{}

func (fullStore) Load() (store.Meta, []store.Task, error) { return store.Meta{}, nil, nil }
func (fullStore) Append(...store.Op) store.Ticket         { return 1 }
func (fullStore) Wait(store.Ticket) error                 { return store.ErrDiskFull }
func (fullStore) Writable() error                         { return store.ErrDiskFull }
func (fullStore) SetDumper(store.Dumper)                  {}
func (fullStore) Close() error                            { return nil }

// A Python worker's result put on a full disk is queued, as a native
// completion's results are, and the data directory writes it once it has
// room: the script is told it went in. Told it failed, it would put it
// again, and that put, with the task answered, would land in the reply
// queue as an item of its own.
func TestResultQueuedOnAFullDisk(t *testing.T) {
	m, err := queue.New(queue.Config{Store: fullStore{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	p := &conn{s: New(Config{Backend: testBackend{m}, ResultsQueue: "results"}), c: testClient{}, log: slog.New(slog.DiscardHandler)}
	p.took("tasks", queue.Task{ID: 8, Attempts: 1, ReplyTo: "replies"})
	r, ok := p.resultOf("results")
	if !ok {
		t.Fatal("the put after the task was not taken as its result")
	}
	if err := p.publishResult(r, []byte{0x2a}); err != nil {
		t.Fatalf("result put on a full disk: %v, want it taken", err)
	}
	if s, err := m.Stats("replies"); err != nil || s.Ready != 1 {
		t.Fatalf("reply queue: %+v, %v; want the result queued", s, err)
	}
}

// A result put that fails before it is queued leaves its task held: the
// script's put again is still that task's result, not an ordinary item.
func TestFailedResultPutKeepsItsTask(t *testing.T) {
	m, err := queue.New(queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	m.Close() // every put fails
	p := &conn{s: New(Config{Backend: testBackend{m}, ResultsQueue: "results", MaxMessageSize: 1 << 20}), c: testClient{}, log: slog.New(slog.DiscardHandler)}
	p.took("tasks", queue.Task{ID: 8, Attempts: 1, ReplyTo: "replies"})
	p.put("put", "results", int64(42), true, nil, 0, queue.Item{})
	if r, ok := p.resultOf("results"); !ok || r.id != 8 {
		t.Fatalf("after a failed result put, the next put answers %+v, %v; want task 8", r, ok)
	}
}
