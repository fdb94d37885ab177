package wire

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// The plain types have the fields and tags of the messages but not their
// hand-written codecs, so msgpack encodes them by reflection.
type (
	plainRequest    Request
	plainTask       Task
	plainCompletion Completion
)

func sampleTasks() []Task {
	at := time.Unix(1764000000, 123456789)
	return []Task{
		{ID: 1, Queue: "tasks", Payload: msgpack.RawMessage{0x07}, Attempt: 1, Enqueued: at},
		{ID: 1 << 40, Queue: "q", Payload: msgpack.RawMessage{0xa2, 'h', 'i'}, ReplyTo: "results", Attempt: 3, LastError: "boom", Enqueued: at},
		{ID: 3, Queue: "empty-payload"},
		{ID: 4, Queue: "tasks", Payload: msgpack.RawMessage{0x01}, Attempt: 2, Enqueued: at, Token: "$JS.ACK.QM_tasks.qm.2.4.9.1764000000123456789.0"},
	}
}

// sameTime makes the times of two tasks comparable with DeepEqual.
func sameTime(ts []Task) {
	for i := range ts {
		if ts[i].Enqueued.IsZero() {
			ts[i].Enqueued = time.Time{}
		} else {
			ts[i].Enqueued = time.Unix(0, ts[i].Enqueued.UnixNano())
		}
	}
}

func TestFastCodecMatchesReflection(t *testing.T) {
	for _, want := range sampleRequests() {
		t.Run("request "+want.Op.String(), func(t *testing.T) {
			fast := mustMarshal(t, want)
			var viaReflect plainRequest
			if err := msgpack.Unmarshal(fast, &viaReflect); err != nil || !reflect.DeepEqual(Request(viaReflect), want) {
				t.Errorf("hand-encoded, decoded by reflection: %+v, %v", viaReflect, err)
			}
			slow := mustMarshal(t, plainRequest(want))
			var viaHand Request
			if err := msgpack.Unmarshal(slow, &viaHand); err != nil || !reflect.DeepEqual(viaHand, want) {
				t.Errorf("encoded by reflection, hand-decoded: %+v, %v", viaHand, err)
			}
		})
	}
	for _, want := range sampleTasks() {
		fast := mustMarshal(t, want)
		var viaReflect plainTask
		if err := msgpack.Unmarshal(fast, &viaReflect); err != nil {
			t.Fatal(err)
		}
		slow := mustMarshal(t, plainTask(want))
		var viaHand Task
		if err := msgpack.Unmarshal(slow, &viaHand); err != nil {
			t.Fatal(err)
		}
		got := []Task{Task(viaReflect), viaHand}
		sameTime(got)
		w := []Task{want}
		sameTime(w)
		if !reflect.DeepEqual(got[0], w[0]) || !reflect.DeepEqual(got[1], w[0]) {
			t.Errorf("task %d: reflect-decoded %+v, hand-decoded %+v, want %+v", want.ID, got[0], got[1], w[0])
		}
	}
	for _, c := range []Completion{
		{ID: 9, Value: msgpack.RawMessage{0x01}, Error: "x"},
		{ID: 10, Value: msgpack.RawMessage{0x02}, Token: "tok"},
		{ID: 11, Error: "bad input", NoRetry: true, RetryAfter: time.Second},
	} {
		var pc plainCompletion
		if err := msgpack.Unmarshal(mustMarshal(t, c), &pc); err != nil || !reflect.DeepEqual(Completion(pc), c) {
			t.Errorf("completion: %+v, %v", pc, err)
		}
		var hand Completion
		if err := msgpack.Unmarshal(mustMarshal(t, plainCompletion(c)), &hand); err != nil || !reflect.DeepEqual(hand, c) {
			t.Errorf("completion, hand-decoded: %+v, %v", hand, err)
		}
	}
}

func TestFastCodecResponse(t *testing.T) {
	want := Response{
		Code: CodeNotLeased, Error: "e", IDs: []uint64{1, 2}, Tasks: sampleTasks(),
		Stats: []QueueStats{{Queue: "tasks", Ready: 3}}, Clients: []ClientInfo{{ID: 4, Role: "worker"}},
		Queues: []string{"a"}, Count: -1, Lease: time.Second, ClientID: 5, MaxMessageSize: 1 << 20, QueuesOutlive: true, NoAdmin: true, MaxStreams: 256, StreamClosed: true, Note: "n", Repeats: 3,
	}
	var got Response
	if err := msgpack.Unmarshal(mustMarshal(t, want), &got); err != nil {
		t.Fatal(err)
	}
	sameTime(got.Tasks)
	sameTime(want.Tasks)
	got.Clients[0].LastSeen, got.Clients[0].Since = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}
	// Unknown fields are skipped, as by reflection.
	extra := mustMarshal(t, map[string]any{"count": 3, "future": []any{1, "x"}})
	var r Response
	if err := msgpack.Unmarshal(extra, &r); err != nil || r.Count != 3 {
		t.Errorf("unknown field: %+v, %v", r, err)
	}
}

