package wire

import (
	"encoding/binary"
	"math"
)

// AppendResult appends r, msgpack-encoded as msgpack.Marshal(r) would
// decode it, to b. The master publishes every result through it: it
// needs no reflection and no allocation beyond growing b.
func AppendResult(b []byte, r *Result) []byte {
	fields := byte(4)
	if r.Error != "" {
		fields++
	}
	b = append(b, 0x80|fields)
	b = appendStr(b, "task_id")
	b = appendUint(b, r.TaskID)
	b = appendStr(b, "worker")
	b = appendStr(b, r.Worker)
	b = appendStr(b, "attempt")
	b = appendInt(b, int64(r.Attempt))
	b = appendStr(b, "value")
	if len(r.Value) == 0 {
		b = append(b, 0xc0)
	} else {
		b = append(b, r.Value...)
	}
	if r.Error != "" {
		b = appendStr(b, "error")
		b = appendStr(b, r.Error)
	}
	return b
}

func appendStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = append(b, 0xda, byte(n>>8), byte(n))
	default:
		b = append(b, 0xdb)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
	}
	return append(b, s...)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return append(b, 0xcd, byte(v>>8), byte(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	if v >= 0 {
		return appendUint(b, uint64(v))
	}
	if v >= -32 {
		return append(b, byte(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}
