package msgp

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"
)

// Reader reads msgpack values one after another from a byte slice that
// holds them whole. It keeps to the rules for bounds of the package doc:
// what it returns are slices of its input, and no length is acted on
// before it is checked against what is left. A Reader is used by one
// goroutine; its zero value reads nothing.
type Reader struct {
	b   []byte
	pos int
}

// NewReader returns a Reader of b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Len is how many bytes are left to read.
func (r *Reader) Len() int { return len(r.b) - r.pos }

// Value is one value as Next reads it: a scalar whole, or the header of a
// str, bin, ext, array or map. Its methods give what its Type holds. It
// is kept to six words, which are returned in registers: Next is the
// inner loop of every recursive reader.
type Value struct {
	Type Type
	// ExtType is an ext's type.
	ExtType int8
	// Data is a str's, bin's or ext's data, a slice of the input.
	Data []byte
	bits uint64 // a scalar's bits, or a container's length
}

// Bool is a TypeBool's value.
func (v Value) Bool() bool { return v.bits != 0 }

// Int is a TypeInt's value.
func (v Value) Int() int64 { return int64(v.bits) }

// Uint is a TypeUint's value (above math.MaxInt64).
func (v Value) Uint() uint64 { return v.bits }

// Float is a TypeFloat's value; a float 32 is widened.
func (v Value) Float() float64 { return math.Float64frombits(v.bits) }

// Len is an array's elements or a map's pairs, which the caller reads
// next (a map's as key, value, key, value...). At least Len bytes are
// left after the header (twice Len for a map): one per element.
func (v Value) Len() int { return int(v.bits) }

// Next reads one value: a scalar, or the header of a container, whose
// elements the caller reads after it. A recursive reader counts its own
// depth against MaxDepth (see the package doc).
func (r *Reader) Next() (Value, error) {
	c, t, n, pos, err := header(r.b, r.pos)
	if err != nil {
		return Value{}, err
	}
	r.pos = pos
	// Each case returns its Value whole: one built field by field went
	// through memory, and Next took a tenth longer.
	switch t {
	case TypeBool:
		if c == cTrue {
			return Value{Type: t, bits: 1}, nil
		}
	case TypeInt:
		bits, big := r.integer(c, n)
		if big {
			t = TypeUint
		}
		return Value{Type: t, bits: bits}, nil
	case TypeFloat:
		bits := r.number(n)
		if n == 4 {
			bits = math.Float64bits(float64(math.Float32frombits(uint32(bits))))
		}
		return Value{Type: t, bits: bits}, nil
	case TypeStr, TypeBin:
		return Value{Type: t, Data: r.take(n)}, nil
	case TypeExt:
		ext := int8(r.b[r.pos])
		r.pos++
		return Value{Type: t, ExtType: ext, Data: r.take(n)}, nil
	case TypeArray, TypeMap:
		return Value{Type: t, bits: uint64(n)}, nil
	}
	return Value{Type: t}, nil
}

// integer decodes the integer of type byte c held in the n bytes that
// follow (header has checked that they are there), as the bits of an
// int64, or of a uint64 above math.MaxInt64 (then big is true).
func (r *Reader) integer(c byte, n int) (bits uint64, big bool) {
	switch {
	case c < fixMap:
		return uint64(c), false
	case c >= negFixMin:
		return uint64(int64(int8(c))), false
	}
	u := r.number(n)
	if c <= cUint64 {
		return u, u > math.MaxInt64
	}
	shift := 64 - 8*n // sign-extend an int 8, 16 or 32
	return uint64(int64(u<<shift) >> shift), false
}

// number reads n (1, 2, 4 or 8) big-endian bytes that header has checked.
func (r *Reader) number(n int) uint64 {
	b := r.b[r.pos : r.pos+n]
	r.pos += n
	switch n {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.BigEndian.Uint16(b))
	case 4:
		return uint64(binary.BigEndian.Uint32(b))
	}
	return binary.BigEndian.Uint64(b)
}

