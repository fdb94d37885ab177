package pyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/pyext"
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

// Pickle encodes v as a pickle. v may be any value Unpickle returns (but
// the classes and timezones it holds only until a REDUCE takes them), a
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
	case Ext:
		return p.ext(x.Type, x.Data, depth, false)
	case *Set:
		p.setStart(x.Frozen, len(x.Items))
		for _, e := range x.Items {
			if err := p.value(e, depth+1); err != nil {
				return err
			}
		}
		p.setEnd(x.Frozen, len(x.Items))
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

// str pickles s as a str, or, if Python cannot decode it as one (it is
// not UTF-8: a Go client's string of other bytes), as bytes: Python's
// unpickler would raise on it, and a get that raises loses its task.
func (p *pickler) str(s string) {
	if !utf8.ValidString(s) && !pythonUTF8([]byte(s)) {
		p.bytes([]byte(s))
		return
	}
	p.counted(len(s), opShortBinUni, opBinUnicode, opBinUnicode8)
	p.buf = append(p.buf, s...)
}

// pythonUTF8 reports whether Python's unpickler decodes s as a str: UTF-8,
// with the surrogates (U+D800 to U+DFFF) a Python str may hold allowed
// (it decodes with "surrogatepass"), which Go's UTF-8 is not.
func pythonUTF8(b []byte) bool {
	for len(b) > 0 {
		if len(b) >= 3 && b[0] == 0xED && b[1] >= 0xA0 && b[1] <= 0xBF && b[2] >= 0x80 && b[2] <= 0xBF {
			b = b[3:] // a surrogate
			continue
		}
		r, n := utf8.DecodeRune(b)
		if r == utf8.RuneError && n == 1 {
			return false
		}
		b = b[n:]
	}
	return true
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

// ext pickles the value of an extension type of internal/pyext, after
// checking its data as the Parse functions do. In a dict key or a set
// (key), a set and a bytearray are refused: Python cannot hash them.
func (p *pickler) ext(typ int8, data []byte, depth int, key bool) error {
	if key && (typ == pyext.Set || typ == pyext.ByteArray) {
		return fmt.Errorf("%w: a %s in a dict key or a set (unhashable in Python)", ErrUnsupported, pyext.Name(typ))
	}
	var err error
	switch typ {
	case pyext.BigInt:
		var x *big.Int
		if x, err = pyext.ParseBigInt(data); err == nil {
			p.long(pyext.Signed(x))
		}
	case pyext.Set, pyext.FrozenSet:
		return p.mpSet(typ == pyext.FrozenSet, data, depth)
	case pyext.ByteArray:
		p.global("builtins", "bytearray")
		p.bytes(data)
		p.op(opTuple1, opReduce)
	case pyext.Complex:
		var c complex128
		if c, err = pyext.ParseComplex(data); err == nil {
			p.global("builtins", "complex")
			p.float(real(c))
			p.float(imag(c))
			p.op(opTuple2, opReduce)
		}
	case pyext.Decimal:
		if err = pyext.CheckDecimal(data); err == nil {
			p.global("decimal", "Decimal")
			p.str(string(data))
			p.op(opTuple1, opReduce)
		}
	case pyext.TimeDelta:
		var d pyext.Delta
		if d, err = pyext.ParseTimeDelta(data); err == nil {
			p.timedelta(d)
		}
	case pyext.Date:
		var c pyext.Civil
		if c, err = pyext.ParseDate(data); err == nil {
			p.global("datetime", "date")
			p.bytes(pyext.DateState(c))
			p.op(opTuple1, opReduce)
		}
	case pyext.Time:
		var c pyext.Civil
		var z *pyext.Zone
		if c, z, err = pyext.ParseTime(data); err == nil {
			p.global("datetime", "time")
			p.bytes(pyext.TimeState(c))
			p.tzinfo(z)
		}
	case pyext.DateTime, pyext.Timestamp:
		var c pyext.Civil
		var z *pyext.Zone
		if typ == pyext.Timestamp {
			c, err = pyext.ParseTimestamp(data)
			z = &pyext.Zone{}
		} else {
			c, z, err = pyext.ParseDateTime(data)
		}
		if err == nil {
			p.global("datetime", "datetime")
			p.bytes(pyext.DateTimeState(c))
			p.tzinfo(z)
		}
	default:
		return fmt.Errorf("%w: msgpack extension type %d has no Python form", ErrUnsupported, typ)
	}
	switch {
	case errors.Is(err, pyext.ErrRange):
		return fmt.Errorf("%w: %s: %v", ErrUnsupported, pyext.Name(typ), err)
	case err != nil:
		return fmt.Errorf("%s: %w", pyext.Name(typ), err)
	}
	return nil
}

// mpSet pickles the elements of a Set or FrozenSet ext, which are
// msgpack, as a set or frozenset (they are hashable, as dict keys are).
func (p *pickler) mpSet(frozen bool, data []byte, depth int) error {
	r, n, err := pyext.OpenSet(data)
	if err != nil {
		return err
	}
	p.setStart(frozen, n)
	for range n {
		if err := p.mpValue(r, depth+1, true); err != nil {
			return err
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after a set's elements", ErrBadMsgpack, r.Len())
	}
	p.setEnd(frozen, n)
	return nil
}

// setStart and setEnd surround the n elements of a set: EMPTY_SET, MARK
// and ADDITEMS, or MARK and FROZENSET, as Python's protocol 4 writes them.
func (p *pickler) setStart(frozen bool, n int) {
	switch {
	case frozen:
		p.op(opMark)
	case n == 0:
		p.op(opEmptySet)
	default:
		p.op(opEmptySet, opMark)
	}
}

func (p *pickler) setEnd(frozen bool, n int) {
	switch {
	case frozen:
		p.op(opFrozenSet)
	case n > 0:
		p.op(opAddItems)
	}
}

// global writes the class or function module.name, one of those reduce.go
// allows: the encoder writes nothing it would refuse to read.
func (p *pickler) global(module, name string) {
	p.op(opGlobal)
	p.buf = append(p.buf, module+"\n"+name+"\n"...)
}

// tzinfo ends the arguments of a time or datetime after its state: with
// timezone z, or none if z is nil; then REDUCE.
func (p *pickler) tzinfo(z *pyext.Zone) {
	if z == nil {
		p.op(opTuple1, opReduce)
		return
	}
	p.global("datetime", "timezone")
	d := pyext.Delta{Seconds: z.Offset}
	if z.Offset < 0 {
		d = pyext.Delta{Days: -1, Seconds: 86400 + z.Offset}
	}
	p.timedelta(d)
	if z.Named {
		p.str(z.Name)
		p.op(opTuple2, opReduce)
	} else {
		p.op(opTuple1, opReduce)
	}
	p.op(opTuple2, opReduce)
}

func (p *pickler) timedelta(d pyext.Delta) {
	p.global("datetime", "timedelta")
	p.int(int64(d.Days))
	p.int(int64(d.Seconds))
	p.int(int64(d.Microseconds))
	p.op(opTuple3, opReduce)
}

// long writes a big-endian two's complement integer as LONG1 or LONG4,
// which are little-endian.
func (p *pickler) long(be []byte) {
	if len(be) <= math.MaxUint8 {
		p.op(opLong1, byte(len(be)))
	} else {
		p.op(opLong4)
		p.buf = binary.LittleEndian.AppendUint32(p.buf, uint32(len(be)))
	}
	for i := len(be) - 1; i >= 0; i-- {
		p.buf = append(p.buf, be[i])
	}
}
