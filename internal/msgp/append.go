package msgp

import (
	"encoding/binary"
	"math"
	"math/bits"
	"time"
)

// AppendNil appends nil.
func AppendNil(b []byte) []byte { return append(b, cNil) }

// AppendBool appends v.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, cTrue)
	}
	return append(b, cFalse)
}

// AppendUint appends v in 1, 2, 3, 5 or 9 bytes.
func AppendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, cUint8, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, cUint16), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, cUint32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, cUint64), v)
}

// AppendInt appends v in 1, 2, 3, 5 or 9 bytes; a non-negative v as
// AppendUint does.
func AppendInt(b []byte, v int64) []byte {
	if v >= -32 && v <= 0x7f { // a fixint, positive or negative
		return append(b, byte(v))
	}
	return appendInt(b, v)
}

// appendInt is not inlined, so that AppendInt is: most ints in qm's
// messages are fixints.
//
//go:noinline
func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return AppendUint(b, uint64(v))
	case v >= math.MinInt8:
		return append(b, cInt8, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, cInt16), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, cInt32), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, cInt64), uint64(v))
}

// AppendFloat64 appends v as a float 64.
func AppendFloat64(b []byte, v float64) []byte {
	return binary.BigEndian.AppendUint64(append(b, cFloat64), math.Float64bits(v))
}

// Lengths (of a str, a bin, an array, a map) must be below 2^32, as
// msgpack's are; a frame is far smaller.

// AppendStr appends s as a str.
func AppendStr(b []byte, s string) []byte {
	if n := len(s); n <= fixStrMax {
		b = append(b, fixStr|byte(n))
	} else {
		b = appendHeader(b, n, cStr8, cStr16, cStr32)
	}
	return append(b, s...)
}

// AppendBin appends v as a bin, an empty one too (not as nil).
func AppendBin(b []byte, v []byte) []byte {
	return append(appendHeader(b, len(v), cBin8, cBin16, cBin32), v...)
}

// AppendArrayHeader appends the header of an array of n elements; the
// caller appends the elements.
func AppendArrayHeader(b []byte, n int) []byte {
	if n <= fixContainerMax {
		return append(b, fixArray|byte(n))
	}
	return appendHeader(b, n, 0, cArray16, cArray32)
}

// AppendMapHeader appends the header of a map of n pairs; the caller
// appends each key, then its value.
func AppendMapHeader(b []byte, n int) []byte {
	if n <= fixContainerMax {
		return append(b, fixMap|byte(n))
	}
	return appendHeader(b, n, 0, cMap16, cMap32)
}

// appendHeader appends the type byte of a length-prefixed form and the
// length n in the shortest width it has: code8 takes a 1-byte length
// (zero: the form has none, as arrays and maps), code16 and code32 a 2-
// and a 4-byte one.
func appendHeader(b []byte, n int, code8, code16, code32 byte) []byte {
	switch {
	case code8 != 0 && n <= math.MaxUint8:
		return append(b, code8, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, code16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, code32), uint32(n))
}

// AppendTime appends t as the timestamp extension (type -1) in 4, 8 or 12
// bytes of data, as vmihailenco's EncodeTime does.
func AppendTime(b []byte, t time.Time) []byte {
	secs := uint64(t.Unix())
	if secs>>34 == 0 {
		data := uint64(t.Nanosecond())<<34 | secs
		if data&0xffffffff00000000 == 0 {
			return binary.BigEndian.AppendUint32(append(b, cFixExt4, timeExt), uint32(data))
		}
		return binary.BigEndian.AppendUint64(append(b, cFixExt8, timeExt), data)
	}
	b = append(b, cExt8, 12, timeExt)
	b = binary.BigEndian.AppendUint32(b, uint32(t.Nanosecond()))
	return binary.BigEndian.AppendUint64(b, secs)
}

// AppendExt appends an extension value of type typ holding data, in
// the shortest form: a fixext when len(data) is 1, 2, 4, 8 or 16, else
// an ext 8, 16 or 32.
func AppendExt(b []byte, typ int8, data []byte) []byte {
	return append(AppendExtHeader(b, typ, len(data)), data...)
}

// AppendExtHeader appends the header of an extension value of type typ
// whose data, n bytes, the caller appends next.
func AppendExtHeader(b []byte, typ int8, n int) []byte {
	switch n {
	case 1, 2, 4, 8, 16:
		return append(b, cFixExt1+byte(bits.TrailingZeros(uint(n))), byte(typ))
	}
	return append(appendHeader(b, n, cExt8, cExt8+1, cExt8+2), byte(typ))
}

// AppendRaw appends raw, one value already encoded; an empty raw is nil,
// as vmihailenco's RawMessage encodes it.
func AppendRaw(b []byte, raw []byte) []byte {
	if len(raw) == 0 {
		return append(b, cNil)
	}
	return append(b, raw...)
}
