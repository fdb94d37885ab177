package msgp_test

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// FuzzReader feeds arbitrary bytes to the walker and the reader, which
// must agree: what Validate accepts, a recursive walk over Next reads to
// its last byte, and what it refuses, that walk refuses for the same
// reason. An accepted value re-encodes with the Append functions to one
// that reads back equal. The typed reads must agree with vmihailenco's.
func FuzzReader(f *testing.F) {
	for _, v := range []any{
		nil, true, int64(-33), uint64(math.MaxUint64), 1.5, float32(2.5), "str", []byte{0, 1},
		[]any{int64(1), []any{"a", nil}}, map[string]any{"k": []any{1.5, map[string]any{}}},
		time.Unix(1764000000, 123456789), time.Unix(1<<35, 0),
		map[string]any{"id": 1, "q": "tasks", "payload": []byte("p"), "attempt": 1, "enqueued": time.Unix(1, 0)},
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(msgp.AppendStr(msgp.AppendMapHeader(nil, 16), "sixteen pairs claimed"))
	f.Add(msgp.AppendNil(msgp.AppendArrayHeader(msgp.AppendArrayHeader(nil, 1), 70000)))
	f.Add(bytes.Repeat([]byte{0x91}, msgp.MaxDepth+1))
	f.Add([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff})                         // an array claiming 2G elements
	f.Add([]byte{0x92, 0xcd, 1, 0, 0x05})                               // a legacy time
	f.Add([]byte{0xc7, 0x0c, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2}) // a 12-byte time
	f.Fuzz(func(t *testing.T, b []byte) {
		verr := msgp.Validate(b)
		r := msgp.NewReader(b)
		tree, werr := walk(r, 0)
		if werr == nil && r.Len() != 0 {
			werr = msgp.ErrMalformed // trailing bytes
		}
		if (verr == nil) != (werr == nil) || errors.Is(verr, msgp.ErrTooDeep) != errors.Is(werr, msgp.ErrTooDeep) {
			t.Fatalf("Validate: %v; a walk over Next: %v", verr, werr)
		}
		if verr == nil {
			if raw, err := msgp.NewReader(b).Raw(); err != nil || !bytes.Equal(raw, b) {
				t.Fatalf("Raw: % x, %v", raw, err)
			}
			again := encode(nil, tree)
			if err := msgp.Validate(again); err != nil {
				t.Fatalf("re-encoded % x as % x: %v", b, again, err)
			}
			back, err := walk(msgp.NewReader(again), 0)
			if err != nil || !reflect.DeepEqual(back, tree) {
				t.Fatalf("re-encoded % x as % x: read back %#v (%v), want %#v", b, again, back, err, tree)
			}
		}
		compareTypedReads(t, b)
	})
}

// floatBits is a float as its bits, so that a NaN equals itself.
type floatBits uint64

type ext struct {
	typ  int8
	data string
}

// pairs is a map's entries in order, which a Go map would lose.
type pairs [][2]any

// walk reads one value with Next, recursing into containers, with the
// depth rule of the package doc.
func walk(r *msgp.Reader, depth int) (any, error) {
	v, err := r.Next()
	if err != nil {
		return nil, err
	}
	switch v.Type {
	case msgp.TypeNil:
		return nil, nil
	case msgp.TypeBool:
		return v.Bool(), nil
	case msgp.TypeInt:
		return v.Int(), nil
	case msgp.TypeUint:
		return v.Uint(), nil
	case msgp.TypeFloat:
		return floatBits(math.Float64bits(v.Float())), nil
	case msgp.TypeStr:
		return string(v.Data), nil
	case msgp.TypeBin:
		return append([]byte{}, v.Data...), nil
	case msgp.TypeExt:
		return ext{v.ExtType, string(v.Data)}, nil
	}
	if v.Len() > 0 && depth == msgp.MaxDepth {
		return nil, msgp.ErrTooDeep
	}
	if v.Type == msgp.TypeArray {
		a := make([]any, v.Len())
		for i := range a {
			if a[i], err = walk(r, depth+1); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	m := make(pairs, v.Len())
	for i := range m {
		for j := range m[i] {
			if m[i][j], err = walk(r, depth+1); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// encode appends what walk read.
func encode(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return msgp.AppendNil(b)
	case bool:
		return msgp.AppendBool(b, x)
	case int64:
		return msgp.AppendInt(b, x)
	case uint64:
		return msgp.AppendUint(b, x)
	case floatBits:
		return msgp.AppendFloat64(b, math.Float64frombits(uint64(x)))
	case string:
		return msgp.AppendStr(b, x)
	case []byte:
		return msgp.AppendBin(b, x)
	case ext: // no encoder of its own: ext8 by hand
		b = append(b, 0xc7, byte(len(x.data)), byte(x.typ))
		return append(b, x.data...)
	case []any:
		b = msgp.AppendArrayHeader(b, len(x))
		for _, e := range x {
			b = encode(b, e)
		}
		return b
	case pairs:
		b = msgp.AppendMapHeader(b, len(x))
		for _, kv := range x {
			b = encode(encode(b, kv[0]), kv[1])
		}
		return b
	}
	panic("unknown value")
}

func compareTypedReads(t *testing.T, b []byte) {
	ours := msgp.NewReader(b)
	them := func() *msgpack.Decoder { return msgpack.NewDecoder(bytes.NewReader(b)) }
	check := func(name string, got any, err error, want any, werr error) {
		t.Helper()
		if (err == nil) != (werr == nil) || err == nil && !equalRead(got, want) {
			t.Fatalf("% x as %s: %v, %v; vmihailenco %v, %v", b, name, got, err, want, werr)
		}
	}
	u, err := ours.Uint()
	wu, werr := them().DecodeUint64()
	check("uint", u, err, wu, werr)
	i, err := msgp.NewReader(b).Int()
	wi, werr := them().DecodeInt64()
	check("int", i, err, wi, werr)
	bo, err := msgp.NewReader(b).Bool()
	wbo, werr := them().DecodeBool()
	check("bool", bo, err, wbo, werr)
	s, err := msgp.NewReader(b).Str()
	ws, werr := them().DecodeString()
	check("str", s, err, ws, werr)
	tm, err := msgp.NewReader(b).Time()
	wtm, werr := them().DecodeTime()
	check("time", tm, err, wtm, werr)
	// A header claiming more than b holds is refused here only, and an ext
	// around a map is a map to vmihailenco alone.
	if n, err := msgp.NewReader(b).ArrayHeader(); err == nil {
		wn, werr := them().DecodeArrayLen()
		check("array", n, err, max(wn, 0), werr)
	}
	if n, err := msgp.NewReader(b).MapHeader(); err == nil {
		wn, werr := them().DecodeMapLen()
		check("map", n, err, max(wn, 0), werr)
	}
}
