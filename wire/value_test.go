package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func bigInt(s string) *big.Int {
	n, _ := new(big.Int).SetString(s, 10)
	return n
}

// pythonValues are the payloads Python clients send for the types of
// docs/VALUES.md (pyproto's corpus checks that they do), with the Go
// values DecodeValue gives.
var pythonValues = []struct {
	name, hex string
	want      any
}{
	{"2**64+1", "c70901010000000000000001", bigInt("18446744073709551617")},
	{"-2**64-1", "c70901feffffffffffffffff", bigInt("-18446744073709551617")},
	{"-10**30", "c70d01f360d3632fb98b1215c0000000", bigInt("-1000000000000000000000000000000")},
	{"set()", "d40290", Set{}},
	{"{1, 2}", "c70302920102", Set{int64(1), int64(2)}},
	{"{(1, (2, b'x'))}", "d7029192019202c40178", Set{[]any{int64(1), []any{int64(2), []byte("x")}}}},
	{"frozenset({frozenset({2})})", "c7050391d5039102", FrozenSet{FrozenSet{int64(2)}}},
	{"{'k': {1}}", "81a16bd5029101", map[string]any{"k": Set{int64(1)}}},
	{"bytearray(b'ab')", "d5046162", ByteArray("ab")},
	{"bytearray()", "c70004", ByteArray{}},
	{"naive datetime", "c70a0707e80102030405000006", DateTime{2024, 1, 2, 3, 4, 5, 6, 0}},
	{"naive datetime, fold 1", "c70a0707e88b03011e00000000", DateTime{2024, 11, 3, 1, 30, 0, 0, 1}},
	{"datetime in UTC", "d7ff00005dc065937d25", time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)},
	{"datetime at year 1", "c70cff00000000fffffff1886e0900", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
	{"datetime -05:30 'X'", "d807270f0c1f173b3b0f423fffffb2a80058", time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.FixedZone("X", -19800))},
	{"datetime +02:00", "c70e0707e8010200000000000000001c20", time.Date(2024, 1, 2, 0, 0, 0, 0, time.FixedZone("", 7200))},
	{"date", "d60507e8021d", Date{2024, 2, 29}},
	{"time", "c70606010203000004", Time{1, 2, 3, 4, 0, nil}},
	{"time, fold 1", "c70606810000000000", Time{1, 0, 0, 0, 1, nil}},
	{"time in UTC", "c70a06173b3b0f423f00000000", Time{23, 59, 59, 999999, 0, time.FixedZone("", 0)}},
	{"timedelta", "c70c08ffffffff0000000500000007", TimeDelta{-1, 5, 7}},
	{"Decimal", "d609312e3530", Decimal("1.50")},
	{"Decimal NaN", "c703094e614e", Decimal("NaN")},
	{"complex", "d80a3ff8000000000000c000000000000000", complex(1.5, -2)},
	{"{'x': {True: None}}", "81a17881c3c0", map[string]any{"x": map[any]any{true: nil}}},
}

func TestDecodeValuePython(t *testing.T) {
	for _, tc := range pythonValues {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeValue(unhex(t, tc.hex))
			if err != nil {
				t.Fatalf("DecodeValue: %v", err)
			}
			if !equalValues(got, tc.want) {
				t.Fatalf("DecodeValue = %#v, want %#v", got, tc.want)
			}
			// Each is put back as the same bytes, but a time.Time, which
			// is put as a timestamp: one in UTC is the same bytes too.
			if tm, ok := got.(time.Time); ok && tm.Location() != time.UTC {
				return
			}
			b, err := Encode(got)
			if err != nil || hex.EncodeToString(b) != tc.hex {
				t.Fatalf("Encode = %x, %v; want %s", b, err, tc.hex)
			}
		})
	}
}

