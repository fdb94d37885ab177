package pyproto_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

func mp(t *testing.T, v any) pyproto.Msgpack {
	t.Helper()
	b, err := wire.Encode(v)
	if err != nil {
		t.Fatal(err)
	}
	return pyproto.Msgpack(b)
}

func toMsgpack(t *testing.T, v any) pyproto.Msgpack {
	t.Helper()
	b, err := pyproto.ToMsgpack(v, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return pyproto.Msgpack(b)
}

// pickleCases are replies the master writes, with Python's repr of them.
func pickleCases(t *testing.T) []struct {
	v    any
	repr string
} {
	return []struct {
		v    any
		repr string
	}{
		{pyproto.Tuple{pyproto.KindReturn, nil}, "('#RETURN', None)"},
		{pyproto.Tuple{pyproto.KindError, pyproto.Empty}, "('#ERROR', Empty())"},
		{pyproto.Tuple{pyproto.KindError, pyproto.Full}, "('#ERROR', Full())"},
		{pyproto.Tuple{pyproto.KindError, pyproto.ValueError("task_done() called too many times")}, "('#ERROR', ValueError('task_done() called too many times'))"},
		{pyproto.Tuple{pyproto.KindTraceback, "KeyError: 'x'\n"}, `('#TRACEBACK', "KeyError: 'x'\n")`},
		{pyproto.Tuple{"qm-queue:task", pyproto.Tuple{"empty", "full", "get", "get_nowait", "join"}}, "('qm-queue:task', ('empty', 'full', 'get', 'get_nowait', 'join'))"},
		{pyproto.Tuple{int64(0), int64(255), int64(256), int64(65536), int64(-1), int64(math.MinInt32), int64(1 << 40), int64(-1 << 40), int64(math.MinInt64), uint64(math.MaxUint64)},
			"(0, 255, 256, 65536, -1, -2147483648, 1099511627776, -1099511627776, -9223372036854775808, 18446744073709551615)"},
		{[]any{1.5, true, false, "h\u00e9", []byte{0, 0xff}, strings.Repeat("a", 3)}, "[1.5, True, False, 'hé', b'\\x00\\xff', 'aaa']"},
		{mp(t, []any{int64(1), "x", []byte("y"), nil, true, 2.5, []any{}, map[string]any{}}), "[1, 'x', b'y', None, True, 2.5, [], {}]"},
		{mp(t, map[string]any{"k": int64(1 << 40)}), "{'k': 1099511627776}"},
		{mp(t, uint64(math.MaxUint64)), "18446744073709551615"},
		{mp(t, float32(1.5)), "1.5"},
		{toMsgpack(t, D(int64(1), "one", T(int64(1), T(int64(2))), "pair", "s", L(T()))), "{1: 'one', (1, (2,)): 'pair', 's': [[]]}"},
		{pyproto.Msgpack(append(bytes.Repeat([]byte{0x91}, 49), 0x90)), strings.Repeat("[", 50) + strings.Repeat("]", 50)},
		{strings.Repeat("s", 70000), "70000"},
		{bytes.Repeat([]byte("b"), 300), "300"},
	}
}

// TestPickleLoadsInPython: every interpreter reads the master's replies
// as the values meant.
func TestPickleLoadsInPython(t *testing.T) {
	cases := pickleCases(t)
	var in strings.Builder
	for _, c := range cases {
		b, err := pyproto.Pickle(c.v)
		if err != nil {
			t.Fatalf("Pickle(%v): %v", c.repr, err)
		}
		in.WriteString(hex.EncodeToString(b) + "\n")
	}
	const script = `
import pickle, sys
for line in sys.stdin:
    v = pickle.loads(bytes.fromhex(line.strip()))
    print(len(v) if isinstance(v, (str, bytes)) and len(v) > 256 else repr(v))
`
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			cmd := py.Command(t, 30*time.Second, script)
			cmd.Stdin = strings.NewReader(in.String())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			got := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			if len(got) != len(cases) {
				t.Fatalf("%d lines, want %d:\n%s", len(got), len(cases), out)
			}
			for i, c := range cases {
				if got[i] != c.repr {
					t.Errorf("case %d: python read %s, want %s", i, got[i], c.repr)
				}
			}
		})
	}
}

