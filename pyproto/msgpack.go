package pyproto

import (
	"encoding/binary"
	"fmt"
	"math"
)

// ToMsgpack encodes a value decoded by Unpickle as msgpack: a tuple or a
// list as an array, a dict as a map with its keys in order. It fails
// with ErrTooLarge once the encoding would pass limit bytes (so a pickle
// whose shared references multiply its size cannot exhaust memory), and
// with ErrTooDeep past MaxDepth levels or on a container holding itself.
func ToMsgpack(v any, limit int) ([]byte, error) {
	e := mpEncoder{limit: limit}
	if err := e.value(v, 0); err != nil {
		return nil, err
	}
	return e.buf, nil
}

type mpEncoder struct {
	buf   []byte
	limit int
}

func (e *mpEncoder) value(v any, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: deeper than %d levels, or a container that holds itself", ErrTooDeep, MaxDepth)
	}
	switch x := v.(type) {
	case nil:
		e.buf = append(e.buf, 0xc0)
	case bool:
		if x {
			e.buf = append(e.buf, 0xc3)
		} else {
			e.buf = append(e.buf, 0xc2)
		}
	case int64:
		e.int(x)
	case uint64:
		e.uint(x)
	case float64:
		e.buf = append(e.buf, 0xcb)
		e.buf = binary.BigEndian.AppendUint64(e.buf, math.Float64bits(x))
	case string:
		if err := e.room(len(x)); err != nil {
			return err
		}
		e.header(len(x), 0xa0, 31, 0xd9, 0xda, 0xdb)
		e.buf = append(e.buf, x...)
	case []byte:
		if err := e.room(len(x)); err != nil {
			return err
		}
		e.header(len(x), 0, -1, 0xc4, 0xc5, 0xc6)
		e.buf = append(e.buf, x...)
	case Tuple:
		return e.array(x, depth)
	case *List:
		return e.array(x.Items, depth)
	case *Dict:
		e.header(len(x.Keys), 0x80, 15, 0, 0xde, 0xdf)
		if err := e.room(0); err != nil {
			return err
		}
		for i, k := range x.Keys {
			if err := e.value(k, depth+1); err != nil {
				return err
			}
			if err := e.value(x.Values[i], depth+1); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%w: %s", ErrUnsupported, TypeName(v))
	}
	return e.room(0)
}

func (e *mpEncoder) array(items []any, depth int) error {
	e.header(len(items), 0x90, 15, 0, 0xdc, 0xdd)
	// Checked here too: a tree of empty lists shared by reference writes
	// only headers, and would otherwise be walked leaf by leaf.
	if err := e.room(0); err != nil {
		return err
	}
	for _, it := range items {
		if err := e.value(it, depth+1); err != nil {
			return err
		}
	}
	return nil
}

// room fails if n more bytes would take the encoding past the limit.
func (e *mpEncoder) room(n int) error {
	if n > e.limit-len(e.buf) {
		return fmt.Errorf("%w: more than %d bytes as msgpack", ErrTooLarge, e.limit)
	}
	return nil
}

// header writes the type and length of a string, bytes, array or map of n
// elements: the fix form (fix|n) when n <= fixMax, else the 8-, 16- or
// 32-bit form (a zero code: no such form).
func (e *mpEncoder) header(n int, fix byte, fixMax int, c8, c16, c32 byte) {
	switch {
	case n <= fixMax:
		e.buf = append(e.buf, fix|byte(n))
	case c8 != 0 && n <= math.MaxUint8:
		e.buf = append(e.buf, c8, byte(n))
	case n <= math.MaxUint16:
		e.buf = append(e.buf, c16)
		e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(n))
	default:
		e.buf = append(e.buf, c32)
		e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	}
}

func (e *mpEncoder) int(n int64) {
	switch {
	case n >= 0:
		e.uint(uint64(n))
	case n >= -32:
		e.buf = append(e.buf, byte(n))
	case n >= math.MinInt8:
		e.buf = append(e.buf, 0xd0, byte(n))
	case n >= math.MinInt16:
		e.buf = append(e.buf, 0xd1)
		e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(n))
	case n >= math.MinInt32:
		e.buf = append(e.buf, 0xd2)
		e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	default:
		e.buf = append(e.buf, 0xd3)
		e.buf = binary.BigEndian.AppendUint64(e.buf, uint64(n))
	}
}