// take returns the next n bytes, which header has checked, with the
// capacity cut to n so that an append to them copies.
func (r *Reader) take(n int) []byte {
	b := r.b[r.pos : r.pos+n : r.pos+n]
	r.pos += n
	return b
}

// typeError reports a value of type got where a typed read wanted another.
func typeError(got Type, want string) error {
	return fmt.Errorf("%w: %s where %s was expected", ErrType, got, want)
}

// Uint reads an integer as a uint64, as vmihailenco's DecodeUint64 does:
// nil is 0, and a negative integer wraps around.
func (r *Reader) Uint() (uint64, error) {
	if r.pos < len(r.b) && r.b[r.pos] < fixMap {
		r.pos++
		return uint64(r.b[r.pos-1]), nil
	}
	v, err := r.Next()
	switch {
	case err != nil:
		return 0, err
	case v.Type == TypeInt || v.Type == TypeUint:
		return v.bits, nil
	case v.Type == TypeNil:
		return 0, nil
	}
	return 0, typeError(v.Type, "an integer")
}

// Int reads an integer as an int64, as vmihailenco's DecodeInt64 does:
// nil is 0, and an integer above math.MaxInt64 wraps around.
func (r *Reader) Int() (int64, error) {
	u, err := r.Uint()
	return int64(u), err
}

// Bool reads a bool; nil is false.
func (r *Reader) Bool() (bool, error) {
	v, err := r.Next()
	switch {
	case err != nil:
		return false, err
	case v.Type == TypeBool:
		return v.Bool(), nil
	case v.Type == TypeNil:
		return false, nil
	}
	return false, typeError(v.Type, "a bool")
}

// StrBytes reads a str or a bin as a slice of the input; nil reads as
// empty.
func (r *Reader) StrBytes() ([]byte, error) {
	if r.pos < len(r.b) {
		if c := r.b[r.pos]; c >= fixStr && c < cNil {
			if n := int(c - fixStr); n < len(r.b)-r.pos {
				r.pos++
				return r.take(n), nil
			}
		}
	}
	v, err := r.Next()
	switch {
	case err != nil:
		return nil, err
	case v.Type == TypeStr || v.Type == TypeBin:
		return v.Data, nil
	case v.Type == TypeNil:
		return nil, nil
	}
	return nil, typeError(v.Type, "a str")
}

// Str reads a str or a bin as a string; nil reads as empty.
func (r *Reader) Str() (string, error) {
	b, err := r.StrBytes()
	return string(b), err
}

// ArrayHeader reads the header of an array and returns its length (see
// Value.Len); nil reads as an empty array.
func (r *Reader) ArrayHeader() (int, error) {
	return r.containerHeader(TypeArray, "an array")
}

// MapHeader reads the header of a map and returns its pairs (see
// Value.Len); nil reads as an empty map. Unlike vmihailenco's
// DecodeMapLen, it does not look inside an ext for a map.
func (r *Reader) MapHeader() (int, error) {
	return r.containerHeader(TypeMap, "a map")
}

func (r *Reader) containerHeader(t Type, want string) (int, error) {
	v, err := r.Next()
	switch {
	case err != nil:
		return 0, err
	case v.Type == t:
		return v.Len(), nil
	case v.Type == TypeNil:
		return 0, nil
	}
	return 0, typeError(v.Type, want)
}

// Time reads a time as vmihailenco's DecodeTime does: the timestamp
// extension (type -1, or 13 as NodeJS writes it) of 4, 8 or 12 bytes, an
// RFC 3339 str, or the legacy [seconds, nanoseconds] array. A zero time
// from the extension is in UTC.
func (r *Reader) Time() (time.Time, error) {
	start := r.pos
	v, err := r.Next()
	if err != nil {
		return time.Time{}, err
	}
	switch {
	case v.Type == TypeArray && r.b[start] == fixArray|2:
		sec, err := r.Int()
		if err != nil {
			return time.Time{}, err
		}
		nsec, err := r.Int()
		if err != nil {
			return time.Time{}, err
		}
		return time.Unix(sec, nsec), nil
	case v.Type == TypeStr:
		return time.Parse(time.RFC3339Nano, string(v.Data))
	case v.Type != TypeExt:
		return time.Time{}, typeError(v.Type, "a time")
	case v.ExtType != -1 && v.ExtType != 13: // timeExt, and NodeJS's
		return time.Time{}, fmt.Errorf("%w: ext type %d where a time was expected", ErrType, v.ExtType)
	}
	return Timestamp(v.Data)
}

