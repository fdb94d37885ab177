package msgp_test

import (
	"bytes"
	"errors"
	"math"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// encodeLike encodes v as vmihailenco does with compact ints, the form
// qm's Codec has always written and that the encoders here must match.
func encodeLike(t testing.TB, encode func(*msgpack.Encoder) error) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := encode(enc); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// formCase is one value at a boundary of msgpack's forms: its encoding
// must start with head, match vmihailenco's, and read back as want.
type formCase struct {
	name   string
	append func([]byte) []byte
	like   func(*msgpack.Encoder) error // vmihailenco's encoding of it
	head   byte                         // the type byte expected
	want   view                         // what Next reads
}

// view is what a Value holds, by its type.
type view struct {
	Type msgp.Type
	Int  int64
	Uint uint64
	F    float64
	Bool bool
	Len  int
	Data []byte
}

func see(v msgp.Value) view {
	w := view{Type: v.Type}
	switch v.Type {
	case msgp.TypeBool:
		w.Bool = v.Bool()
	case msgp.TypeInt:
		w.Int = v.Int()
	case msgp.TypeUint:
		w.Uint = v.Uint()
	case msgp.TypeFloat:
		w.F = v.Float()
	case msgp.TypeArray, msgp.TypeMap:
		w.Len = v.Len()
	default:
		w.Data = v.Data
	}
	return w
}

func uintCase(v uint64, head byte) formCase {
	want := view{Type: msgp.TypeInt, Int: int64(v)}
	if v > math.MaxInt64 {
		want = view{Type: msgp.TypeUint, Uint: v}
	}
	return formCase{
		name:   "uint " + fmtU(v),
		append: func(b []byte) []byte { return msgp.AppendUint(b, v) },
		like:   func(e *msgpack.Encoder) error { return e.EncodeUint(v) },
		head:   head, want: want,
	}
}

func intCase(v int64, head byte) formCase {
	return formCase{
		name:   "int " + fmtI(v),
		append: func(b []byte) []byte { return msgp.AppendInt(b, v) },
		like:   func(e *msgpack.Encoder) error { return e.EncodeInt(v) },
		head:   head, want: view{Type: msgp.TypeInt, Int: v},
	}
}

func strCase(n int, head byte) formCase {
	s := strings.Repeat("s", n)
	return formCase{
		name:   "str " + fmtI(int64(n)),
		append: func(b []byte) []byte { return msgp.AppendStr(b, s) },
		like:   func(e *msgpack.Encoder) error { return e.EncodeString(s) },
		head:   head, want: view{Type: msgp.TypeStr, Data: []byte(s)},
	}
}

func binCase(n int, head byte) formCase {
	v := bytes.Repeat([]byte{0xb1}, n)
	return formCase{
		name:   "bin " + fmtI(int64(n)),
		append: func(b []byte) []byte { return msgp.AppendBin(b, v) },
		like:   func(e *msgpack.Encoder) error { return e.EncodeBytes(v) },
		head:   head, want: view{Type: msgp.TypeBin, Data: v},
	}
}

// arrayCase is an array of n nils.
func arrayCase(n int, head byte) formCase {
	return formCase{
		name:   "array " + fmtI(int64(n)),
		append: func(b []byte) []byte { return nils(msgp.AppendArrayHeader(b, n), n) },
		like: func(e *msgpack.Encoder) error {
			if err := e.EncodeArrayLen(n); err != nil {
				return err
			}
			for range n {
				if err := e.EncodeNil(); err != nil {
					return err
				}
			}
			return nil
		},
		head: head, want: view{Type: msgp.TypeArray, Len: n},
	}
}

// mapCase is a map of n pairs of nils.
func mapCase(n int, head byte) formCase {
	return formCase{
		name:   "map " + fmtI(int64(n)),
		append: func(b []byte) []byte { return nils(msgp.AppendMapHeader(b, n), 2*n) },
		like: func(e *msgpack.Encoder) error {
			if err := e.EncodeMapLen(n); err != nil {
				return err
			}
			for range 2 * n {
				if err := e.EncodeNil(); err != nil {
					return err
				}
			}
			return nil
		},
		head: head, want: view{Type: msgp.TypeMap, Len: n},
	}
}

func nils(b []byte, n int) []byte {
	for range n {
		b = msgp.AppendNil(b)
	}
	return b
}

func fmtU(v uint64) string { return strconv.FormatUint(v, 10) }
func fmtI(v int64) string  { return strconv.FormatInt(v, 10) }

func formCases() []formCase {
	return []formCase{
		uintCase(0, 0x00), uintCase(0x7f, 0x7f), uintCase(0x80, 0xcc), uintCase(0xff, 0xcc),
		uintCase(0x100, 0xcd), uintCase(0xffff, 0xcd), uintCase(0x10000, 0xce), uintCase(math.MaxUint32, 0xce),
		uintCase(math.MaxUint32+1, 0xcf), uintCase(math.MaxInt64, 0xcf), uintCase(math.MaxInt64+1, 0xcf), uintCase(math.MaxUint64, 0xcf),
		intCase(1, 0x01), intCase(-1, 0xff), intCase(-32, 0xe0), intCase(-33, 0xd0), intCase(math.MinInt8, 0xd0),
		intCase(math.MinInt8-1, 0xd1), intCase(math.MinInt16, 0xd1), intCase(math.MinInt16-1, 0xd2),
		intCase(math.MinInt32, 0xd2), intCase(math.MinInt32-1, 0xd3), intCase(math.MinInt64, 0xd3),
		strCase(0, 0xa0), strCase(31, 0xbf), strCase(32, 0xd9), strCase(255, 0xd9), strCase(256, 0xda),
		strCase(65535, 0xda), strCase(65536, 0xdb),
		binCase(0, 0xc4), binCase(255, 0xc4), binCase(256, 0xc5), binCase(65535, 0xc5), binCase(65536, 0xc6),
		arrayCase(0, 0x90), arrayCase(15, 0x9f), arrayCase(16, 0xdc), arrayCase(65535, 0xdc), arrayCase(65536, 0xdd),
		mapCase(0, 0x80), mapCase(15, 0x8f), mapCase(16, 0xde), mapCase(65535, 0xde), mapCase(65536, 0xdf),
		{name: "nil", append: msgp.AppendNil, like: (*msgpack.Encoder).EncodeNil, head: 0xc0, want: view{Type: msgp.TypeNil}},
		{name: "true", append: func(b []byte) []byte { return msgp.AppendBool(b, true) },
			like: func(e *msgpack.Encoder) error { return e.EncodeBool(true) }, head: 0xc3, want: view{Type: msgp.TypeBool, Bool: true}},
		{name: "false", append: func(b []byte) []byte { return msgp.AppendBool(b, false) },
			like: func(e *msgpack.Encoder) error { return e.EncodeBool(false) }, head: 0xc2, want: view{Type: msgp.TypeBool}},
		{name: "float", append: func(b []byte) []byte { return msgp.AppendFloat64(b, -2.5e300) },
			like: func(e *msgpack.Encoder) error { return e.EncodeFloat64(-2.5e300) }, head: 0xcb, want: view{Type: msgp.TypeFloat, F: -2.5e300}},
	}
}

// Every form at its boundaries: the bytes of vmihailenco, the type byte
// expected, and Next, Validate and Raw reading it back whole.
func TestFormsRoundTrip(t *testing.T) {
	for _, tc := range formCases() {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.append([]byte{0x01}) // after a byte, as in a message
			if b[0] != 0x01 {
				t.Fatal("the existing bytes changed")
			}
			b = b[1:]
			if want := encodeLike(t, tc.like); !bytes.Equal(b, want) {
				t.Fatalf("appended % x...\nvmihailenco % x...", head(b), head(want))
			}
			if b[0] != tc.head {
				t.Errorf("type byte 0x%02x, want 0x%02x", b[0], tc.head)
			}
			if err := msgp.Validate(b); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			r := msgp.NewReader(b)
			v, err := r.Next()
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if got := see(v); !reflect.DeepEqual(got, tc.want) && !(len(got.Data) == 0 && len(tc.want.Data) == 0 && got.Type == tc.want.Type) {
				t.Errorf("Next = %+v, want %+v", short(got), short(tc.want))
			}
			if raw, err := msgp.NewReader(b).Raw(); err != nil || len(raw) != len(b) || cap(raw) != len(raw) {
				t.Errorf("Raw: %d bytes (cap %d), %v; want %d", len(raw), cap(raw), err, len(b))
			}
		})
	}
}