func BenchmarkCodecGetResponse(b *testing.B) {
	tasks := make([]Task, 32)
	for i := range tasks {
		tasks[i] = Task{ID: uint64(i), Queue: "tasks", Payload: msgpack.RawMessage{0xa4, 'a', 'b', 'c', 'd'}, Attempt: 1, Enqueued: time.Now()}
	}
	resp := Response{Tasks: tasks, Lease: 30 * time.Second}
	var buf rwBuffer
	c := NewCodec(&buf, 0)
	for b.Loop() {
		if err := c.Write(&resp); err != nil {
			b.Fatal(err)
		}
		var got Response
		if err := c.Read(&got); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCodecPut is a producer's put of 32 payloads, written and read
// back as the master reads it.
func BenchmarkCodecPut(b *testing.B) {
	items := make([]msgpack.RawMessage, 32)
	for i := range items {
		items[i] = msgpack.RawMessage{0xa4, 'a', 'b', 'c', byte('0' + i%10)}
	}
	benchRequest(b, &Request{Op: OpPut, Queue: "tasks", Items: items, ReplyTo: "results"})
}

// BenchmarkCodecCompleteThenGet is a worker's complete of 32 results
// chained to its next get: its request on every batch.
func BenchmarkCodecCompleteThenGet(b *testing.B) {
	results := make([]Completion, 32)
	for i := range results {
		results[i] = Completion{ID: uint64(1000 + i), Value: msgpack.RawMessage{0x2a}}
	}
	benchRequest(b, &Request{Op: OpComplete, Queue: "tasks", ResultQueue: "results", Results: results,
		Then: &Request{Op: OpGet, Queue: "tasks", Max: 32, Timeout: time.Second}})
}

// BenchmarkCodecPut4KiB is a producer's put of 1,000 payloads of 4 KiB,
// written and read back as the master reads it: into a buffer of its own.
func BenchmarkCodecPut4KiB(b *testing.B) {
	items := make([]msgpack.RawMessage, 1000)
	for i := range items {
		items[i] = payload4KiB
	}
	b.SetBytes(int64(len(items) * len(payload4KiB)))
	benchRequest(b, &Request{Op: OpPut, Queue: "tasks", Items: items, ReplyTo: "results"})
}

// BenchmarkCodecComplete4KiB is a worker's complete of 32 results of 4 KiB
// chained to its next get, written and read back as the master reads it:
// into the buffer of the one before.
func BenchmarkCodecComplete4KiB(b *testing.B) {
	results := make([]Completion, 32)
	for i := range results {
		results[i] = Completion{ID: uint64(1000 + i), Value: payload4KiB}
	}
	b.SetBytes(int64(len(results) * len(payload4KiB)))
	benchRequest(b, &Request{Op: OpComplete, Queue: "tasks", ResultQueue: "results", Results: results,
		Then: &Request{Op: OpGet, Queue: "tasks", Max: 32, Timeout: time.Second}}, (*Codec).ReuseReads)
}

// payload4KiB is a msgpack string of 4,096 bytes.
var payload4KiB = append(msgpack.RawMessage{0xda, 0x10, 0x00}, bytes.Repeat([]byte{'x'}, 4096)...)

func benchRequest(b *testing.B, req *Request, opts ...func(*Codec)) {
	var buf rwBuffer
	c := NewCodec(&buf, 0)
	for _, o := range opts {
		o(c)
	}
	for b.Loop() {
		if err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		var got Request
		if err := c.Read(&got); err != nil {
			b.Fatal(err)
		}
	}
}

// rwBuffer is a pipe in one goroutine: what is written is read back.
type rwBuffer struct{ b []byte }

func (r *rwBuffer) Write(p []byte) (int, error) { r.b = append(r.b, p...); return len(p), nil }
func (r *rwBuffer) Read(p []byte) (int, error) {
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// plainWriter is a writer that is not a *bytes.Buffer, so that the
// EncodeMsgpack methods append into a buffer of their own.
type plainWriter struct{ b []byte }

func (w *plainWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *plainWriter) WriteByte(c byte) error      { w.b = append(w.b, c); return nil }

type plainResponse Response

// reflected encodes v by reflection with compact ints, as a Codec has
// always written its messages.
func reflected(t *testing.T, v any) []byte {
	t.Helper()
	b, err := appendReflect(nil, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The hand-written encoders write the very bytes that reflection writes
// from the struct tags, at the boundaries of every msgpack form they
// choose between, and through EncodeMsgpack into any writer.
func TestAppendMatchesReflection(t *testing.T) {
	long := func(n int) string { return strings.Repeat("q", n) }
	var tasks []Task
	for _, id := range []uint64{0, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0xffffffff, 0x100000000, math.MaxUint64} {
		tasks = append(tasks, Task{ID: id, Queue: "tasks", Payload: msgpack.RawMessage{0x01}, Attempt: 1, Enqueued: time.Unix(1764000000, 0)})
	}
	for _, attempt := range []int{0, 1, 0x7f, 0x80, 0x10000, math.MaxInt32 + 1, -1, -33, -129, math.MinInt64} {
		tasks = append(tasks, Task{ID: 1, Queue: "q", Attempt: attempt})
	}
	for _, n := range []int{0, 31, 32, 255, 256, 65535, 65536} {
		tasks = append(tasks, Task{ID: 2, Queue: long(n), ReplyTo: long(n), LastError: long(n), Payload: msgpack.RawMessage{0xc3}})
	}
	for _, at := range []time.Time{{}, time.Unix(0, 0), time.Unix(1, 1), time.Unix(1<<32-1, 0), time.Unix(1<<32, 0),
		time.Unix(1<<34-1, 999999999), time.Unix(1<<34, 0), time.Unix(-1, 5), time.Now()} {
		tasks = append(tasks, Task{ID: 3, Queue: "q", Enqueued: at})
	}
	for _, task := range tasks {
		b := appendTask(nil, &task)
		if want := reflected(t, plainTask(task)); !bytes.Equal(b, want) {
			t.Errorf("task %+v:\nappended  % x\nreflected % x", task, head(b), head(want))
		}
		var w plainWriter
		if err := msgpack.NewEncoder(&w).Encode(task); err != nil || !bytes.Equal(w.b, b) {
			t.Errorf("task %+v through EncodeMsgpack: % x, %v", task, head(w.b), err)
		}
		var back Task
		if err := msgpack.Unmarshal(b, &back); err != nil || back.ID != task.ID || back.Attempt != task.Attempt ||
			!back.Enqueued.Equal(task.Enqueued) || back.Queue != task.Queue {
			t.Errorf("task %+v decoded as %+v, %v", task, back, err)
		}
	}
	for _, r := range append(sampleRequests(), Request{Op: OpPut, Items: make([]msgpack.RawMessage, 16), Max: -40, Lease: -1}) {
		if b, want := appendRequest(nil, &r), reflected(t, plainRequest(r)); !bytes.Equal(b, want) {
			t.Errorf("request %v:\nappended  % x\nreflected % x", r.Op, b, want)
		}
	}
	for _, r := range sampleResponses() {
		b, err := appendResponse(nil, &r)
		if want := reflected(t, plainResponse(r)); err != nil || !bytes.Equal(b, want) {
			t.Errorf("response %+v:\nappended  % x (%v)\nreflected % x", r, b, err, want)
		}
	}
	for _, r := range []Result{{TaskID: 1, Worker: "w", Attempt: -300, Value: msgpack.RawMessage{0x05}}, {TaskID: 1 << 40, Error: "x"}} {
		if b, want := AppendResult(nil, &r), reflected(t, r); !bytes.Equal(b, want) {
			t.Errorf("result %+v:\nappended  % x\nreflected % x", r, b, want)
		}
	}
}

func head(b []byte) []byte { return b[:min(len(b), 40)] }

// An array of more than MaxElements elements is a bad request, however
// small each element: it is refused before anything is allocated for it.
func TestDecodeRequestElementBound(t *testing.T) {
	frame := func(key string, n int) []byte {
		b := msgp.AppendMapHeader(nil, 2)
		b = msgp.AppendUint(msgp.AppendStr(b, "op"), uint64(OpPut))
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, key), n)
		for range n {
			b = msgp.AppendNil(b)
		}
		return b
	}
	for _, key := range []string{"items", "ids", "results"} {
		if _, err := DecodeRequest(frame(key, MaxElements+1)); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "more than") {
			t.Errorf("%s of %d elements: %v, want a bad request naming the bound", key, MaxElements+1, err)
		}
	}
	if req, err := DecodeRequest(frame("items", MaxElements)); err != nil || len(req.Items) != MaxElements {
		t.Errorf("items of exactly %d elements: %d, %v", MaxElements, len(req.Items), err)
	}
}

// sampleResponses are responses with every field set in one or another.
func sampleResponses() []Response {
	return []Response{
		{Code: CodeNotLeased, Error: "e", IDs: []uint64{1, 1 << 40}, Tasks: sampleTasks(), Count: -1, Lease: time.Second, ClientID: 5, MaxMessageSize: 1 << 20, QueuesOutlive: true, NoAdmin: true, MaxStreams: 8, StreamClosed: true, Note: "partial", Repeats: 2},
		{Stats: []QueueStats{{Queue: "tasks", Ready: 300, OldestAge: time.Hour}}, Clients: []ClientInfo{{ID: 4, Role: "worker", Gateway: "n1", LastSeen: time.Unix(5, 0)}},
			Queues: []string{"a"}, Then: &Response{Count: 1}},
		{},
	}
}