// TestDecodeValueScalarKeys: a map with keys other than str, as Python
// sends {1: "a", None: 2}, is a map[any]any that is put back as it came.
func TestDecodeValueScalarKeys(t *testing.T) {
	for _, tc := range []struct {
		name, hex string
		want      any
	}{
		{"{1: 'a', None: 2}", "8201a161c002", map[any]any{int64(1): "a", nil: int64(2)}},
		{"{-1: 1, 2**64-1: 2, 1.5: 3, False: 4, 'k': 5, b'b': 6}", "86ff01cfffffffffffffffff02cb3ff800000000000003c204a16b05c4016206",
			map[any]any{int64(-1): int64(1), uint64(math.MaxUint64): int64(2), 1.5: int64(3), false: int64(4), "k": int64(5), "b": int64(6)}},
		{"{'a': 1, None: 2}", "82a16101c002", map[any]any{"a": int64(1), nil: int64(2)}},
		{"{'': 1, None: 2, 'a': 3}", "83a001c002a16103", map[any]any{"": int64(1), nil: int64(2), "a": int64(3)}},
		{"{None: 1, '': 2}", "82c001a002", map[any]any{nil: int64(1), "": int64(2)}},
		{"{'': 1, None: 2, 5: 3}", "83a001c0020503", map[any]any{"": int64(1), nil: int64(2), int64(5): int64(3)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeValue(unhex(t, tc.hex))
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("DecodeValue = %#v, %v; want %#v", got, err, tc.want)
			}
			b, err := Encode(got)
			if err != nil {
				t.Fatal(err)
			}
			if again, err := DecodeValue(b); err != nil || !reflect.DeepEqual(again, tc.want) {
				t.Fatalf("put back as %x, read again as %#v, %v", b, again, err)
			}
		})
	}
}

// equalValues is reflect.DeepEqual, but for times (Equal, and the same
// zone name and offset) and big ints (Cmp).
func equalValues(a, b any) bool {
	switch x := a.(type) {
	case time.Time:
		y, ok := b.(time.Time)
		if !ok || !x.Equal(y) {
			return false
		}
		xn, xo := x.Zone()
		yn, yo := y.Zone()
		return xn == yn && xo == yo
	case *big.Int:
		y, ok := b.(*big.Int)
		return ok && x.Cmp(y) == 0
	case Time:
		y, ok := b.(Time)
		if !ok || (x.Zone == nil) != (y.Zone == nil) {
			return false
		}
		if x.Zone != nil && x.String() != y.String() {
			return false
		}
		x.Zone, y.Zone = nil, nil
		return x == y
	}
	return reflect.DeepEqual(a, b)
}

func TestDecodeValueRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, hex string
		err       error
	}{
		{"unknown ext", "d42a00", msgp.ErrType},
		{"ext map key", "81d6ff0000000001", msgp.ErrType},
		{"array map key", "81910101", msgp.ErrType},
		{"big int of no bytes", "c70001", msgp.ErrMalformed},
		{"set of a map", "d40280", msgp.ErrMalformed},
		{"set with trailing bytes", "d5029001", msgp.ErrMalformed},
		{"set cut short", "d5029201", msgp.ErrMalformed},
		{"February 30", "d60507e8021e", msgp.ErrMalformed},
		{"hour 24", "c70606180000000000", msgp.ErrMalformed},
		{"datetime of 9 bytes", "c7090707e8010203040500", msgp.ErrMalformed},
		{"timestamp of 5 bytes", "c705ff0000000000", msgp.ErrMalformed},
		{"timedelta not normal", "c70c08000000000001518000000000", msgp.ErrMalformed},
		{"Decimal lower case", "c703093165" + "35", msgp.ErrMalformed},
		{"complex of 8 bytes", "d70a0000000000000000", msgp.ErrMalformed},
		{"sets too deep", strings.Repeat("c7", 0) + nestedSetsHex(msgp.MaxDepth+2), msgp.ErrTooDeep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v, err := DecodeValue(unhex(t, tc.hex)); !errors.Is(err, tc.err) {
				t.Fatalf("DecodeValue = %#v, %v; want %v", v, err, tc.err)
			}
		})
	}
}