func head(b []byte) []byte { return b[:min(len(b), 12)] }

func short(v view) view {
	v.Data = head(v.Data)
	return v
}

// Every form cut short is refused as malformed, by Validate and by Next.
func TestTruncated(t *testing.T) {
	for _, tc := range formCases() {
		b := tc.append(nil)
		cuts := []int{0, 1, 2, 3, 4, 5, 8, len(b) / 2, len(b) - 1}
		for _, cut := range cuts {
			if cut >= len(b) {
				continue
			}
			if err := msgp.Validate(b[:cut]); !errors.Is(err, msgp.ErrMalformed) {
				t.Errorf("%s cut at %d of %d: Validate = %v, want ErrMalformed", tc.name, cut, len(b), err)
			}
			if tc.want.Type == msgp.TypeArray || tc.want.Type == msgp.TypeMap {
				continue // its header may be whole: the elements are missing
			}
			if _, err := msgp.NewReader(b[:cut]).Next(); !errors.Is(err, msgp.ErrMalformed) {
				t.Errorf("%s cut at %d of %d: Next = %v, want ErrMalformed", tc.name, cut, len(b), err)
			}
		}
	}
}

// Headers that claim more than the input holds are refused before
// anything acts on them, without allocating.
func TestLyingLengths(t *testing.T) {
	tests := map[string][]byte{
		"str32":     {0xdb, 0x7f, 0xff, 0xff, 0xff, 'x'},
		"bin32":     {0xc6, 0xff, 0xff, 0xff, 0xff, 0},
		"ext32":     {0xc9, 0xff, 0xff, 0xff, 0xff, 1, 0},
		"fixext16":  {0xd8, 1, 0, 0},
		"array32":   {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0},
		"map32":     {0xdf, 0x7f, 0xff, 0xff, 0xff, 0xc0, 0xc0},
		"map16":     {0xde, 0x00, 0x02, 0xc0, 0xc0, 0xc0}, // 2 pairs are 4 elements
		"fixarray":  {0x93, 0xc0, 0xc0},
		"nested":    {0x91, 0x91, 0xdd, 0, 1, 0, 0, 0xc0},
		"float64":   {0xcb, 0, 0, 0},
		"uint32":    {0xce, 0},
		"invalid":   {0xc1},
		"in array":  {0x92, 0xc0, 0xc1},
		"str8 head": {0xd9},
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if err := msgp.Validate(b); !errors.Is(err, msgp.ErrMalformed) {
				t.Errorf("Validate = %v, want ErrMalformed", err)
			}
			// Averaged over many calls: the runtime allocates now and then.
			const calls = 1000
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range calls {
				_ = msgp.Validate(b)
			}
			runtime.ReadMemStats(&after)
			if n := (after.TotalAlloc - before.TotalAlloc) / calls; n > 256 {
				t.Errorf("%d bytes allocated refusing %d bytes", n, len(b))
			}
		})
	}
}