func TestPickleRefuses(t *testing.T) {
	for name, tt := range map[string]struct {
		v    any
		want error
	}{
		"other global":    {pyproto.Exception{Module: "os", Name: "system", Args: []any{"id"}}, pyproto.ErrUnsupported},
		"newline global":  {pyproto.Exception{Module: "builtins", Name: "ValueError\nos"}, pyproto.ErrUnsupported},
		"msgpack ext":     {pyproto.Msgpack{0xd4, 0x01, 0x00}, pyproto.ErrUnsupported},
		"msgpack map key": {pyproto.Msgpack{0x81, 0x80, 0x01}, pyproto.ErrUnsupported},
		"msgpack bad":     {pyproto.Msgpack{0xc1}, pyproto.ErrBadMsgpack},
		"msgpack trailer": {pyproto.Msgpack{0x01, 0x02}, pyproto.ErrBadMsgpack},
		"msgpack short":   {pyproto.Msgpack{0x92, 0x01}, pyproto.ErrBadMsgpack},
		"msgpack cut str": {pyproto.Msgpack{0xa3, 'a'}, pyproto.ErrBadMsgpack},
		"msgpack liar":    {pyproto.Msgpack{0xdd, 0xff, 0xff, 0xff, 0xff}, pyproto.ErrBadMsgpack},
		"msgpack deep":    {pyproto.Msgpack(bytes.Repeat([]byte{0x91}, 200)), pyproto.ErrTooDeep},
		"msgpack deep ext": {pyproto.Msgpack(append(bytes.Repeat([]byte{0x91}, pyproto.MaxDepth), 0xd4, 1, 0)),
			pyproto.ErrUnsupported},
		"go type": {struct{}{}, pyproto.ErrUnsupported},
	} {
		if b, err := pyproto.Pickle(tt.v); !errors.Is(err, tt.want) {
			t.Errorf("%s: Pickle = %x, %v; want %v", name, b, err, tt.want)
		}
	}
}

// TestToMsgpackReadByGo: what Python sends reaches Go clients as the
// values they expect.
func TestToMsgpackReadByGo(t *testing.T) {
	v := D("i", int64(-5), "u", uint64(math.MaxUint64), "f", 1.5, "s", "x", "b", []byte{1}, "n", nil,
		"t", T(int64(1), "a"), "l", L(true, false), "d", D("k", L()))
	b, err := pyproto.ToMsgpack(v, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte{0xa1, 'b', 0xc4, 1, 1}) {
		t.Errorf("bytes not sent as msgpack bin: %x", b)
	}
	got, err := wire.DecodeValue(b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"i": int64(-5), "u": uint64(math.MaxUint64), "f": 1.5, "s": "x", "b": []byte{1}, "n": nil,
		"t": []any{int64(1), "a"}, "l": []any{true, false}, "d": map[string]any{"k": []any{}},
	}
	if show(got) != show(want) || len(got.(map[string]any)) != len(want) {
		t.Fatalf("Go read %#v, want %#v", got, want)
	}
	if _, err := pyproto.ToMsgpack(L(strings.Repeat("x", 100)), 50); err == nil {
		t.Fatal("ToMsgpack past its limit succeeded")
	}
}

func TestMapFields(t *testing.T) {
	result := wire.AppendResult(nil, &wire.Result{TaskID: 7, Worker: "w", Attempt: 1, Value: []byte{0x92, 0x01, 0xa1, 'x'}})
	f, ok := pyproto.MapFields(result)
	if !ok || len(f) != 4 || !bytes.Equal(f["value"], []byte{0x92, 0x01, 0xa1, 'x'}) || !bytes.Equal(f["task_id"], []byte{0x07}) {
		t.Errorf("MapFields(result) = %x, %v", f, ok)
	}
	// A map holding MaxDepth-1 nested arrays is MaxDepth deep: the limit.
	deep := func(n int) []byte {
		return append(append([]byte{0x81, 0xa1, 'k'}, bytes.Repeat([]byte{0x91}, n)...), 0x01)
	}
	for name, tt := range map[string]struct {
		b  []byte
		ok bool
	}{
		"empty map":     {[]byte{0x80}, true},
		"at the limit":  {deep(pyproto.MaxDepth - 1), true},
		"too deep":      {deep(pyproto.MaxDepth), false},
		"not a map":     {[]byte{0x91, 0x01}, false},
		"int key":       {[]byte{0x81, 0x01, 0x01}, false},
		"bin key":       {[]byte{0x81, 0xc4, 1, 'k', 0x01}, false},
		"trailing":      {[]byte{0x80, 0x01}, false},
		"cut value":     {[]byte{0x81, 0xa1, 'k', 0xa2, 'x'}, false},
		"lying length":  {[]byte{0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'k'}, false},
		"invalid value": {[]byte{0x81, 0xa1, 'k', 0xc1}, false},
	} {
		if _, ok := pyproto.MapFields(tt.b); ok != tt.ok {
			t.Errorf("%s: MapFields(%x) ok = %v, want %v", name, tt.b, ok, tt.ok)
		}
	}
}
