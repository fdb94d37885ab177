// Package jsonval converts between the JSON text users type and read on the
// command line and the plain values qm carries as msgpack payloads.
package jsonval

import (
	"bytes"
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/wire"
)

// Parse reads one line of user input: valid JSON is taken as that value
// (integers as int64 when they fit, else as uint64 when they fit),
// anything else as a plain string (Text of it, trimmed), so `seq 1 10`
// gives numbers and `hello` gives "hello". A line that is NaN, Infinity
// or -Infinity is that float, as Python's json module and
// MarshalAllowNaN write it, and a number beyond a float's range (1e400)
// is infinite, as that module reads it.
func Parse(line string) any {
	return parse(line, false)
}

// ParseExact is Parse for a program's output: text that is not JSON is
// taken as it is, its spaces and line ends kept.
func ParseExact(out string) any {
	return parse(out, true)
}

func parse(line string, exact bool) any {
	s := strings.TrimSpace(line)
	text := s
	if exact || s == "" {
		text = line
	}
	if s == "" {
		return Text(text)
	}
	if f, ok := nonFinite(s); ok {
		return f
	}
	// The common inputs without a JSON decoder, which was most of
	// qmaster map's time per line: a word, which no JSON value starts
	// like, and an integer.
	if !strings.ContainsRune(`{["-0123456789tfn`, rune(s[0])) {
		return Text(text)
	}
	if i, ok := jsonInt(s); ok {
		return i
	}
	if v, ok := decodeJSON(s); ok {
		return v
	}
	return Text(text)
}

// Text is the value of text that is not JSON: the string, or, if it is
// not UTF-8, its bytes. A msgpack str holds UTF-8 only: Python's
// clients cannot read one that does not (a get would fail and lose the
// task), and Go's would read U+FFFD in place of its bytes; bytes reach
// Python as bytes and print as JSON in base64 (docs/VALUES.md).
func Text(text string) any {
	if utf8.ValidString(text) {
		return text
	}
	return []byte(text)
}

// decodeJSON decodes s if it is one JSON value.
func decodeJSON(s string) (any, bool) {
	if !utf8.ValidString(s) {
		// JSON text is UTF-8; the decoder would take a string of other
		// bytes with U+FFFD in their place, changing the value.
		return nil, false
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return nil, false
	}
	if _, err := dec.Token(); err == nil { // trailing data: not one JSON value
		return nil, false
	}
	return normalize(v), true
}

// nonFiniteTokens are the tokens Python's json module writes, and reads,
// for the floats JSON has no number for.
var nonFiniteTokens = [...]struct {
	tok string
	f   float64
}{{"NaN", math.NaN()}, {"Infinity", math.Inf(1)}, {"-Infinity", math.Inf(-1)}}

// nonFinite reads s if it is one of nonFiniteTokens.
func nonFinite(s string) (float64, bool) {
	for _, t := range nonFiniteTokens {
		if s == t.tok {
			return t.f, true
		}
	}
	return 0, false
}

// plain reports whether s is printable ASCII with no quote or backslash:
// a JSON string that is s between quotes (the encoder escapes no <, >
// or & here).
func plain[T string | []byte](s T) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// jsonInt parses s if it is a JSON integer, -?(0|[1-9][0-9]*), that fits
// an int64: what Parse makes of such a line through the JSON decoder.
func jsonInt(s string) (int64, bool) {
	digits := strings.TrimPrefix(s, "-")
	if digits == "" || len(digits) > 1 && digits[0] == '0' {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	i, err := strconv.ParseInt(s, 10, 64)
	return i, err == nil
}

// normalize turns the numbers of a decoded value into int64, uint64 or
// float64.
func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		// 2^63 to 2^64-1, a Python int that travels as a msgpack uint 64
		// (docs/VALUES.md): exact, not a float.
		if u, err := strconv.ParseUint(x.String(), 10, 64); err == nil {
			return u
		}
		// Beyond float64's range (1e400), ±Inf, as Python's json module
		// reads it.
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = normalize(x[i])
		}
		return x
	case map[string]any:
		for k := range x {
			x[k] = normalize(x[k])
		}
		return x
	}
	return v
}