func nested(depth int, inner []byte) []byte {
	return append(bytes.Repeat([]byte{0x91}, depth), inner...)
}

// MaxDepth non-empty containers may nest, an empty one inside them too;
// one more is refused, by Validate, Raw and Skip alike.
func TestDepthLimit(t *testing.T) {
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"MaxDepth arrays", nested(msgp.MaxDepth, []byte{0x01}), true},
		{"and an empty one", nested(msgp.MaxDepth, []byte{0x90}), true},
		{"and an empty map", nested(msgp.MaxDepth, []byte{0x80}), true},
		{"one more", nested(msgp.MaxDepth+1, []byte{0x01}), false},
		{"maps", append(bytes.Repeat([]byte{0x81, 0xc0}, msgp.MaxDepth+1), 0xc0), false},
		{"maps at the limit", append(bytes.Repeat([]byte{0x81, 0xc0}, msgp.MaxDepth), 0xc0), true},
		{"far too deep", nested(100000, []byte{0x01}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := msgp.Validate(tt.b)
			if tt.ok != (err == nil) || !tt.ok && !errors.Is(err, msgp.ErrTooDeep) {
				t.Errorf("Validate = %v, want ok %v", err, tt.ok)
			}
			in := append(append([]byte{0x92}, tt.b...), 0x07) // inside an array, then a value
			r := msgp.NewReader(in)
			if _, err := r.Next(); err != nil {
				t.Fatal(err)
			}
			if err := r.Skip(); tt.ok != (err == nil) {
				t.Errorf("Skip = %v, want ok %v", err, tt.ok)
			} else if tt.ok {
				if n, err := r.Uint(); n != 7 || err != nil {
					t.Errorf("after Skip: %d, %v; want 7", n, err)
				}
			}
		})
	}
}

