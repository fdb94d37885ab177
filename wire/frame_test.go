package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// rw joins a reader and a writer into the io.ReadWriter a Codec wants.
type rw struct {
	io.Reader
	io.Writer
}

func sampleRequests() []Request {
	return []Request{
		{Op: OpHello, Role: "worker", Name: "host:1"},
		{Op: OpPut, Queue: "tasks", Items: []msgpack.RawMessage{{0x01}, {0xa1, 'x'}}, ReplyTo: "results", Timeout: time.Second},
		{Op: OpGet, Queue: "tasks", Max: 10, Timeout: 30 * time.Second, Lease: time.Minute},
		{Op: OpExtend, Queue: "tasks", IDs: []uint64{4, 5}, Tokens: []string{"$JS.ACK.QM_t.qm.1.4.4.1.0", "$JS.ACK.QM_t.qm.2.5.6.1.0"}},
		{Op: OpRelease, Queue: "tasks", IDs: []uint64{4, 5}, Attempts: []int{1, 3}},
		{Op: OpCancel, IDs: []uint64{7}},
		{Op: OpDelete, Queue: "map-1f2e3d", CancelTasks: true},
		{Op: OpNack, Queue: "tasks", IDs: []uint64{7}, Error: "boom"},
		{Op: OpNack, Queue: "tasks", IDs: []uint64{8}, Error: "bad input", NoRetry: true},
		{Op: OpComplete, Queue: "tasks", ResultQueue: "results", Results: []Completion{{ID: 1, Value: msgpack.RawMessage{0x02}}, {ID: 2, Error: "bad"}, {ID: 4, Error: "bad input", NoRetry: true}}},
		{Op: OpStats},
		{Op: OpPut, Queue: "tasks", Items: []msgpack.RawMessage{{0x05}, {0x06}}, RequestID: "map-1f2e-1+2"},
		{Op: OpPut, Queue: "tasks", Items: []msgpack.RawMessage{{0x05}, {0x06}}, RequestID: "map-1f2e-1+2", Resent: true},
		{Op: OpPut, Queue: "tasks", Items: []msgpack.RawMessage{{0x07}}, Keys: []string{"k"}, Priority: 3},
		{Op: OpComplete, Queue: "tasks", Results: []Completion{{ID: 3, Value: msgpack.RawMessage{0x03}, Token: "t"}},
			Then: &Request{Op: OpGet, Queue: "tasks", Max: 4, Timeout: time.Second}},
		{Op: OpPut, Queue: "tasks", Items: []msgpack.RawMessage{{0x04}}, ReplyTo: "r",
			Then: &Request{Op: OpGet, Queue: "r", Max: 1, Timeout: time.Second, NoAck: true}},
	}
}

// A chain is two requests at most: a Then of a Then is refused by the
// decoder, so that a frame of nested maps cannot make it recurse deeply.
func TestDecodeRefusesNestedThen(t *testing.T) {
	req := Request{Op: OpPut, Queue: "a", Then: &Request{Op: OpGet, Queue: "b", Then: &Request{Op: OpStats}}}
	b, err := msgpack.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeRequest(b); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), "Then of its own") {
		t.Fatalf("DecodeRequest of a three-request chain: %v, want a bad request naming the nesting", err)
	}
	resp := Response{Then: &Response{Then: &Response{Count: 1}}}
	if b, err = msgpack.Marshal(&resp); err != nil {
		t.Fatal(err)
	}
	var got Response
	if err := msgpack.Unmarshal(b, &got); err == nil || !strings.Contains(err.Error(), "Then of its own") {
		t.Fatalf("decode of a three-response chain: %v, want it refused", err)
	}
}

func TestCodecRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 0)
	reqs := sampleRequests()
	for i := range reqs {
		if err := c.Write(&reqs[i]); err != nil {
			t.Fatalf("write %v: %v", reqs[i].Op, err)
		}
	}
	for _, want := range reqs {
		var got Request
		if err := c.Read(&got); err != nil {
			t.Fatalf("read %v: %v", want.Op, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("round trip of %v:\n got %#v\nwant %#v", want.Op, got, want)
		}
	}
	if err := c.Read(&Request{}); !errors.Is(err, io.EOF) {
		t.Errorf("read past the end: %v, want EOF", err)
	}
}