func (e *mpEncoder) uint(n uint64) {
	switch {
	case n <= 0x7f:
		e.buf = append(e.buf, byte(n))
	case n <= math.MaxUint8:
		e.buf = append(e.buf, 0xcc, byte(n))
	case n <= math.MaxUint16:
		e.buf = append(e.buf, 0xcd)
		e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(n))
	case n <= math.MaxUint32:
		e.buf = append(e.buf, 0xce)
		e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(n))
	default:
		e.buf = append(e.buf, 0xcf)
		e.buf = binary.BigEndian.AppendUint64(e.buf, n)
	}
}

// mpReader reads msgpack values from b.
type mpReader struct {
	b   []byte
	pos int
}

var errMsgpackTruncated = fmt.Errorf("%w: truncated", ErrBadMsgpack)

func (r *mpReader) read(n uint64) ([]byte, error) {
	if n > uint64(len(r.b)-r.pos) {
		return nil, errMsgpackTruncated
	}
	b := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return b, nil
}

func (r *mpReader) uint(size int) (uint64, error) {
	b, err := r.read(uint64(size))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range b {
		n = n<<8 | uint64(c)
	}
	return n, nil
}

// mpKind is what one msgpack header announces.
type mpKind int

const (
	mpNil mpKind = iota
	mpBool
	mpInt
	mpUint
	mpFloat
	mpStr
	mpBin
	mpArray
	mpMap
	mpExt
)

// mpItem is one decoded header: a scalar's value, or the length of a
// string, bytes, array or map (whose contents follow).
type mpItem struct {
	kind mpKind
	b    bool
	i    int64
	u    uint64
	f    float64
	data []byte // str, bin; ext: the data, with n its type
	n    int    // array and map lengths
}

func (r *mpReader) next() (mpItem, error) {
	if r.pos >= len(r.b) {
		return mpItem{}, errMsgpackTruncated
	}
	c := r.b[r.pos]
	r.pos++
	switch {
	case c <= 0x7f:
		return mpItem{kind: mpInt, i: int64(c)}, nil
	case c >= 0xe0:
		return mpItem{kind: mpInt, i: int64(int8(c))}, nil
	case c&0xf0 == 0x80:
		return r.container(mpMap, uint64(c&0x0f))
	case c&0xf0 == 0x90:
		return r.container(mpArray, uint64(c&0x0f))
	case c&0xe0 == 0xa0:
		return r.bytes(mpStr, uint64(c&0x1f))
	}
	switch c {
	case 0xc0:
		return mpItem{kind: mpNil}, nil
	case 0xc2, 0xc3:
		return mpItem{kind: mpBool, b: c == 0xc3}, nil
	case 0xc4, 0xc5, 0xc6:
		n, err := r.uint(1 << (c - 0xc4))
		if err != nil {
			return mpItem{}, err
		}
		return r.bytes(mpBin, n)
	case 0xd9, 0xda, 0xdb:
		n, err := r.uint(1 << (c - 0xd9))
		if err != nil {
			return mpItem{}, err
		}
		return r.bytes(mpStr, n)
	case 0xca:
		n, err := r.uint(4)
		return mpItem{kind: mpFloat, f: float64(math.Float32frombits(uint32(n)))}, err
	case 0xcb:
		n, err := r.uint(8)
		return mpItem{kind: mpFloat, f: math.Float64frombits(n)}, err
	case 0xcc, 0xcd, 0xce, 0xcf:
		n, err := r.uint(1 << (c - 0xcc))
		if n > math.MaxInt64 {
			return mpItem{kind: mpUint, u: n}, err
		}
		return mpItem{kind: mpInt, i: int64(n)}, err
	case 0xd0, 0xd1, 0xd2, 0xd3:
		size := 1 << (c - 0xd0)
		n, err := r.uint(size)
		shift := 64 - 8*size
		return mpItem{kind: mpInt, i: int64(n<<shift) >> shift}, err
	case 0xdc, 0xdd:
		n, err := r.uint(2 << (c - 0xdc))
		if err != nil {
			return mpItem{}, err
		}
		return r.container(mpArray, n)
	case 0xde, 0xdf:
		n, err := r.uint(2 << (c - 0xde))
		if err != nil {
			return mpItem{}, err
		}
		return r.container(mpMap, n)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
		return r.ext(uint64(1) << (c - 0xd4))
	case 0xc7, 0xc8, 0xc9:
		n, err := r.uint(1 << (c - 0xc7))
		if err != nil {
			return mpItem{}, err
		}
		return r.ext(n)
	}
	return mpItem{}, fmt.Errorf("%w: invalid type byte 0x%02x", ErrBadMsgpack, c)
}