// A value that depth containers enclose may nest MaxDepth-depth more, as
// Validate of the whole would allow: RawIn and SkipIn count them.
func TestDepthLimitWithin(t *testing.T) {
	for _, depth := range []int{1, 3, msgp.MaxDepth - 1} {
		for _, tt := range []struct {
			b  []byte
			ok bool
		}{
			{nested(msgp.MaxDepth-depth, []byte{0x01}), true},
			{nested(msgp.MaxDepth-depth+1, []byte{0x01}), false},
		} {
			whole := append(nested(depth, nil), tt.b...)
			if err := msgp.Validate(whole); tt.ok != (err == nil) {
				t.Fatalf("depth %d: Validate of the whole = %v, want ok %v", depth, err, tt.ok)
			}
			if _, err := msgp.NewReader(tt.b).RawIn(depth); tt.ok != (err == nil) || !tt.ok && !errors.Is(err, msgp.ErrTooDeep) {
				t.Errorf("depth %d: RawIn of %d nested = %v, want ok %v", depth, len(tt.b)-1, err, tt.ok)
			}
			if err := msgp.NewReader(tt.b).SkipIn(depth); tt.ok != (err == nil) {
				t.Errorf("depth %d: SkipIn of %d nested = %v, want ok %v", depth, len(tt.b)-1, err, tt.ok)
			}
		}
	}
}

func TestValidateTrailing(t *testing.T) {
	if err := msgp.Validate([]byte{0x01, 0x02}); !errors.Is(err, msgp.ErrMalformed) {
		t.Errorf("Validate = %v, want ErrMalformed", err)
	}
	if err := msgp.Validate(nil); !errors.Is(err, msgp.ErrMalformed) {
		t.Errorf("Validate(empty) = %v, want ErrMalformed", err)
	}
}