// nestedSetsHex is n frozensets, each holding the next, the last empty.
func nestedSetsHex(n int) string {
	b := msgp.AppendExt(nil, 3, []byte{0x90})
	for range n - 1 {
		b = msgp.AppendExt(nil, 3, append([]byte{0x91}, b...))
	}
	return hex.EncodeToString(b)
}

// TestEncodeBigInt: a *big.Int is put as a msgpack int when it fits one,
// else as a BigInt; a complex128 as a Complex.
func TestEncodeBigInt(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{big.NewInt(5), "05"},
		{big.NewInt(-1 << 40), "d3ffffff0000000000"},
		{bigInt("18446744073709551615"), "cfffffffffffffffff"},
		{bigInt("18446744073709551616"), "c70901010000000000000000"},
		{bigInt("-9223372036854775809"), "c70901ff7fffffffffffffff"},
		{(*big.Int)(nil), "c0"},
		{[]any{bigInt("-18446744073709551617")}, "91c70901feffffffffffffffff"},
		{complex(1.5, -2), "d80a3ff8000000000000c000000000000000"},
	} {
		b, err := Encode(tc.v)
		if err != nil || hex.EncodeToString(b) != tc.want {
			t.Errorf("Encode(%v) = %x, %v; want %s", tc.v, b, err, tc.want)
		}
	}
}

// TestEncodeRefuses: a value Python cannot hold is not put.
func TestEncodeRefuses(t *testing.T) {
	for name, v := range map[string]any{
		"February 30":        Date{2024, 2, 30},
		"month 13":           DateTime{Year: 2024, Month: 13, Day: 1},
		"fold 2":             DateTime{Year: 2024, Month: 1, Day: 1, Fold: 2},
		"hour 24":            Time{Hour: 24},
		"zone with DST":      Time{Zone: mustLoad(t, "America/New_York")},
		"offset of a day":    Time{Zone: time.FixedZone("", 86400)},
		"timedelta -1 s":     TimeDelta{Seconds: -1},
		"Decimal with space": Decimal(" 1"),
	} {
		if b, err := Encode(v); err == nil {
			t.Errorf("%s: Encode = %x, want an error", name, b)
		}
	}
}

func mustLoad(t *testing.T, name string) *time.Location {
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Skipf("no zone %s: %v", name, err)
	}
	return loc
}

func TestValueText(t *testing.T) {
	for _, tc := range []struct {
		v    interface{ String() string }
		want string
	}{
		{Date{2024, 2, 29}, "2024-02-29"},
		{DateTime{2024, 1, 2, 3, 4, 5, 6, 0}, "2024-01-02T03:04:05.000006"},
		{DateTime{Year: 1, Month: 1, Day: 1}, "0001-01-01T00:00:00"},
		{Time{1, 2, 3, 0, 0, nil}, "01:02:03"},
		{Time{1, 2, 3, 400000, 0, time.FixedZone("", -19800)}, "01:02:03.400000-05:30"},
		{Time{Zone: time.FixedZone("", 3661)}, "00:00:00+01:01:01"},
		{TimeDelta{}, "0"},
		{TimeDelta{1, 5, 0}, "86405"},
		{TimeDelta{-1, 5, 7}, "-86394.999993"},
		{TimeDelta{0, 0, 500000}, "0.5"},
		{TimeDelta{-1, 86399, 999999}, "-0.000001"},
		{TimeDelta{-999999999, 0, 0}, "-86399999913600"},
	} {
		if got := tc.v.String(); got != tc.want {
			t.Errorf("%#v: %q, want %q", tc.v, got, tc.want)
		}
	}
	if d, ok := (TimeDelta{-1, 5, 7}).Duration(); !ok || d != -86394999993*time.Microsecond {
		t.Errorf("Duration = %v, %v", d, ok)
	}
	if _, ok := (TimeDelta{Days: 999999999}).Duration(); ok {
		t.Error("a timedelta of 2.7 million years fits a Duration")
	}
	if got := (DateTime{2024, 1, 2, 3, 4, 5, 6, 0}).In(time.UTC); !got.Equal(time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC)) {
		t.Errorf("In = %v", got)
	}
}

