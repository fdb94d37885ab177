package pyproto

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Protocol is the pickle protocol the encoder declares. Python 3.8 and
// later read it; the encoder uses no opcode newer than it.
const Protocol = 4

// Exception is a Python exception instance to pickle, as
// module.Name(*Args). Only the few classes a manager reply needs are
// written; the encoder refuses any other.
type Exception struct {
	Module, Name string
	Args         []any
}

// The exceptions a queue proxy's caller expects.
var (
	// Empty is queue.Empty(), raised by get at a timeout or on an empty
	// get_nowait. CPython pickles it as _queue.Empty.
	Empty = Exception{Module: "_queue", Name: "Empty"}
	// Full is queue.Full(), raised by put when the queue stays full.
	Full = Exception{Module: "queue", Name: "Full"}
)

// ValueError returns builtins.ValueError(msg).
func ValueError(msg string) Exception {
	return Exception{Module: "builtins", Name: "ValueError", Args: []any{msg}}
}

// safeGlobals are the only globals the encoder writes.
var safeGlobals = map[string]bool{
	"_queue.Empty": true, "queue.Empty": true, "queue.Full": true,
	"builtins.ValueError": true, "builtins.KeyError": true, "builtins.TypeError": true,
	"builtins.AttributeError": true, "builtins.RuntimeError": true,
}

// Msgpack is a msgpack-encoded value, pickled as the Python value it
// stands for.
type Msgpack []byte

// Reply kinds of a manager reply.
const (
	KindReturn    = "#RETURN"
	KindError     = "#ERROR"
	KindTraceback = "#TRACEBACK"
)

// Reply pickles the manager reply (kind, value).
func Reply(kind string, value any) ([]byte, error) {
	return Pickle(Tuple{kind, value})
}

// Pickle encodes v as a pickle. v may be any value Unpickle returns, a
// []any, []string, map[string]any, Exception or Msgpack.
func Pickle(v any) ([]byte, error) {
	p := &pickler{buf: []byte{opProto, Protocol}}
	if err := p.value(v, 0); err != nil {
		return nil, err
	}
	return append(p.buf, opStop), nil
}

type pickler struct {
	buf []byte
}

func (p *pickler) op(b ...byte) { p.buf = append(p.buf, b...) }

func (p *pickler) value(v any, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: deeper than %d", ErrTooDeep, MaxDepth)
	}
	switch x := v.(type) {
	case nil:
		p.op(opNone)
	case bool:
		if x {
			p.op(opNewTrue)
		} else {
			p.op(opNewFalse)
		}
	case int:
		p.int(int64(x))
	case int64:
		p.int(x)
	case uint64:
		p.uint(x)
	case float64:
		p.float(x)
	case string:
		p.str(x)
	case []byte:
		p.bytes(x)
	case Tuple:
		return p.tuple(x, depth)
	case []any:
		return p.list(x, depth)
	case []string:
		l := make([]any, len(x))
		for i, s := range x {
			l[i] = s
		}
		return p.list(l, depth)
	case *List:
		return p.list(x.Items, depth)
	case *Dict:
		p.op(opEmptyDict)
		if len(x.Keys) == 0 {
			return nil
		}
		p.op(opMark)
		for i, k := range x.Keys {
			if err := p.value(k, depth+1); err != nil {
				return err
			}
			if err := p.value(x.Values[i], depth+1); err != nil {
				return err
			}
		}
		p.op(opSetItems)
	case map[string]any:
		p.op(opEmptyDict)
		if len(x) == 0 {
			return nil
		}
		p.op(opMark)
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p.str(k)
			if err := p.value(x[k], depth+1); err != nil {
				return err
			}
		}
		p.op(opSetItems)
	case Exception:
		name := x.Module + "." + x.Name
		if !safeGlobals[name] || strings.ContainsAny(name, "\n") {
			return fmt.Errorf("%w: will not write global %s", ErrUnsupported, name)
		}
		p.op(opGlobal)
		p.buf = append(p.buf, x.Module+"\n"+x.Name+"\n"...)
		if err := p.tuple(Tuple(x.Args), depth); err != nil {
			return err
		}
		p.op(opReduce)
	case Msgpack:
		return p.msgpack(x)
	default:
		return fmt.Errorf("%w: cannot pickle %T", ErrUnsupported, v)
	}
	return nil
}

func (p *pickler) tuple(t Tuple, depth int) error {
	if len(t) == 0 {
		p.op(opEmptyTuple)
		return nil
	}
	if len(t) > 3 {
		p.op(opMark)
	}
	for _, e := range t {
		if err := p.value(e, depth+1); err != nil {
			return err
		}
	}
	switch len(t) {
	case 1:
		p.op(opTuple1)
	case 2:
		p.op(opTuple2)
	case 3:
		p.op(opTuple3)
	default:
		p.op(opTuple)
	}
	return nil
}

func (p *pickler) list(items []any, depth int) error {
	p.op(opEmptyList)
	if len(items) == 0 {
		return nil
	}
	p.op(opMark)
	for _, e := range items {
		if err := p.value(e, depth+1); err != nil {
			return err
		}
	}
	p.op(opAppends)
	return nil
}

func (p *pickler) int(n int64) {
	switch {
	case n >= 0 && n <= math.MaxUint8:
		p.op(opBinInt1, byte(n))
	case n >= 0 && n <= math.MaxUint16:
		p.op(opBinInt2, byte(n), byte(n>>8))
	case n >= math.MinInt32 && n <= math.MaxInt32:
		p.op(opBinInt)
		p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(int32(n)))
	default:
		// LONG1: the shortest little-endian two's complement form.
		b := binary.LittleEndian.AppendUint64(nil, uint64(n))
		for len(b) > 1 {
			last, prev := b[len(b)-1], b[len(b)-2]
			if last == 0 && prev&0x80 == 0 || last == 0xff && prev&0x80 != 0 {
				b = b[:len(b)-1]
				continue
			}
			break
		}
		p.op(opLong1, byte(len(b)))
		p.op(b...)
	}
}

func (p *pickler) uint(n uint64) {
	if n <= math.MaxInt64 {
		p.int(int64(n))
		return
	}
	p.op(opLong1, 9)
	p.buf = binary.LittleEndian.AppendUint64(p.buf, n)
	p.op(0)
}

func (p *pickler) float(f float64) {
	p.op(opBinFloat)
	p.buf = binary.BigEndian.AppendUint64(p.buf, math.Float64bits(f))
}

func (p *pickler) str(s string) {
	p.counted(len(s), opShortBinUni, opBinUnicode, opBinUnicode8)
	p.buf = append(p.buf, s...)
}

func (p *pickler) bytes(b []byte) {
	p.counted(len(b), opShortBinBytes, opBinBytes, opBinBytes8)
	p.buf = append(p.buf, b...)
}

func (p *pickler) counted(n int, short, normal, long byte) {
	switch {
	case n <= math.MaxUint8:
		p.op(short, byte(n))
	case uint64(n) <= math.MaxUint32:
		p.op(normal)
		p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(n))
	default:
		p.op(long)
		p.buf = binary.LittleEndian.AppendUint64(p.buf, uint64(n))
	}
}
