// Package jsonval converts between the JSON text users type and read on the
// command line and the plain values qm carries as msgpack payloads.
package jsonval

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/wire"
)

// Parse reads one line of user input: valid JSON is taken as that value
// (integers as int64 when they fit), anything else as a plain string, so
// `seq 1 10` gives numbers and `hello` gives "hello".
func Parse(line string) any {
	s := strings.TrimSpace(line)
	if s == "" {
		return line
	}
	// The common inputs without a JSON decoder, which was most of
	// qmaster map's time per line: a word, which no JSON value starts
	// like, and an integer.
	if !strings.ContainsRune(`{["-0123456789tfn`, rune(s[0])) {
		return s
	}
	if i, ok := jsonInt(s); ok {
		return i
	}
	return decode(s)
}

// decode is Parse by the JSON decoder, for a trimmed, non-empty s.
func decode(s string) any {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil || dec.More() {
		return s
	}
	if _, err := dec.Token(); err == nil { // trailing data: not one JSON value
		return s
	}
	return normalize(v)
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

func normalize(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return x.String()
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
// {"real": r, "imag": i}.
func Marshal(v any) ([]byte, error) {
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
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(jsonable(v)); err != nil {
		return nil, fmt.Errorf("render JSON: %w", err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// AppendPayload appends a msgpack payload rendered as Marshal renders its
// decoded value (wire.DecodeValue). A payload that is one plain string is
// copied once, from the payload to dst: qmaster map prints one a line,
// and decoding it into a string and rendering that were two more copies
// and two allocations of each (4 KiB apiece at 4 KiB tasks).
func AppendPayload(dst, payload []byte) ([]byte, error) {
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
	b, err := Marshal(v)
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
		return struct {
			Real float64 `json:"real"`
			Imag float64 `json:"imag"`
		}{real(x), imag(x)}
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
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[fmt.Sprint(k)] = jsonable(e)
		}
		return out
	}
	return v
}

// ErrNotJSON is returned by ParseStrict for text that is not one JSON
// value.
var ErrNotJSON = errors.New("not one JSON value")

// ParseStrict reads text that must be exactly one JSON value (integers as
// int64 when they fit, as Parse does), with nothing but white space
// around it.
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