// Values other than a Request or Response go by reflection, with the
// same bounds and errors.
func TestCodecOtherTypes(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 0)
	want := map[string]any{"a": []any{int8(1), "x"}, "b": nil}
	if err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := c.Read(&got); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("round trip: %#v, %v; want %#v", got, err, want)
	}
	if err := c.Write(make(chan int)); err == nil {
		t.Error("a channel was encoded")
	}
	if err := c.Write([]any{"ok", 1}); err != nil {
		t.Fatal(err)
	}
	var s string
	if err := c.Read(&s); !errors.Is(err, ErrBadRequest) {
		t.Errorf("an array read as a string: %v, want ErrBadRequest", err)
	}
}

func TestReadFrameRefusesOversizeBeforeAllocating(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 1<<31)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(bytes.NewReader(hdr[:]), nil, 1<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Errorf("%d bytes allocated refusing an oversized frame", n)
	}
}

// A frame within the limit whose header claims more than is sent costs
// memory in proportion to what arrived, not to what the header claims.
func TestReadFrameAllocatesAsBytesArrive(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 64<<20)
	stream := append(hdr[:], make([]byte, 1000)...) // then the sender stops
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadFrame(bytes.NewReader(stream), nil, 64<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 256<<10 {
		t.Errorf("%d bytes allocated for a frame of which 1000 bytes came", n)
	}
	// A whole large frame still reads whole, across the doublings.
	body := bytes.Repeat([]byte("0123456789"), 30000)
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	got, err := ReadFrame(bytes.NewReader(append(hdr[:], body...)), nil, 1<<20)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("ReadFrame of a %d-byte frame: %d bytes, %v", len(body), len(got), err)
	}
}

// A frame a little over a growth step (a get of 1,000 results of 4 KiB:
// 4 MiB and some) is read into buffers of 1.5 times its size in all,
// not into one more step of its whole size and a copy of it.
func TestReadFrameJustOverAStepGrowsOnce(t *testing.T) {
	body := bytes.Repeat([]byte{'x'}, 4<<20+100<<10)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(body)))
	stream := append(hdr[:], body...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	got, err := ReadFrame(bytes.NewReader(stream), nil, 64<<20)
	runtime.ReadMemStats(&after)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("ReadFrame: %d bytes, %v", len(got), err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > uint64(len(body))*3/2 {
		t.Errorf("%d bytes allocated for a frame of %d", n, len(body))
	}
}

func TestDecodeRefusesLyingLengths(t *testing.T) {
	// Each claims far more elements than the frame holds.
	tests := map[string][]byte{
		"array32 of ids": {0x81, 0xa3, 'i', 'd', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff},
		"map32":          {0xdf, 0x7f, 0xff, 0xff, 0xff},
		"str32":          {0x81, 0xa1, 'q', 0xdb, 0x7f, 0xff, 0xff, 0xff},
		"deep nesting":   bytes.Repeat([]byte{0x91}, 1000),
		// A map inside a fixext16, whose 16 bytes msgp.Validate takes as
		// opaque, but msgpack's DecodeMapLen reads as the map (found by
		// FuzzDecodeRequest: it asked for 51 GB).
		"ext-wrapped map": {0xd8, 0xd8, 0x81, 0xa5, 'i', 't', 'e', 'm', 's', 0xdd, 0x7f, 0xff, 0xff, 0x7c, 0x7c, 0x7c, 0x7c, 0xff},
		"ext-wrapped ids": {0xd8, 0x01, 0x81, 0xa3, 'i', 'd', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0},
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := DecodeRequest(b)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrBadRequest) {
				t.Errorf("err = %v, want ErrBadRequest", err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("%d bytes allocated decoding a %d-byte frame", n, len(b))
			}
		})
	}
}

func TestReadFrameTruncated(t *testing.T) {
	frame := []byte{0, 0, 0, 10, 1, 2, 3}
	if _, err := ReadFrame(bytes.NewReader(frame), nil, 100); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err = %v, want ErrUnexpectedEOF", err)
	}
}

func TestCodecWriteRefusesOversize(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 16)
	err := c.Write(&Request{Op: OpPut, Queue: "a-long-queue-name-over-sixteen-bytes"})
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("err = %v, want ErrMessageTooLarge", err)
	}
	if buf.Len() != 0 {
		t.Errorf("%d bytes written for a refused frame", buf.Len())
	}
}

func TestDecodeRequestMalformed(t *testing.T) {
	tests := map[string][]byte{
		"empty":          {},
		"not a map":      {0x01},
		"trailing bytes": append(mustMarshal(t, Request{Op: OpStats}), 0xc0),
		"wrong type":     mustMarshal(t, map[string]any{"op": "put"}),
		"truncated":      mustMarshal(t, Request{Op: OpPut, Queue: "tasks"})[:5],
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeRequest(b); !errors.Is(err, ErrBadRequest) {
				t.Errorf("err = %v, want ErrBadRequest", err)
			}
		})
	}
}