// oldDecodeValue is DecodeValue as it was before the Python types: the
// reflecting decoder, its integers normalized.
func oldDecodeValue(b []byte) (any, error) {
	var v any
	if err := msgpack.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	var norm func(any) any
	norm = func(v any) any {
		switch x := v.(type) {
		case int8:
			return int64(x)
		case int16:
			return int64(x)
		case int32:
			return int64(x)
		case uint8:
			return int64(x)
		case uint16:
			return int64(x)
		case uint32:
			return int64(x)
		case float32:
			return float64(x)
		case uint64:
			if x <= math.MaxInt64 {
				return int64(x)
			}
		case []any:
			for i := range x {
				x[i] = norm(x[i])
			}
		case map[string]any:
			for k := range x {
				x[k] = norm(x[k])
			}
		}
		return v
	}
	return norm(v), nil
}

// FuzzDecodeValue: no panic; a payload without extension types decodes
// as it did before them (the reflecting decoder), or fails with it.
func FuzzDecodeValue(f *testing.F) {
	for _, v := range []any{
		nil, true, int64(-33), uint64(math.MaxUint64), 1.5, float32(2.5), "str", []byte{}, []byte{0, 1},
		[]any{}, []any{int64(1), []any{"a", nil}}, map[string]any{"k": []any{1.5, map[string]any{}}},
		map[string]any{"": nil, "a": "b"},
	} {
		f.Add(mustMarshal(f, v))
	}
	f.Add([]byte{0x81, 0xc0, 0x01})                 // a nil key
	f.Add([]byte{0x82, 0xa1, 'k', 1, 0xa1, 'k', 2}) // a key twice
	f.Add([]byte{0x81, 0xc4, 1, 'k', 0x01})         // a bin key
	f.Add([]byte{0x81, 0x01, 0x01})                 // an int key
	for _, v := range pythonValues {
		f.Add(unhex(f, v.hex))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeValue(b)
		if len(b) == 0 || msgp.Validate(b) != nil || hasExt(b) {
			return
		}
		want, wantErr := oldDecodeValue(b)
		if hasScalarKey(msgp.NewReader(b)) {
			return // the reflecting decoder refused keys other than str, and read nil as ""
		}
		// Compared as printed: a NaN is not DeepEqual to itself.
		if (err == nil) != (wantErr == nil) || err == nil && fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) {
			t.Fatalf("DecodeValue(%x) = %#v, %v; before the Python types %#v, %v", b, got, err, want, wantErr)
		}
	})
}

// hasScalarKey reports whether the value at r, valid and without
// extensions, holds a map with a key other than a str or bin.
func hasScalarKey(r *msgp.Reader) bool {
	v, err := r.Next()
	if err != nil {
		return false
	}
	found := false
	switch v.Type {
	case msgp.TypeArray:
		for range v.Len() {
			found = hasScalarKey(r) || found
		}
	case msgp.TypeMap:
		for range v.Len() {
			k, err := r.Next()
			if err != nil {
				return found
			}
			switch k.Type {
			case msgp.TypeStr, msgp.TypeBin:
			default:
				found = true
				if k.Type == msgp.TypeArray || k.Type == msgp.TypeMap {
					return true // DecodeValue refuses it too
				}
			}
			found = hasScalarKey(r) || found
		}
	}
	return found
}

// hasExt reports whether b, a valid payload, holds an extension value.
func hasExt(b []byte) bool {
	r := msgp.NewReader(b)
	for r.Len() > 0 {
		v, err := r.Next()
		if err != nil || v.Type == msgp.TypeExt {
			return true
		}
	}
	return false
}