// The typed reads accept what vmihailenco's Decode methods accept, and
// read the same values.
func TestTypedReadsMatchVmihailenco(t *testing.T) {
	inputs := [][]byte{
		{0xc0}, {0xc2}, {0xc3}, {0x05}, {0x7f}, {0xff}, {0xe0}, {0xcc, 0xff}, {0xd0, 0x80}, {0xcd, 1, 2},
		{0xd1, 0xff, 0xfe}, {0xce, 1, 2, 3, 4}, {0xd2, 0x80, 0, 0, 0}, {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		{0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}, {0xca, 0x3f, 0xc0, 0, 0}, {0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0},
		{0xa2, 'h', 'i'}, {0xd9, 1, 'x'}, {0xc4, 2, 0, 1}, {0x92, 0x01, 0x02}, {0x80}, {0xde, 0, 1, 0xa1, 'k', 0xc0},
		{0x92, 0xcd, 1, 0, 0x05}, {0xd6, 0xff, 0x65, 0x4d, 0x8a, 0x00}, {0xd7, 0xff, 1, 2, 3, 4, 5, 6, 7, 8},
		{0xc7, 12, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2}, {0xd6, 13, 0, 0, 0, 1}, {0xd6, 0x01, 0, 0, 0, 1},
		{0xd5, 0xff, 0, 1}, {0xb4, '2', '0', '2', '6', '-', '0', '1', '-', '0', '2', 'T', '0', '3', ':', '0', '4', ':', '0', '5', 'Z'},
		{0xa3, 'b', 'a', 'd'}, {0xc7, 12, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xf1, 0x88, 0x6b, 0x66, 0x00},
		{0xc1}, {}, {0xcd, 1},
	}
	type read struct {
		name string
		ours func(*msgp.Reader) (any, error)
		them func(*msgpack.Decoder) (any, error)
	}
	reads := []read{
		{"uint", func(r *msgp.Reader) (any, error) { return r.Uint() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeUint64() }},
		{"int", func(r *msgp.Reader) (any, error) { return r.Int() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeInt64() }},
		{"bool", func(r *msgp.Reader) (any, error) { return r.Bool() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeBool() }},
		{"str", func(r *msgp.Reader) (any, error) { return r.Str() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeString() }},
		{"time", func(r *msgp.Reader) (any, error) { return r.Time() }, func(d *msgpack.Decoder) (any, error) { return d.DecodeTime() }},
		{"array", func(r *msgp.Reader) (any, error) { return r.ArrayHeader() }, func(d *msgpack.Decoder) (any, error) {
			n, err := d.DecodeArrayLen()
			return max(n, 0), err // nil is -1 there, 0 here
		}},
		{"map", func(r *msgp.Reader) (any, error) { return r.MapHeader() }, func(d *msgpack.Decoder) (any, error) {
			n, err := d.DecodeMapLen()
			return max(n, 0), err
		}},
	}
	for _, in := range inputs {
		for _, rd := range reads {
			got, err := rd.ours(msgp.NewReader(in))
			want, werr := rd.them(msgpack.NewDecoder(bytes.NewReader(in)))
			if (err == nil) != (werr == nil) || err == nil && !equalRead(got, want) {
				t.Errorf("% x as %s: %v, %v; vmihailenco %v, %v", in, rd.name, got, err, want, werr)
			}
		}
	}
}

func equalRead(a, b any) bool {
	if ta, ok := a.(time.Time); ok {
		tb, ok := b.(time.Time)
		return ok && ta.Equal(tb) && ta.Location().String() == tb.Location().String()
	}
	return a == b
}

func TestTypeErrors(t *testing.T) {
	r := msgp.NewReader([]byte{0xa1, 'x'})
	if _, err := r.Uint(); !errors.Is(err, msgp.ErrType) || !strings.Contains(err.Error(), "str where an integer") {
		t.Errorf("Uint of a str: %v", err)
	}
	if _, err := msgp.NewReader([]byte{0xd4, 1, 0}).MapHeader(); !errors.Is(err, msgp.ErrType) {
		t.Errorf("MapHeader of an ext: %v, want ErrType", err)
	}
}

// A time written by AppendTime reads back equal, in every width.
func TestTimeRoundTrip(t *testing.T) {
	for _, tm := range []time.Time{{}, time.Unix(0, 0), time.Unix(1, 1), time.Unix(1<<32-1, 0), time.Unix(1<<32, 0),
		time.Unix(1<<34-1, 999999999), time.Unix(1<<34, 0), time.Unix(-1, 5), time.Now()} {
		b := msgp.AppendTime(nil, tm)
		if want := encodeLike(t, func(e *msgpack.Encoder) error { return e.EncodeTime(tm) }); !bytes.Equal(b, want) {
			t.Errorf("%v: % x, vmihailenco % x", tm, b, want)
		}
		got, err := msgp.NewReader(b).Time()
		if err != nil || !got.Equal(tm) {
			t.Errorf("%v read back as %v, %v", tm, got, err)
		}
	}
}

// An ext written by AppendExt is in vmihailenco's form, and reads back
// whole, in every width.
func TestAppendExt(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 4, 8, 16, 17, 255, 256, 65535, 65536} {
		data := bytes.Repeat([]byte{7}, n)
		b := msgp.AppendExt(nil, 5, data)
		want := encodeLike(t, func(e *msgpack.Encoder) error {
			if err := e.EncodeExtHeader(5, n); err != nil {
				return err
			}
			_, err := e.Writer().Write(data)
			return err
		})
		if !bytes.Equal(b, want) {
			t.Errorf("ext of %d bytes: % x, vmihailenco % x", n, b[:min(len(b), 8)], want[:min(len(want), 8)])
		}
		v, err := msgp.NewReader(b).Next()
		if err != nil || v.Type != msgp.TypeExt || v.ExtType != 5 || !bytes.Equal(v.Data, data) {
			t.Errorf("ext of %d bytes read back as %v %d %d bytes, %v", n, v.Type, v.ExtType, len(v.Data), err)
		}
	}
}

