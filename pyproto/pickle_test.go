package pyproto_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/internal/pyext"
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
		// The extension types of docs/VALUES.md, as the master writes them
		// back to Python.
		{hx("92c70901010000000000000001c8010701" + "10" + strings.Repeat("00", 262)), "[18446744073709551617, " + twoTo2100 + "]"},
		{hx("93c70901feffffffffffffffff" + "c70d01f360d3632fb98b1215c0000000" + "d40101"), "[-18446744073709551617, -1000000000000000000000000000000, 1]"},
		{hx("92d40290c7030291a161"), "[set(), {'a'}]"},
		{hx("d7029192019202c40178"), "{(1, (2, b'x'))}"},
		{hx("93d40390d5039101c7050391d5039102"), "[frozenset(), frozenset({1}), frozenset({frozenset({2})})]"},
		{hx("81d5039101a36f6e65"), "{frozenset({1}): 'one'}"},
		{hx("92c70004d5046162"), "[bytearray(b''), bytearray(b'ab')]"},
		{hx("c70a0707e80102030405000006"), "datetime.datetime(2024, 1, 2, 3, 4, 5, 6)"},
		{hx("d7ff00005dc065937d25"), "datetime.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc)"},
		{hx("c70cff00000000fffffff1886e0900"), "datetime.datetime(1, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)"},
		{hx("d6ff00000001"), "datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)"},
		{hx("c70cff000003e9000000000000000a"), "datetime.datetime(1970, 1, 1, 0, 0, 10, 1, tzinfo=datetime.timezone.utc)"}, // 1001 ns: cut to 1 µs
		{hx("d807270f0c1f173b3b0f423fffffb2a80058"), "datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(days=-1, seconds=66600), 'X'))"},
		{hx("c70a0707e88b03011e00000000"), "datetime.datetime(2024, 11, 3, 1, 30, fold=1)"},
		{hx("c70e0707e8010200000000000000001c20"), "datetime.datetime(2024, 1, 2, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(seconds=7200)))"},
		{hx("c70f07" + "07e80102000000000000" + "00000000" + "00"), "datetime.datetime(2024, 1, 2, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(0), ''))"},
		{hx("93d60507e8021dd60500010101d605270f0c1f"), "[datetime.date(2024, 2, 29), datetime.date(1, 1, 1), datetime.date(9999, 12, 31)]"},
		{hx("93c70606000000000000c70606010203000004c70a06173b3b0f423f00000000"), "[datetime.time(0, 0), datetime.time(1, 2, 3, 4), datetime.time(23, 59, 59, 999999, tzinfo=datetime.timezone.utc)]"},
		{hx("c70606810000000000"), "datetime.time(1, 0, fold=1)"},
		{hx("94c70c08000000000000000000000000c70c08ffffffff0000000500000007c70c083b9ac9ff0001517f000f423fc70c08c46536010000000000000000"),
			"[datetime.timedelta(0), datetime.timedelta(days=-1, seconds=5, microseconds=7), datetime.timedelta(days=999999999, seconds=86399, microseconds=999999), datetime.timedelta(days=-999999999)]"},
		{hx("95d609312e3530d5092d30c703094e614ec709092d496e66696e697479c7050931452b3330"), "[Decimal('1.50'), Decimal('-0'), Decimal('NaN'), Decimal('-Infinity'), Decimal('1E+30')]"},
		{hx("92d80a3ff8000000000000c000000000000000d80a" + strings.Repeat("00", 16)), "[(1.5-2j), 0j]"},
		{mp(t, time.Date(2024, 1, 2, 3, 4, 5, 6000, time.FixedZone("X", 3600))), "datetime.datetime(2024, 1, 2, 2, 4, 5, 6, tzinfo=datetime.timezone.utc)"},
		{bytes.Repeat([]byte("b"), 300), "300"},
		// Strings Python cannot decode go as bytes (a get that raised
		// would lose its task); the surrogates a Python str may hold,
		// which Go's UTF-8 is not, stay a str.
		{mp(t, []any{"\xffb", "a\xed\xa0"}), `[b'\xffb', b'a\xed\xa0']`},
		{[]any{"\xffb", map[string]any{"\xc3": "\xe9t\xe9"}}, `[b'\xffb', {b'\xc3': b'\xe9t\xe9'}]`},
		{hx("92a3eda080a6" + "61edbfbfed9f"), `['\ud800', b'a\xed\xbf\xbf\xed\x9f']`},
	}
}

