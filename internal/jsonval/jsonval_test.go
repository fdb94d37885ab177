package jsonval

import (
	"bytes"
	"encoding/json"
	"maps"
	"math"
	"math/big"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

func bigInt(s string) *big.Int {
	n, _ := new(big.Int).SetString(s, 10)
	return n
}

// same is reflect.DeepEqual, but a NaN is the same as a NaN.
func same(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	case []any:
		y, ok := b.([]any)
		return ok && len(x) == len(y) && slices.EqualFunc(x, y, same)
	case map[string]any:
		y, ok := b.(map[string]any)
		return ok && maps.EqualFunc(x, y, same)
	}
	return reflect.DeepEqual(a, b)
}

var (
	nan  = math.NaN()
	inf  = math.Inf(1)
	ninf = math.Inf(-1)
)

// decode is Parse by the JSON decoder alone, for a trimmed, non-empty s:
// what Parse's shortcuts must agree with.
func decode(s string) any {
	if v, ok := decodeJSON(s); ok {
		return v
	}
	return Text(s)
}

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{"42", int64(42)},
		{" -7 ", int64(-7)},
		{"1.5", 1.5},
		{"1e400", inf},
		{"-1e400", ninf},
		{`[1e400,{"a":-1e999}]`, []any{inf, map[string]any{"a": ninf}}},
		{"1e-400", 0.0},
		{"hello", "hello"},
		{"hello world", "hello world"},
		{`"quoted"`, "quoted"},
		{"true", true},
		{"null", nil},
		{"[1,2]", []any{int64(1), int64(2)}},
		{`{"a":1}`, map[string]any{"a": int64(1)}},
		{"1 2", "1 2"},
		{"", ""},

		// Integers beyond int64 as uint64 while they fit, then as floats.
		{"9223372036854775807", int64(math.MaxInt64)},
		{"9223372036854775808", uint64(1 << 63)},
		{"18446744073709551615", uint64(math.MaxUint64)},
		{"18446744073709551616", 18446744073709551616.0},
		{"100000000000000000000000000001", 1e29},
		{"-9223372036854775809", -9223372036854775809.0},
		{"[18446744073709551615,-1]", []any{uint64(math.MaxUint64), int64(-1)}},
		{`{"a":{"b":9223372036854775808}}`, map[string]any{"a": map[string]any{"b": uint64(1 << 63)}}},
		{"18446744073709551615.0", 18446744073709551615.0},

		// A line that is Python's json module's NaN, Infinity or
		// -Infinity.
		{"NaN", nan},
		{"Infinity", inf},
		{" -Infinity ", ninf},
		// Anything else stays a string, inside JSON too.
		{"[NaN, Infinity,-Infinity]", "[NaN, Infinity,-Infinity]"},
		{"nan", "nan"},
		{"inf", "inf"},
		{"-NaN", "-NaN"},
		{"+Infinity", "+Infinity"},
		{"NaNa", "NaNa"},
		{"Infinity war", "Infinity war"},
		{"[NaN", "[NaN"},
		{"[1NaN]", "[1NaN]"},
		{"[NaNx]", "[NaNx]"},
		{"[- Infinity]", "[- Infinity]"},
		{"{NaN:1}", "{NaN:1}"},
		{"NaN NaN", "NaN NaN"},

		// Text that is not UTF-8 is bytes: a msgpack str is UTF-8.
		{"h\xe9llo", []byte("h\xe9llo")},
		{" \xff ", []byte("\xff")},
		{"[\xff]", []byte("[\xff]")},
		{"\"caf\xe9\"", []byte("\"caf\xe9\"")},
		{"{\"a\":\"\xff\"}", []byte("{\"a\":\"\xff\"}")},
		{"héllo", "héllo"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := Parse(tt.in); !same(got, tt.want) {
				t.Errorf("Parse(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

// ParseExact keeps text that is not JSON as it is; JSON is read as Parse
// reads it.
func TestParseExact(t *testing.T) {
	tests := []struct {
		in   string
		want any
	}{
		{"  a b  ", "  a b  "},
		{"x\n\n", "x\n\n"},
		{"\tx", "\tx"},
		{" 42 ", int64(42)},
		{` "a" `, "a"},
		{"[1, 2]\n", []any{int64(1), int64(2)}},
		{" NaN", nan},
		{"1 2", "1 2"},
		{"  ", "  "},
		{"", ""},
		{"\xff\n", []byte("\xff\n")},
	}
	for _, tt := range tests {
		if got := ParseExact(tt.in); !same(got, tt.want) {
			t.Errorf("ParseExact(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
	}
}

// Parse's shortcuts for words and integers give what the JSON decoder
// gives.
func TestParseShortcutsAsDecoder(t *testing.T) {
	for _, in := range []string{"0", "-0", "-", "--1", "01", "-01", "00", "7", "-12", "9223372036854775807",
		"9223372036854775808", "-9223372036854775808", "-9223372036854775809", "1.0", "1e3", "12a", "x12",
		"xxxxxxxxxxxxxxxx", "héllo", "+1", ".5", "t", "true", "nul", "[", "{}", "\"", "1 2", "\u00a0",
		"18446744073709551615", "Infinit", "N"} {
		if got, want := Parse(in), decode(in); !same(got, want) {
			t.Errorf("Parse(%q) = %#v, the decoder gives %#v", in, got, want)
		}
	}
}

// Marshal's shortcuts for integers and plain strings give what the
// encoder gives.
func TestMarshalShortcutsAsEncoder(t *testing.T) {
	for _, v := range []any{int64(0), int64(-5), int64(math.MaxInt64), int64(math.MinInt64), uint64(math.MaxUint64),
		"", "abc", "a<b>&c", "quote\"", "back\\slash", "tab\t", "\x7f", "é", "\u2028", "\xff"} {
		got, err := Marshal(v)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		werr := enc.Encode(v)
		if err != nil || werr != nil || string(got) != strings.TrimSuffix(buf.String(), "\n") {
			t.Errorf("Marshal(%#v) = %s, %v; the encoder gives %q, %v", v, got, err, buf.String(), werr)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{"42", "-0", "01", "hello", "[1]", "9223372036854775808", "NaN", `[NaN,"\"",-Infinity]`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s := strings.TrimSpace(in)
		if s == "" {
			return
		}
		if _, ok := nonFinite(s); ok {
			return // Parse's own (TestParse)
		}
		if got, want := Parse(in), decode(s); !same(got, want) {
			t.Errorf("Parse(%q) = %#v, the decoder gives %#v", in, got, want)
		}
	})
}

func TestMarshal(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"int", int64(9), "9"},
		{"utf8 bytes", []byte("hi"), `"hi"`},
		{"binary bytes", []byte{0xff, 0x00}, `"/wA="`},
		{"nested", map[string]any{"a": []any{[]byte("x"), nil}}, `{"a":["x",null]}`},
		{"any keys", map[any]any{int64(1): "one"}, `{"1":"one"}`},
		{"no html escape", "<a>", `"<a>"`},

		// The Python types of docs/VALUES.md, as wire.DecodeValue gives them.
		{"big int", bigInt("-100000000000000000000000000000"), "-100000000000000000000000000000"},
		{"set", wire.Set{int64(1), []byte("x"), []any{int64(2)}}, `[1,"x",[2]]`},
		{"frozenset", wire.FrozenSet{wire.FrozenSet{}}, `[[]]`},
		{"bytearray", wire.ByteArray{0xff, 0x00}, `"/wA="`},
		{"utf8 bytearray", map[string]any{"b": wire.ByteArray("hi")}, `{"b":"hi"}`},
		{"aware datetime", time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC), `"2024-01-02T03:04:05.000006Z"`},
		{"offset datetime", time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("X", -19800)), `"2024-01-02T03:04:05-05:30"`},
		{"naive datetime", wire.DateTime{Year: 2024, Month: 1, Day: 2, Hour: 3, Minute: 4, Second: 5, Micros: 6}, `"2024-01-02T03:04:05.000006"`},
		{"date", wire.Date{Year: 2024, Month: 2, Day: 29}, `"2024-02-29"`},
		{"time", wire.Time{Hour: 1, Zone: time.FixedZone("", 7200)}, `"01:00:00+02:00"`},
		{"timedelta", wire.TimeDelta{Days: -1, Seconds: 5, Micros: 7}, `-86394.999993`},
		{"Decimal", wire.Decimal("1.50"), `"1.50"`},
		{"complex", complex(1.5, -2), `{"real":1.5,"imag":-2}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Marshal(tt.in)
			if err != nil || string(got) != tt.want {
				t.Errorf("Marshal(%#v) = %s, %v; want %s", tt.in, got, err, tt.want)
			}
			if got, err := MarshalAllowNaN(tt.in); err != nil || string(got) != tt.want {
				t.Errorf("MarshalAllowNaN(%#v) = %s, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
	for _, v := range []any{nan, []any{inf}, complex(1, ninf)} {
		if got, err := Marshal(v); err == nil {
			t.Errorf("Marshal(%#v) = %s, want an error", v, got)
		}
	}
}

func TestMarshalAllowNaN(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		{"NaN", nan, "NaN"},
		{"Infinity", inf, "Infinity"},
		{"-Infinity", ninf, "-Infinity"},
		{"list", []any{int64(1), inf, 1.5, "x<"}, `[1,Infinity,1.5,"x<"]`},
		{"map", map[string]any{"b": inf, "a": []byte("é"), "c": map[string]any{"\u2028": ninf}, "": nil},
			`{"":null,"a":"é","b":Infinity,"c":{"\u2028":-Infinity}}`},
		{"set", wire.Set{nan, []byte{0xff}}, `[NaN,"/w=="]`},
		{"any keys", map[any]any{int64(1): nan}, `{"1":NaN}`},
		{"complex", complex(nan, math.Inf(-1)), `{"real":NaN,"imag":-Infinity}`},
		{"complex in a list", []any{complex(inf, 0.5)}, `[{"real":Infinity,"imag":0.5}]`},
		{"Python types beside", []any{nan, bigInt("18446744073709551617"), time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
			wire.Decimal("1.50"), wire.TimeDelta{Seconds: 1}, true, uint64(math.MaxUint64)},
			`[NaN,18446744073709551617,"2024-01-02T03:04:05Z","1.50",1,true,18446744073709551615]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MarshalAllowNaN(tt.in)
			if err != nil || string(got) != tt.want {
				t.Errorf("MarshalAllowNaN(%#v) = %s, %v; want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

// What get prints, put reads back as it was.
func TestMarshalAllowNaNParse(t *testing.T) {
	for _, v := range []any{nan, inf, ninf, uint64(1 << 63), "NaN"} {
		b, err := MarshalAllowNaN(v)
		if err != nil {
			t.Fatalf("MarshalAllowNaN(%#v): %v", v, err)
		}
		if got := Parse(string(b)); !same(got, v) {
			t.Errorf("Parse(%s) = %#v, want %#v", b, got, v)
		}
	}
}

func TestParseStrict(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want any
		ok   bool
	}{
		{"42", int64(42), true},
		{" [1, \"a\"] ", []any{int64(1), "a"}, true},
		{"null", nil, true},
		{"hello", nil, false},
		{"1 2", nil, false},
		{"[1]]", nil, false},
		{"", nil, false},
		{"{", nil, false},
		{"18446744073709551615", uint64(math.MaxUint64), true},
		{"NaN", nil, false},
		{"[Infinity]", nil, false},
	} {
		got, err := ParseStrict([]byte(tt.in))
		if (err == nil) != tt.ok || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseStrict(%q) = %#v, %v; want %#v (ok %v)", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// appendByDecoding is what AppendPayload must give: the payload decoded,
// then marshalled.
func appendByDecoding(payload []byte) (string, error) {
	v, err := wire.DecodeValue(payload)
	if err != nil {
		return "", err
	}
	b, err := Marshal(v)
	return string(b), err
}

func TestAppendPayload(t *testing.T) {
	long := strings.Repeat("x", 5000)
	for _, v := range []any{"", "abc", long, "quote\"", "é", "\xff", []byte("bytes"), int64(-3), nil,
		map[string]any{"a": "b"}, []any{"x", int64(1)}, wire.Decimal("1.5")} {
		payload, err := wire.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		want, werr := appendByDecoding(payload)
		got, err := AppendPayload([]byte("prefix:"), payload)
		if err != nil || werr != nil || string(got) != "prefix:"+want {
			t.Errorf("AppendPayload(%#v) = %.40q, %v; decoding gives %.40q, %v", v, got, err, want, werr)
		}
	}
	// A plain string is copied into dst, and nowhere else.
	payload, _ := wire.Encode(long)
	dst := make([]byte, 0, len(payload)+8)
	if n := testing.AllocsPerRun(100, func() { _, _ = AppendPayload(dst, payload) }); n != 0 {
		t.Errorf("AppendPayload of a plain string allocated %v times", n)
	}
	// Keys other than str, as Python's json module writes them.
	payload, _ = wire.Encode(map[any]any{int64(1): "a", nil: int64(2), true: int64(3), 2.5: nil, inf: int64(5)})
	if got, err := AppendPayloadAllowNaN(nil, payload); err != nil || string(got) != `{"1":"a","2.5":null,"Infinity":5,"null":2,"true":3}` {
		t.Errorf("AppendPayloadAllowNaN of a map[any]any = %s, %v", got, err)
	}
	// Keys that render alike: the str key's value, every time.
	payload, _ = wire.Encode(map[any]any{int64(1): "int", "1": "str", true: "bool", "true": "str"})
	for range 50 {
		if got, err := AppendPayload(nil, payload); err != nil || string(got) != `{"1":"str","true":"str"}` {
			t.Fatalf("AppendPayload of keys that render alike = %s, %v", got, err)
		}
	}
	// Float keys as Python's json writes them.
	for x, want := range map[float64]string{1: "1.0", 0: "0.0", math.Copysign(0, -1): "-0.0", 2.5: "2.5", 1e20: "1e+20", 1e-7: "1e-07",
		1e16: "1e+16", 9999999999999998: "9999999999999998.0", 1e-4: "0.0001", 1.5e-5: "1.5e-05", 0.1: "0.1", -123456.789: "-123456.789"} {
		payload, _ := wire.Encode(map[any]any{x: nil})
		if got, err := AppendPayload(nil, payload); err != nil || string(got) != `{"`+want+`":null}` {
			t.Errorf("the key %v rendered as %s, %v; want %q", x, got, err, want)
		}
	}
	// A NaN key keeps its value.
	payload, _ = wire.Encode(map[any]any{math.NaN(): int64(1)})
	if got, err := AppendPayloadAllowNaN(nil, payload); err != nil || string(got) != `{"NaN":1}` {
		t.Errorf("AppendPayloadAllowNaN of a NaN key = %s, %v", got, err)
	}
	// A str followed by more bytes is not one value: decoding refuses it.
	payload, _ = wire.Encode("abc")
	if _, err := AppendPayload(nil, append(payload, 0xc0)); err == nil {
		t.Error("AppendPayload took a str with trailing bytes")
	}
}

func TestAppendPayloadAllowNaN(t *testing.T) {
	payload, err := wire.Encode([]any{int64(1), inf, "x"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := AppendPayloadAllowNaN([]byte("prefix:"), payload); err != nil || string(got) != `prefix:[1,Infinity,"x"]` {
		t.Errorf("AppendPayloadAllowNaN = %s, %v; want prefix:[1,Infinity,\"x\"]", got, err)
	}
	if got, err := AppendPayload(nil, payload); err == nil {
		t.Errorf("AppendPayload = %s, want an error", got)
	}
}

func FuzzAppendPayload(f *testing.F) {
	for _, v := range []any{"abc", "a\"b", int64(7), []any{"x"}, map[string]any{"k": nil}} {
		b, _ := wire.Encode(v)
		f.Add([]byte(b))
	}
	f.Add([]byte{0xa3, 'a', 'b'}) // a str cut short
	f.Fuzz(func(t *testing.T, payload []byte) {
		want, werr := appendByDecoding(payload)
		got, err := AppendPayload(nil, payload)
		if (err != nil) != (werr != nil) || err == nil && string(got) != want {
			t.Errorf("AppendPayload(%x) = %q, %v; decoding gives %q, %v", payload, got, err, want, werr)
		}
	})
}