func TestAppendRaw(t *testing.T) {
	if b := msgp.AppendRaw(nil, nil); !bytes.Equal(b, []byte{0xc0}) {
		t.Errorf("AppendRaw(empty) = % x, want nil", b)
	}
	if b := msgp.AppendRaw([]byte{0x90}, []byte{0xa1, 'x'}); !bytes.Equal(b, []byte{0x90, 0xa1, 'x'}) {
		t.Errorf("AppendRaw = % x", b)
	}
	r := msgp.NewReader([]byte{0xc0, 0x01})
	if !r.SkipNil() || r.SkipNil() || r.Len() != 1 {
		t.Error("SkipNil reads a nil and nothing else")
	}
}

func TestFields(t *testing.T) {
	b := msgp.AppendMapHeader(nil, 4)
	b = msgp.AppendStr(b, "id")
	b = msgp.AppendUint(b, 300)
	b = msgp.AppendBin(b, []byte("bin key"))
	b = msgp.AppendStr(b, "v")
	b = msgp.AppendNil(b) // a nil key reads as empty
	b = msgp.AppendBool(b, true)
	b = msgp.AppendStr(b, "skipped")
	b = msgp.AppendArrayHeader(b, 2)
	b = msgp.AppendInt(b, -1)
	b = msgp.AppendStr(b, "x")
	r := msgp.NewReader(b)
	f := r.Fields()
	var keys []string
	for {
		key, ok := f.Next(r)
		if !ok {
			break
		}
		keys = append(keys, string(key))
		if err := r.Skip(); err != nil {
			t.Fatal(err)
		}
	}
	if f.Err() != nil || r.Len() != 0 || strings.Join(keys, ",") != "id,bin key,,skipped" {
		t.Errorf("keys %q, err %v, %d bytes left", keys, f.Err(), r.Len())
	}

	for name, in := range map[string][]byte{"nil": {0xc0}, "empty": {0x80}} {
		r := msgp.NewReader(in)
		f := r.Fields()
		if _, ok := f.Next(r); ok || f.Err() != nil {
			t.Errorf("%s map: an entry, or %v", name, f.Err())
		}
	}
	for name, in := range map[string][]byte{"not a map": {0x91, 0x01}, "int key": {0x81, 0x01, 0x01}, "cut": {0x81, 0xa2, 'i'}} {
		r := msgp.NewReader(in)
		f := r.Fields()
		if _, ok := f.Next(r); ok || f.Err() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// Reading a message field by field allocates nothing.
func TestFieldsAllocateNothing(t *testing.T) {
	b := msgp.AppendMapHeader(nil, 3)
	b = msgp.AppendStr(b, "q")
	b = msgp.AppendStr(b, "tasks")
	b = msgp.AppendStr(b, "ids")
	b = msgp.AppendUint(msgp.AppendArrayHeader(b, 1), 1<<40)
	b = msgp.AppendStr(b, "at")
	b = msgp.AppendTime(b, time.Unix(1764000000, 5))
	allocs := testing.AllocsPerRun(100, func() {
		r := msgp.NewReader(b)
		f := r.Fields()
		for {
			key, ok := f.Next(r)
			if !ok {
				break
			}
			var err error
			switch string(key) {
			case "q":
				_, err = r.StrBytes()
			case "at":
				_, err = r.Time()
			default:
				err = r.Skip()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations", allocs)
	}
}