// Marshal renders a decoded payload (wire.DecodeValue) as compact JSON on
// one line. Bytes, and a bytearray, become a string when they are valid
// UTF-8 and base64 otherwise, since JSON has no bytes type. The Python
// types of docs/VALUES.md: an int beyond 64 bits is a number with all its
// digits; a set or frozenset an array; a datetime an RFC 3339 string if
// aware, Python's isoformat() if naive, as are a date and a time; a
// timedelta a number of seconds; a Decimal a string, exact; a complex
// {"real": r, "imag": i}. A NaN or infinite float is an error: JSON has
// no number for it.
func Marshal(v any) ([]byte, error) {
	return marshal(v, false)
}

// MarshalAllowNaN is Marshal, but writes a NaN or infinite float (a
// complex's parts too) as Python's json module does, NaN, Infinity or
// -Infinity, which Parse reads back. That is not JSON: it is for people
// and Python to read, not for every JSON parser.
func MarshalAllowNaN(v any) ([]byte, error) {
	return marshal(v, true)
}

func marshal(v any, allowNaN bool) ([]byte, error) {
	// The common results without an encoder: qmaster map prints one a
	// line, and the encoder was most of the time it took.
	switch x := v.(type) {
	case int64:
		return strconv.AppendInt(nil, x, 10), nil
	case uint64:
		return strconv.AppendUint(nil, x, 10), nil
	case string:
		if plain(x) {
			return append(append(append(make([]byte, 0, len(x)+2), '"'), x...), '"'), nil
		}
	}
	j := jsonable(v)
	b, err := encode(j)
	if _, unsupported := errors.AsType[*json.UnsupportedValueError](err); unsupported && allowNaN {
		// A non-finite float (the encoder refuses nothing else that
		// jsonable gives), which is rare: only then the slow way.
		b, err = appendAllowNaN(nil, j)
	}
	if err != nil {
		return nil, fmt.Errorf("render JSON: %w", err)
	}
	return b, nil
}

// encode is v as encoding/json writes it on one line, with no HTML escapes.
func encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// appendAllowNaN appends j, a result of jsonable, as encode writes it but
// with non-finite floats as MarshalAllowNaN writes them: the arrays,
// objects and complexes it walks itself, the rest it encodes.
func appendAllowNaN(dst []byte, j any) ([]byte, error) {
	var err error
	switch x := j.(type) {
	case float64:
		switch {
		case math.IsNaN(x):
			return append(dst, "NaN"...), nil
		case math.IsInf(x, 1):
			return append(dst, "Infinity"...), nil
		case math.IsInf(x, -1):
			return append(dst, "-Infinity"...), nil
		}
	case complexJSON:
		dst, _ = appendAllowNaN(append(dst, `{"real":`...), x.Real) // a float: no error
		dst, _ = appendAllowNaN(append(dst, `,"imag":`...), x.Imag)
		return append(dst, '}'), nil
	case []any:
		dst = append(dst, '[')
		for i, e := range x {
			if i > 0 {
				dst = append(dst, ',')
			}
			if dst, err = appendAllowNaN(dst, e); err != nil {
				return nil, err
			}
		}
		return append(dst, ']'), nil
	case map[string]any:
		dst = append(dst, '{')
		for i, k := range slices.Sorted(maps.Keys(x)) { // encoding/json's order
			if i > 0 {
				dst = append(dst, ',')
			}
			key, _ := encode(k) // a string: no error
			if dst, err = appendAllowNaN(append(append(dst, key...), ':'), x[k]); err != nil {
				return nil, err
			}
		}
		return append(dst, '}'), nil
	}
	b, err := encode(j)
	return append(dst, b...), err
}

// AppendPayload appends a msgpack payload rendered as Marshal renders its
// decoded value (wire.DecodeValue). A payload that is one plain string is
// copied once, from the payload to dst: qmaster map prints one a line,
// and decoding it into a string and rendering that were two more copies
// and two allocations of each (4 KiB apiece at 4 KiB tasks).
func AppendPayload(dst, payload []byte) ([]byte, error) {
	return appendPayload(dst, payload, false)
}