// A response is read by hand with no walk of the whole frame first: one
// that fails part way must still fail whole, the tasks read before the
// fault not kept, and one with bytes after it must fail.
func TestDecodeResponseMalformedKeepsNothing(t *testing.T) {
	good := mustMarshal(t, Response{Tasks: []Task{{ID: 1, Queue: "q", Payload: []byte{0x01}}, {ID: 2, Queue: "q", Payload: []byte{0x02}}}})
	tests := map[string][]byte{
		"second task cut short": good[:len(good)-3],
		"trailing bytes":        append(append([]byte{}, good...), 0xc0),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			binary.Write(&buf, binary.BigEndian, uint32(len(b)))
			buf.Write(b)
			var resp Response
			if err := NewCodec(&buf, 0).Read(&resp); !errors.Is(err, ErrBadResponse) || errors.Is(err, ErrBadRequest) {
				t.Fatalf("err = %v, want ErrBadResponse", err)
			}
			if resp.Tasks != nil {
				t.Errorf("%d tasks kept from a response that failed", len(resp.Tasks))
			}
		})
	}
}

// A message read by hand is held to the depth msgp.Validate holds a
// whole frame to: a payload, a value or an unknown field may nest only as
// deep as the containers around it leave room for; and a put's items no
// deeper than a get could hand them out (MaxPayloadDepth).
func TestDecodeHoldsTheFrameToMaxDepth(t *testing.T) {
	nest := func(k int) msgpack.RawMessage { return append(bytes.Repeat([]byte{0x91}, k), 0x01) }
	for _, k := range []int{msgp.MaxDepth - 5, msgp.MaxDepth - 4, msgp.MaxDepth - 3, msgp.MaxDepth - 2, msgp.MaxDepth - 1, msgp.MaxDepth} {
		requests := map[string]Request{
			"item":            {Op: OpPut, Queue: "q", Items: []msgpack.RawMessage{nest(k)}},
			"completion":      {Op: OpComplete, Queue: "q", Results: []Completion{{ID: 1, Value: nest(k)}}},
			"chained item":    {Op: OpPut, Queue: "q", Items: []msgpack.RawMessage{{0x01}}, Then: &Request{Op: OpPut, Queue: "q", Items: []msgpack.RawMessage{nest(k)}}},
			"chained results": {Op: OpGet, Queue: "q", Then: &Request{Op: OpComplete, Results: []Completion{{ID: 1, Value: nest(k)}}}},
		}
		for name, req := range requests {
			b := mustMarshal(t, req)
			_, err := DecodeRequest(b)
			want := msgp.Validate(b)
			if strings.HasSuffix(name, "item") && k > MaxPayloadDepth {
				want = errors.New("deeper than a get could hand out")
			}
			if (err == nil) != (want == nil) {
				t.Errorf("%s nested %d: DecodeRequest = %v, want %v", name, k, err, want)
			}
		}
		responses := map[string]Response{
			"payload":         {Tasks: []Task{{ID: 1, Queue: "q", Payload: nest(k)}}},
			"chained payload": {Then: &Response{Tasks: []Task{{ID: 1, Queue: "q", Payload: nest(k)}}}},
		}
		for name, resp := range responses {
			b := mustMarshal(t, resp)
			err := decodeMessage(b, new(Response))
			if want := msgp.Validate(b); (err == nil) != (want == nil) {
				t.Errorf("%s nested %d: decode = %v, but Validate of the frame = %v", name, k, err, want)
			}
		}
		// An unknown field, skipped.
		b := append([]byte{0x82, 0xa2, 'o', 'p', byte(OpStats), 0xa3, 'z', 'z', 'z'}, nest(k)...)
		_, err := DecodeRequest(b)
		if want := msgp.Validate(b); (err == nil) != (want == nil) {
			t.Errorf("unknown field nested %d: DecodeRequest = %v, but Validate of the frame = %v", k, err, want)
		}
	}
}