// hx is msgpack given in hex.
func hx(s string) pyproto.Msgpack {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

var twoTo2100 = new(big.Int).Lsh(big.NewInt(1), 2100).String()

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
		"msgpack ext":     {pyproto.Msgpack{0xd4, 42, 0x00}, pyproto.ErrUnsupported},
		"msgpack map key": {pyproto.Msgpack{0x81, 0x80, 0x01}, pyproto.ErrUnsupported},
		"msgpack bad":     {pyproto.Msgpack{0xc1}, pyproto.ErrBadMsgpack},
		"msgpack trailer": {pyproto.Msgpack{0x01, 0x02}, pyproto.ErrBadMsgpack},
		"msgpack short":   {pyproto.Msgpack{0x92, 0x01}, pyproto.ErrBadMsgpack},
		"msgpack cut str": {pyproto.Msgpack{0xa3, 'a'}, pyproto.ErrBadMsgpack},
		"msgpack liar":    {pyproto.Msgpack{0xdd, 0xff, 0xff, 0xff, 0xff}, pyproto.ErrBadMsgpack},
		"msgpack deep":    {pyproto.Msgpack(bytes.Repeat([]byte{0x91}, 200)), pyproto.ErrTooDeep},
		"msgpack deep ext": {pyproto.Msgpack(append(bytes.Repeat([]byte{0x91}, pyproto.MaxDepth), 0xd4, 42, 0)),
			pyproto.ErrUnsupported},
		"go type": {struct{}{}, pyproto.ErrUnsupported},

		// Extension types whose data is not a value of their type.
		"big int of no bytes":     {hx("c70001"), pyproto.ErrBadMsgpack},
		"set of a map":            {hx("d40280"), pyproto.ErrBadMsgpack},
		"set with trailing bytes": {hx("d5029001"), pyproto.ErrBadMsgpack},
		"set cut short":           {hx("d5029201"), pyproto.ErrBadMsgpack},
		"set holding a map":       {hx("d5029180"), pyproto.ErrUnsupported},
		"set holding a set":       {hx("d60391d40290"), pyproto.ErrUnsupported},
		"set as a dict key":       {hx("81d40290c0"), pyproto.ErrUnsupported},
		"bytearray as a dict key": {hx("81c70004c0"), pyproto.ErrUnsupported},
		"set too deep":            {pyproto.Msgpack(nestedSets(pyproto.MaxDepth + 2)), pyproto.ErrTooDeep},
		"date of 3 bytes":         {hx("c7030507e801"), pyproto.ErrBadMsgpack},
		"February 30":             {hx("d60507e8021e"), pyproto.ErrBadMsgpack},
		"hour 24":                 {hx("c70606180000000000"), pyproto.ErrBadMsgpack},
		"offset of a day":         {hx("c70a0600000000000000015180"), pyproto.ErrBadMsgpack},
		"offset cut":              {hx("c7080600000000000000" + "0000"), pyproto.ErrBadMsgpack},
		"name without its zero":   {hx("c70b0600000000000000000000" + "41"), pyproto.ErrBadMsgpack},
		"datetime of 9 bytes":     {hx("c7090707e8010203040500"), pyproto.ErrBadMsgpack},
		"timestamp of 5 bytes":    {hx("c705ff0000000000"), pyproto.ErrBadMsgpack},
		"timestamp year 10000":    {mp(t, time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)), pyproto.ErrUnsupported},
		"timestamp year 0":        {mp(t, time.Date(0, 12, 31, 0, 0, 0, 0, time.UTC)), pyproto.ErrUnsupported},
		"timedelta not normal":    {hx("c70c08000000000001518000000000"), pyproto.ErrBadMsgpack},
		"Decimal lower case":      {hx("c703093165" + "35"), pyproto.ErrBadMsgpack},
		"Decimal empty":           {hx("c70009"), pyproto.ErrBadMsgpack},
		"complex of 8 bytes":      {hx("d70a0000000000000000"), pyproto.ErrBadMsgpack},
	} {
		if b, err := pyproto.Pickle(tt.v); !errors.Is(err, tt.want) {
			t.Errorf("%s: Pickle = %x, %v; want %v", name, b, err, tt.want)
		}
	}
}

// nestedSets is n frozensets, each holding the next, the last empty.
func nestedSets(n int) []byte {
	b := msgp.AppendExt(nil, pyext.FrozenSet, []byte{0x90})
	for range n - 1 {
		b = msgp.AppendExt(nil, pyext.FrozenSet, append([]byte{0x91}, b...))
	}
	return b
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