// AppendPayloadAllowNaN is AppendPayload as MarshalAllowNaN renders.
func AppendPayloadAllowNaN(dst, payload []byte) ([]byte, error) {
	return appendPayload(dst, payload, true)
}

func appendPayload(dst, payload []byte, allowNaN bool) ([]byte, error) {
	r := msgp.NewReader(payload)
	if v, err := r.Next(); err == nil && v.Type == msgp.TypeStr && r.Len() == 0 && plain(v.Data) {
		dst = append(dst, '"')
		dst = append(dst, v.Data...)
		return append(dst, '"'), nil
	}
	v, err := wire.DecodeValue(payload)
	if err != nil {
		return dst, err
	}
	b, err := marshal(v, allowNaN)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

// jsonable rewrites the types encoding/json cannot render as users expect.
func jsonable(v any) any {
	switch x := v.(type) {
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return base64.StdEncoding.EncodeToString(x)
	case wire.ByteArray:
		return jsonable([]byte(x))
	case wire.Set:
		return jsonable([]any(x))
	case wire.FrozenSet:
		return jsonable([]any(x))
	case complex128:
		return complexJSON{real(x), imag(x)}
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = jsonable(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = jsonable(e)
		}
		return out
	case map[any]any:
		// Keys that render alike (1 and "1") would give one of their
		// values at random: a str key's wins, else the one whose type
		// sorts last.
		// Pairs, not keys: a NaN key cannot be looked up again.
		type pair struct {
			key  string
			str  bool
			typ  string
			elem any
		}
		pairs := make([]pair, 0, len(x))
		for k, e := range x {
			_, str := k.(string)
			pairs = append(pairs, pair{keyText(k), str, fmt.Sprintf("%T", k), jsonable(e)})
		}
		slices.SortFunc(pairs, func(a, b pair) int {
			if c := cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(boolInt(a.str), boolInt(b.str)), cmp.Compare(a.typ, b.typ)); c != 0 {
				return c
			}
			return cmp.Compare(fmt.Sprint(a.elem), fmt.Sprint(b.elem)) // two NaN keys: printed only then
		})
		out := make(map[string]any, len(x))
		for _, p := range pairs {
			out[p.key] = p.elem
		}
		return out
	}
	return v
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pyFloat writes a finite float as Python's repr does, which its json
// module uses for a float key: the shortest digits that read back the
// same, in fixed notation from 1e-4 up to 1e16 (with ".0" if whole),
// else in exponent notation of two digits at least: 1.0, -0.0, 1e+16,
// 1e-05.
func pyFloat(x float64) string {
	if x == 0 || math.Abs(x) >= 1e-4 && math.Abs(x) < 1e16 {
		s := strconv.FormatFloat(x, 'f', -1, 64)
		if !strings.ContainsAny(s, ".") {
			s += ".0"
		}
		return s
	}
	return strconv.FormatFloat(x, 'e', -1, 64) // Go writes two exponent digits at least, as Python does
}

// keyText is a map key as JSON's keys are text, as Python's json module
// writes them ({1: "a"} as {"1": "a"}): an int as a number, a float as
// Python's repr (pyFloat), true, false, null, NaN, Infinity.
func keyText(k any) string {
	switch x := k.(type) {
	case string:
		return x
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			b, _ := appendAllowNaN(nil, x) // a non-finite float: no error
			return string(b)
		}
		return pyFloat(x)
	}
	b, err := encode(k)
	if err != nil {
		return fmt.Sprint(k)
	}
	return string(b)
}

// complexJSON is how a complex is rendered.
type complexJSON struct {
	Real float64 `json:"real"`
	Imag float64 `json:"imag"`
}

// ErrNotJSON is returned by ParseStrict for text that is not one JSON
// value.
var ErrNotJSON = errors.New("not one JSON value")

// ParseStrict reads text that must be exactly one JSON value (integers as
// int64 or uint64 when they fit, as Parse does, but no NaN or Infinity),
// with nothing but white space around it.
func ParseStrict(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotJSON, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the value", ErrNotJSON)
	}
	return normalize(v), nil
}