// msgpack v5 panics when a nil comes for a time.Time field; an admin
// response, read by reflection, and Unmarshal fail instead (the first a
// fuzz find: a client listing the clients of a master sending this).
func TestNilForATimeIsAnError(t *testing.T) {
	nilSeen := []byte{0x81, 0xa9, 'l', 'a', 's', 't', '_', 's', 'e', 'e', 'n', 0xc0}
	resp := append([]byte{0x81, 0xa7, 'c', 'l', 'i', 'e', 'n', 't', 's', 0x91}, nilSeen...)
	if err := decodeMessage(resp, new(Response)); !errors.Is(err, ErrBadResponse) {
		t.Errorf("a client whose last_seen is nil: %v; want ErrBadResponse", err)
	}
	var ci ClientInfo
	if err := Unmarshal(nilSeen, &ci); !errors.Is(err, msgp.ErrMalformed) {
		t.Errorf("Unmarshal of a nil last_seen: %v; want msgp.ErrMalformed", err)
	}
}

func TestRemoteErrorIs(t *testing.T) {
	err := errorFromResponse(&Response{Code: CodeQueueFull, Error: "queue full: tasks"})
	if !errors.Is(err, ErrQueueFull) || errors.Is(err, ErrNotLeased) {
		t.Errorf("errors.Is on %v does not follow its code", err)
	}
	if CodeOf(err) != CodeQueueFull {
		t.Errorf("CodeOf = %d, want %d", CodeOf(err), CodeQueueFull)
	}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeValueTypes(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want any
	}{
		{"nil", nil, nil},
		{"small int", 7, int64(7)},
		{"negative", -200, int64(-200)},
		{"big uint", uint64(1 << 63), uint64(1 << 63)},
		{"float32", float32(1.5), 1.5},
		{"bytes", []byte{0, 1}, []byte{0, 1}},
		{"string", "s", "s"},
		{"nested", map[string]any{"a": []any{uint8(1), "x"}}, map[string]any{"a": []any{int64(1), "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := mustMarshal(t, tt.in)
			got, err := DecodeValue(b)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeValue(%x) = %#v, %v; want %#v", b, got, err, tt.want)
			}
		})
	}
	if v, err := DecodeValue(nil); v != nil || err != nil {
		t.Errorf("DecodeValue(empty) = %v, %v; want nil", v, err)
	}
}

// With ReuseReads, a frame whose payloads are dropped before the next
// Read costs no allocation, and Keep leaves a frame's payloads intact.
func TestCodecReuseReads(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 0)
	c.ReuseReads()
	put := func(payload msgpack.RawMessage) {
		t.Helper()
		if err := c.Write(&Request{Op: OpPut, Queue: "q", Items: []msgpack.RawMessage{payload}}); err != nil {
			t.Fatal(err)
		}
	}
	read := func() *Request {
		t.Helper()
		var req Request
		if err := c.Read(&req); err != nil {
			t.Fatal(err)
		}
		return &req
	}
	put(msgpack.RawMessage("\xa5first"))
	first := read()
	c.Keep()
	put(msgpack.RawMessage("\xa6second"))
	second := read()
	put(msgpack.RawMessage("\xa5third"))
	read()
	if got := string(first.Items[0]); got != "\xa5first" {
		t.Errorf("a kept frame's item reads %q after two more reads", got)
	}
	if got := string(second.Items[0]); !strings.HasPrefix(got, "\xa5third") {
		t.Errorf("the item of a frame not kept reads %q, want the next frame's bytes in its place", got)
	}
	big := msgpack.RawMessage("\xda\x80\x00" + strings.Repeat("x", 32<<10))
	put(big) // the buffers grow
	read()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		put(big)
		read()
	}
	runtime.ReadMemStats(&after)
	if n := (after.TotalAlloc - before.TotalAlloc) / 10; n > 4<<10 {
		t.Errorf("%d bytes allocated per read of a 32 KiB put, want its frame's buffer reused", n)
	}
}

// A stream of large frames reads each into one allocation of its size:
// the frame before tells how large to start.
func TestCodecLargeFramesTakeOneAllocation(t *testing.T) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 0)
	items := make([]msgpack.RawMessage, 256)
	for i := range items {
		items[i] = mustMarshal(t, bytes.Repeat([]byte{'x'}, 4096))
	}
	req := &Request{Op: OpPut, Queue: "q", Items: items}
	var got Request
	if err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(&got); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	if err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&before)
	got = Request{}
	err := c.Read(&got)
	runtime.ReadMemStats(&after)
	if err != nil || len(got.Items) != len(items) {
		t.Fatalf("read %d items, %v", len(got.Items), err)
	}
	// The frame, and the Items slice (24 bytes an item); doubling from
	// 64 KiB took twice the frame.
	if n := after.TotalAlloc - before.TotalAlloc; n > uint64(len(items))*(4105+24)+16<<10 {
		t.Errorf("%d bytes allocated reading a frame of %d items of 4 KiB", n, len(items))
	}
}
