package wire

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestAppendResultDecodes(t *testing.T) {
	tests := []Result{
		{TaskID: 1, Worker: "w", Attempt: 1, Value: msgpack.RawMessage{0x05}},
		{TaskID: 300, Worker: "", Attempt: 3, Error: "failed after 3 attempts: boom"},
		{TaskID: 1 << 40, Worker: strings.Repeat("x", 40), Attempt: 70000, Value: mustMarshal(t, map[string]any{"a": []any{1, "b"}})},
		{TaskID: 1<<64 - 1, Worker: strings.Repeat("y", 300), Attempt: -5, Value: mustMarshal(t, strings.Repeat("v", 70000)), Error: strings.Repeat("e", 70000)},
	}
	for _, want := range tests {
		b := AppendResult(nil, &want)
		if len(b) > ResultSize(&want) {
			t.Errorf("AppendResult(%d) appended %d bytes, ResultSize says at most %d", want.TaskID, len(b), ResultSize(&want))
		}
		got, err := DecodeResult(b)
		if len(got.Value) == 0 { // msgpack decodes a raw nil as empty
			got.Value = nil
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("AppendResult(%d) decodes as %+v, %v", want.TaskID, got, err)
		}
	}
}

func BenchmarkAppendResult(b *testing.B) {
	r := Result{TaskID: 12345, Worker: "host:1234", Attempt: 1, Value: msgpack.RawMessage{0x2a}}
	buf := make([]byte, 0, 64)
	for b.Loop() {
		buf = AppendResult(buf[:0], &r)
	}
}

// DecodeResult reads by hand what reflection would: results as the master
// writes them, as msgpack.Marshal writes them, with unknown fields, or as
// an array.
func TestDecodeResultAsReflection(t *testing.T) {
	r := Result{TaskID: 7, Worker: "w1", Attempt: 2, Value: mustMarshal(t, "v"), Error: "e"}
	var arr bytes.Buffer
	enc := msgpack.NewEncoder(&arr)
	enc.UseArrayEncodedStructs(true)
	if err := enc.Encode(&r); err != nil {
		t.Fatal(err)
	}
	tests := map[string][]byte{
		"AppendResult":    AppendResult(nil, &r),
		"msgpack.Marshal": mustMarshal(t, &r),
		"unknown field":   mustMarshal(t, map[string]any{"task_id": 9, "extra": []int{1, 2}, "value": 5}),
		"nil fields":      mustMarshal(t, map[string]any{"task_id": nil, "worker": nil, "value": nil}),
		"array":           arr.Bytes(),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			var want Result
			werr := msgpack.Unmarshal(b, &want)
			got, err := DecodeResult(b)
			if (err != nil) != (werr != nil) {
				t.Fatalf("DecodeResult: %v; reflection: %v", err, werr)
			}
			if len(got.Value) == 0 && len(want.Value) == 0 {
				got.Value, want.Value = nil, nil
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("DecodeResult = %+v, reflection = %+v", got, want)
			}
		})
	}
	// The last two are no results at all: a map without task_id, and nothing.
	for _, bad := range [][]byte{{0x81, 0xa7, 't', 'a', 's', 'k', '_', 'i', 'd', 0xa1, 'x'}, {0xc1}, nil, {0x81, 0xa1, 'x', 0x01}, {}} {
		if _, err := DecodeResult(bad); err == nil {
			t.Errorf("DecodeResult(%x) succeeded", bad)
		}
	}
}