// Timestamp decodes the data of a timestamp extension (type -1) of 4, 8
// or 12 bytes. A zero time is in UTC, the others in the local zone, as
// vmihailenco's DecodeTime returns them.
func Timestamp(d []byte) (time.Time, error) {
	var t time.Time
	switch len(d) {
	case 4:
		t = time.Unix(int64(binary.BigEndian.Uint32(d)), 0)
	case 8:
		data := binary.BigEndian.Uint64(d)
		t = time.Unix(int64(data&(1<<34-1)), int64(data>>34))
	case 12:
		t = time.Unix(int64(binary.BigEndian.Uint64(d[4:])), int64(binary.BigEndian.Uint32(d)))
	default:
		return time.Time{}, fmt.Errorf("%w: a time of %d bytes", ErrMalformed, len(d))
	}
	if t.IsZero() {
		return t.UTC(), nil // the zero time has no zone
	}
	return t, nil
}

// SkipNil reads a nil if one comes next, and reports whether it did.
func (r *Reader) SkipNil() bool {
	if r.pos < len(r.b) && r.b[r.pos] == cNil {
		r.pos++
		return true
	}
	return false
}

// Raw reads one whole value, checked as Validate checks one (depth
// included), and returns its encoding: a slice of the input with its
// capacity cut to its length, so that an append to it copies.
func (r *Reader) Raw() ([]byte, error) { return r.RawIn(0) }

// RawIn is Raw of a value that depth non-empty arrays and maps enclose:
// it may nest MaxDepth-depth more, so that a message read by hand is
// held to the depth Validate would hold it to as a whole.
func (r *Reader) RawIn(depth int) ([]byte, error) {
	n, err := valueLen(r.b[r.pos:], depth)
	if err != nil {
		return nil, err
	}
	return r.take(n), nil
}

// Skip reads past one whole value, checked as Raw checks it.
func (r *Reader) Skip() error { return r.SkipIn(0) }

// SkipIn reads past one whole value, checked as RawIn checks it.
func (r *Reader) SkipIn(depth int) error {
	_, err := r.RawIn(depth)
	return err
}

// Validate reports whether b is exactly one well-formed msgpack value
// within the rules for bounds: no length beyond the input, no more than
// MaxDepth nested non-empty arrays and maps, no trailing bytes. It walks
// b without decoding it or allocating (but for nesting deeper than 8).
func Validate(b []byte) error {
	n, err := valueLen(b, 0)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b)-n)
	}
	return nil
}

// valueLen is the length of the value at the start of b, walked with an
// explicit stack of the elements each open container has still to read;
// depth non-empty containers enclose it.
func valueLen(b []byte, depth int) (int, error) {
	pos := 0
	pending := 1 // values still to read in the innermost open container
	var shallow [8]int
	stack := shallow[:0] // pending counts of the enclosing containers
	for {
		for pending == 0 {
			if len(stack) == 0 {
				return pos, nil
			}
			pending = stack[len(stack)-1]
			stack = stack[:len(stack)-1]
		}
		pending--
		_, t, n, next, err := header(b, pos)
		if err != nil {
			return 0, err
		}
		pos = next
		switch t {
		case TypeArray, TypeMap:
			if t == TypeMap {
				n *= 2
			}
			if n > 0 {
				if depth+len(stack) >= MaxDepth {
					return 0, ErrTooDeep
				}
				stack = append(stack, pending)
				pending = n
			}
		case TypeExt:
			pos += 1 + n
		default: // a number's bytes, a str's or bin's data; none for the rest
			pos += n
		}
	}
}
