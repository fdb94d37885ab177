package msgp

import (
	"encoding/binary"
	"fmt"
)

// MaxDepth bounds how many non-empty arrays and maps may nest in one
// value. qm's messages nest four deep at most; a payload has the rest.
const MaxDepth = 100

// The type bytes of the msgpack specification. The fix forms carry a
// value or a length in their low bits.
const (
	fixMap          = 0x80 // to 0x8f: a map of up to 15 pairs
	fixArray        = 0x90 // to 0x9f: an array of up to 15 elements
	fixStr          = 0xa0 // to 0xbf: a str of up to 31 bytes
	fixContainerMax = 15
	fixStrMax       = 31
	cNil            = 0xc0
	cFalse          = 0xc2
	cTrue           = 0xc3
	cBin8           = 0xc4 // then bin16, bin32
	cBin16          = 0xc5
	cBin32          = 0xc6
	cExt8           = 0xc7 // then ext16, ext32
	cFloat32        = 0xca
	cFloat64        = 0xcb
	cUint8          = 0xcc // then uint16, 32, 64
	cUint16         = 0xcd
	cUint32         = 0xce
	cUint64         = 0xcf
	cInt8           = 0xd0 // then int16, 32, 64
	cInt16          = 0xd1
	cInt32          = 0xd2
	cInt64          = 0xd3
	cFixExt1        = 0xd4 // then fixext 2, 4, 8, 16
	cFixExt4        = 0xd6
	cFixExt8        = 0xd7
	cStr8           = 0xd9 // then str16, str32
	cStr16          = 0xda
	cStr32          = 0xdb
	cArray16        = 0xdc
	cArray32        = 0xdd
	cMap16          = 0xde
	cMap32          = 0xdf
	negFixMin       = 0xe0 // to 0xff: -32 to -1

	// timeExt is the type of the timestamp extension, -1, as a byte.
	timeExt = 0xff
)

// Type is the type of a msgpack value.
type Type uint8

// The types Next reports. An integer is TypeInt when it fits an int64,
// whatever form it was written in, and TypeUint only above MaxInt64.
const (
	TypeNil Type = iota + 1
	TypeBool
	TypeInt
	TypeUint
	TypeFloat
	TypeStr
	TypeBin
	TypeArray
	TypeMap
	TypeExt
)

var typeNames = [...]string{
	TypeNil: "nil", TypeBool: "bool", TypeInt: "int", TypeUint: "uint", TypeFloat: "float",
	TypeStr: "str", TypeBin: "bin", TypeArray: "array", TypeMap: "map", TypeExt: "ext",
}

func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// header decodes the header of the value at b[pos:], the one place that
// knows every type byte. It returns the type byte c, the value's type,
// and n: for a str, bin or ext the bytes of its data (an ext's type byte
// follows the header and is not counted), for an array or map its
// elements or pairs, for a number the bytes that hold it. next is where
// the data or the elements start.
//
// It enforces the rules for bounds: data longer than the rest of b is
// truncated, and an array or map claiming more elements than bytes are
// left is refused, before anything acts on the length.
func header(b []byte, pos int) (c byte, t Type, n, next int, err error) {
	if pos >= len(b) {
		return 0, 0, 0, pos, errTruncated
	}
	c = b[pos]
	pos++
	var width int // bytes of the length that follows c
	switch {
	case c < fixMap || c >= negFixMin:
		return c, TypeInt, 0, pos, nil
	case c < fixArray:
		t, n = TypeMap, int(c-fixMap)
	case c < fixStr:
		t, n = TypeArray, int(c-fixArray)
	case c < cNil:
		t, n = TypeStr, int(c-fixStr)
	case c == cNil:
		return c, TypeNil, 0, pos, nil
	case c == cFalse || c == cTrue:
		return c, TypeBool, 0, pos, nil
	case c >= cBin8 && c <= cBin32:
		t, width = TypeBin, 1<<(c-cBin8)
	case c >= cExt8 && c <= cExt8+2:
		t, width = TypeExt, 1<<(c-cExt8)
	case c == cFloat32:
		t, n = TypeFloat, 4
	case c == cFloat64:
		t, n = TypeFloat, 8
	case c >= cUint8 && c <= cUint64:
		t, n = TypeInt, 1<<(c-cUint8)
	case c >= cInt8 && c <= cInt64:
		t, n = TypeInt, 1<<(c-cInt8)
	case c >= cFixExt1 && c <= cFixExt1+4:
		t, n = TypeExt, 1<<(c-cFixExt1)
	case c >= cStr8 && c <= cStr32:
		t, width = TypeStr, 1<<(c-cStr8)
	case c == cArray16 || c == cArray32:
		t, width = TypeArray, 2<<(c-cArray16)
	case c == cMap16 || c == cMap32:
		t, width = TypeMap, 2<<(c-cMap16)
	default: // 0xc1 is never used
		return c, 0, 0, pos, fmt.Errorf("%w: invalid type byte 0x%02x", ErrMalformed, c)
	}
	if width > len(b)-pos {
		return c, 0, 0, pos, errTruncated
	}
	var length uint64 // as read: a 4-byte length may not fit a 32-bit int
	switch width {
	case 0:
		length = uint64(n)
	case 1:
		length = uint64(b[pos])
	case 2:
		length = uint64(binary.BigEndian.Uint16(b[pos:]))
	case 4:
		length = uint64(binary.BigEndian.Uint32(b[pos:]))
	}
	pos += width
	left := uint64(len(b) - pos)
	switch t {
	case TypeArray, TypeMap:
		elems := length
		if t == TypeMap {
			elems *= 2 // a key and a value
		}
		if elems > left {
			return c, 0, 0, pos, fmt.Errorf("%w: %d elements in %d bytes", ErrMalformed, elems, left)
		}
	case TypeExt:
		if length >= left { // the type byte, then the data
			return c, 0, 0, pos, errTruncated
		}
	default:
		if length > left {
			return c, 0, 0, pos, errTruncated
		}
	}
	return c, t, int(length), pos, nil
}

// IsMap reports whether c, a value's first byte, starts a map.
func IsMap(c byte) bool {
	return c>>4 == fixMap>>4 || c == cMap16 || c == cMap32
}