func (r *mpReader) bytes(kind mpKind, n uint64) (mpItem, error) {
	b, err := r.read(n)
	return mpItem{kind: kind, data: b}, err
}

// container checks that n elements (2n for a map) can fit in what is
// left, at a byte each, so a lying header fails at once.
func (r *mpReader) container(kind mpKind, n uint64) (mpItem, error) {
	need := n
	if kind == mpMap {
		need *= 2
	}
	if need > uint64(len(r.b)-r.pos) {
		return mpItem{}, fmt.Errorf("%w: %d elements in %d bytes", ErrBadMsgpack, need, len(r.b)-r.pos)
	}
	return mpItem{kind: kind, n: int(n)}, nil
}

func (r *mpReader) ext(n uint64) (mpItem, error) {
	t, err := r.read(1)
	if err != nil {
		return mpItem{}, err
	}
	b, err := r.read(n)
	return mpItem{kind: mpExt, i: int64(int8(t[0])), data: b}, err
}

// skip reads past one whole value.
func (r *mpReader) skip(depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: deeper than %d", ErrTooDeep, MaxDepth)
	}
	it, err := r.next()
	if err != nil {
		return err
	}
	n := it.n
	if it.kind == mpMap {
		n *= 2
	}
	if it.kind == mpArray || it.kind == mpMap {
		for range n {
			if err := r.skip(depth + 1); err != nil {
				return err
			}
		}
	}
	return nil
}

// msgpack pickles one msgpack payload: an array as a list (a tuple when
// it is, or is inside, a dict key, since a list is unhashable), a map as a
// dict. Extension types have no Python form and are refused.
func (p *pickler) msgpack(b []byte) error {
	r := mpReader{b: b}
	if err := p.mpValue(&r, 0, false); err != nil {
		return err
	}
	if r.pos != len(b) {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadMsgpack, len(b)-r.pos)
	}
	return nil
}

func (p *pickler) mpValue(r *mpReader, depth int, key bool) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: deeper than %d", ErrTooDeep, MaxDepth)
	}
	it, err := r.next()
	if err != nil {
		return err
	}
	switch it.kind {
	case mpNil:
		p.op(opNone)
	case mpBool:
		return p.value(it.b, depth)
	case mpInt:
		p.int(it.i)
	case mpUint:
		p.uint(it.u)
	case mpFloat:
		p.float(it.f)
	case mpStr:
		p.counted(len(it.data), opShortBinUni, opBinUnicode, opBinUnicode8)
		p.buf = append(p.buf, it.data...)
	case mpBin:
		p.bytes(it.data)
	case mpExt:
		return fmt.Errorf("%w: msgpack extension type %d has no Python form", ErrUnsupported, it.i)
	case mpArray:
		if key {
			p.op(opMark)
		} else {
			p.op(opEmptyList)
			if it.n == 0 {
				return nil
			}
			p.op(opMark)
		}
		for range it.n {
			if err := p.mpValue(r, depth+1, key); err != nil {
				return err
			}
		}
		if key {
			p.op(opTuple)
		} else {
			p.op(opAppends)
		}
	case mpMap:
		if key {
			return fmt.Errorf("%w: a map as a dict key (unhashable in Python)", ErrUnsupported)
		}
		p.op(opEmptyDict)
		if it.n == 0 {
			return nil
		}
		p.op(opMark)
		for range it.n {
			if err := p.mpValue(r, depth+1, true); err != nil {
				return err
			}
			if err := p.mpValue(r, depth+1, false); err != nil {
				return err
			}
		}
		p.op(opSetItems)
	}
	return nil
}

// MapFields returns the raw msgpack of each value of b, if b is one map
// whose keys are all strings; ok is false for anything else.
func MapFields(b []byte) (fields map[string][]byte, ok bool) {
	r := mpReader{b: b}
	it, err := r.next()
	if err != nil || it.kind != mpMap {
		return nil, false
	}
	fields = make(map[string][]byte, it.n)
	for range it.n {
		k, err := r.next()
		if err != nil || k.kind != mpStr {
			return nil, false
		}
		start := r.pos
		if err := r.skip(1); err != nil {
			return nil, false
		}
		fields[string(k.data)] = b[start:r.pos]
	}
	return fields, r.pos == len(b)
}
