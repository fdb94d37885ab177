package wire

import (
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
