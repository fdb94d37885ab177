package pyproto

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/pyext"
)

// Pickle opcodes (CPython's Lib/pickle.py).
const (
	opMark           = '('
	opStop           = '.'
	opPop            = '0'
	opPopMark        = '1'
	opDup            = '2'
	opFloat          = 'F'
	opInt            = 'I'
	opBinInt         = 'J'
	opBinInt1        = 'K'
	opLong           = 'L'
	opBinInt2        = 'M'
	opNone           = 'N'
	opPersID         = 'P'
	opBinPersID      = 'Q'
	opReduce         = 'R'
	opString         = 'S'
	opBinString      = 'T'
	opShortBinString = 'U'
	opUnicode        = 'V'
	opBinUnicode     = 'X'
	opAppend         = 'a'
	opBuild          = 'b'
	opGlobal         = 'c'
	opDict           = 'd'
	opEmptyDict      = '}'
	opAppends        = 'e'
	opGet            = 'g'
	opBinGet         = 'h'
	opInst           = 'i'
	opLongBinGet     = 'j'
	opList           = 'l'
	opEmptyList      = ']'
	opObj            = 'o'
	opPut            = 'p'
	opBinPut         = 'q'
	opLongBinPut     = 'r'
	opSetItem        = 's'
	opTuple          = 't'
	opEmptyTuple     = ')'
	opSetItems       = 'u'
	opBinFloat       = 'G'

	opProto          = 0x80
	opNewObj         = 0x81
	opExt1           = 0x82
	opExt2           = 0x83
	opExt4           = 0x84
	opTuple1         = 0x85
	opTuple2         = 0x86
	opTuple3         = 0x87
	opNewTrue        = 0x88
	opNewFalse       = 0x89
	opLong1          = 0x8a
	opLong4          = 0x8b
	opBinBytes       = 'B'
	opShortBinBytes  = 'C'
	opShortBinUni    = 0x8c
	opBinUnicode8    = 0x8d
	opBinBytes8      = 0x8e
	opEmptySet       = 0x8f
	opAddItems       = 0x90
	opFrozenSet      = 0x91
	opNewObjEx       = 0x92
	opStackGlobal    = 0x93
	opMemoize        = 0x94
	opFrame          = 0x95
	opByteArray8     = 0x96
	opNextBuffer     = 0x97
	opReadonlyBuffer = 0x98
)

// HighestProtocol is the highest pickle protocol Unpickle reads.
const HighestProtocol = 5

// unsafeOps are refused as soon as they are read. GLOBAL, STACK_GLOBAL
// and REDUCE are not among them: they are read for the globals of
// reduce.go only.
var unsafeOps = map[byte]string{
	opPersID: "PERSID", opBinPersID: "BINPERSID", opBuild: "BUILD",
	opInst: "INST", opObj: "OBJ", opNewObj: "NEWOBJ", opNewObjEx: "NEWOBJ_EX",
	opExt1: "EXT1", opExt2: "EXT2", opExt4: "EXT4",
}

var textOps = map[byte]string{
	opFloat: "FLOAT", opInt: "INT", opLong: "LONG", opString: "STRING", opBinString: "BINSTRING",
	opShortBinString: "SHORT_BINSTRING", opUnicode: "UNICODE", opGet: "GET", opPut: "PUT",
}

// Unpickle decodes one pickle of plain data (see the package doc). It
// never panics, allocates in proportion to len(data), and returns an
// error wrapping ErrBadPickle, ErrUnsafePickle or ErrUnsupported for
// anything else. Containers may be shared or even cyclic, as in the
// pickle; ToMsgpack bounds them.
func Unpickle(data []byte) (any, error) {
	u := unpickler{data: data, memo: make(map[uint64]any), keys: newKeyer()}
	v, err := u.run()
	if err != nil {
		return nil, fmt.Errorf("%w (pickle byte %d)", err, u.pos)
	}
	return v, nil
}

type unpickler struct {
	data  []byte
	pos   int
	stack []any
	marks []int // stack lengths at each MARK
	memo  map[uint64]any
	keys  *keyer // of every dict and set, so that a shared key is keyed once
}

func (u *unpickler) run() (any, error) {
	for {
		if u.pos >= len(u.data) {
			return nil, fmt.Errorf("%w: no STOP", ErrBadPickle)
		}
		op := u.data[u.pos]
		u.pos++
		if name, ok := unsafeOps[op]; ok {
			return nil, fmt.Errorf("%w: opcode %s", ErrUnsafePickle, name)
		}
		if name, ok := textOps[op]; ok {
			return nil, fmt.Errorf("%w: opcode %s of pickle protocols 0 and 1; use protocol 2 or later", ErrUnsupported, name)
		}
		if op == opStop {
			if len(u.stack) != 1 || len(u.marks) != 0 {
				return nil, fmt.Errorf("%w: STOP with %d values and %d marks on the stack", ErrBadPickle, len(u.stack), len(u.marks))
			}
			if u.pos != len(u.data) {
				return nil, fmt.Errorf("%w: %d bytes after STOP", ErrBadPickle, len(u.data)-u.pos)
			}
			return u.stack[0], nil
		}
		if err := u.step(op); err != nil {
			return nil, err
		}
	}
}

func quoteName(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return fmt.Sprintf("%q", s)
}

func (u *unpickler) step(op byte) error {
	switch op {
	case opProto:
		b, err := u.read(1)
		if err != nil {
			return err
		}
		if b[0] > HighestProtocol {
			return fmt.Errorf("%w: protocol %d", ErrUnsupported, b[0])
		}
	case opFrame:
		n, err := u.uint(8)
		if err != nil {
			return err
		}
		if n > uint64(len(u.data)-u.pos) {
			return fmt.Errorf("%w: frame of %d bytes, %d left", ErrBadPickle, n, len(u.data)-u.pos)
		}
	case opMark:
		u.marks = append(u.marks, len(u.stack))
	case opPop:
		_, err := u.pop()
		return err
	case opPopMark:
		_, err := u.popMark()
		return err
	case opDup:
		v, err := u.top()
		if err != nil {
			return err
		}
		u.push(v)
	case opNone:
		u.push(nil)
	case opNewTrue:
		u.push(true)
	case opNewFalse:
		u.push(false)
	case opBinInt1:
		n, err := u.uint(1)
		if err != nil {
			return err
		}
		u.push(int64(n))
	case opBinInt2:
		n, err := u.uint(2)
		if err != nil {
			return err
		}
		u.push(int64(n))
	case opBinInt:
		n, err := u.uint(4)
		if err != nil {
			return err
		}
		u.push(int64(int32(uint32(n))))
	case opLong1, opLong4:
		size := 1
		if op == opLong4 {
			size = 4
		}
		n, err := u.uint(size)
		if err != nil {
			return err
		}
		if op == opLong4 && int32(uint32(n)) < 0 {
			return fmt.Errorf("%w: LONG4 with negative length", ErrBadPickle)
		}
		b, err := u.read(n)
		if err != nil {
			return err
		}
		u.push(decodeLong(b))
	case opBinFloat:
		b, err := u.read(8)
		if err != nil {
			return err
		}
		u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))
	case opShortBinUni, opBinUnicode, opBinUnicode8:
		b, err := u.counted(op, opShortBinUni, opBinUnicode)
		if err != nil {
			return err
		}
		if !utf8.Valid(b) && !pythonUTF8(b) {
			// Python's unpickler refuses it too; and pickled back to
			// Python, a str Python cannot decode goes as bytes (str).
			return fmt.Errorf("%w: a str of bytes that are not UTF-8", ErrBadPickle)
		}
		u.push(string(b))
	case opShortBinBytes, opBinBytes, opBinBytes8:
		b, err := u.counted(op, opShortBinBytes, opBinBytes)
		if err != nil {
			return err
		}
		u.push(append([]byte{}, b...))
	case opByteArray8:
		b, err := u.counted(op, 0, 0)
		if err != nil {
			return err
		}
		u.push(Ext{Type: pyext.ByteArray, Data: append([]byte{}, b...)})
	case opGlobal:
		module, err1 := u.line()
		name, err2 := u.line()
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%w: opcode GLOBAL", ErrUnsafePickle)
		}
		g, err := lookupGlobal("GLOBAL", module, name)
		if err != nil {
			return err
		}
		u.push(g)
	case opStackGlobal:
		name, err1 := u.pop()
		module, err2 := u.pop()
		m, ok1 := module.(string)
		n, ok2 := name.(string)
		if err1 != nil || err2 != nil || !ok1 || !ok2 {
			return fmt.Errorf("%w: opcode STACK_GLOBAL", ErrUnsafePickle)
		}
		g, err := lookupGlobal("STACK_GLOBAL", m, n)
		if err != nil {
			return err
		}
		u.push(g)
	case opReduce:
		args, err := u.pop()
		if err != nil {
			return err
		}
		f, err := u.pop()
		if err != nil {
			return err
		}
		g, ok := f.(*global)
		if !ok {
			return fmt.Errorf("%w: opcode REDUCE of a %s", ErrUnsafePickle, TypeName(f))
		}
		t, ok := args.(Tuple)
		if !ok {
			return fmt.Errorf("%w: opcode REDUCE of %s with a %s for arguments", ErrBadPickle, g, TypeName(args))
		}
		v, err := g.reduce(g, t, u.keys)
		if err != nil {
			return err
		}
		u.push(v)
	case opEmptyTuple:
		u.push(Tuple{})
	case opTuple1, opTuple2, opTuple3:
		n := int(op-opTuple1) + 1
		if len(u.stack)-u.fence() < n {
			return fmt.Errorf("%w: stack underflow", ErrBadPickle)
		}
		t := make(Tuple, n)
		copy(t, u.stack[len(u.stack)-n:])
		u.stack = u.stack[:len(u.stack)-n]
		u.push(t)
	case opTuple:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		u.push(Tuple(items))
	case opEmptyList:
		u.push(&List{})
	case opList:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		u.push(&List{Items: items})
	case opAppend:
		v, err := u.pop()
		if err != nil {
			return err
		}
		l, err := u.topList()
		if err != nil {
			return err
		}
		l.Items = append(l.Items, v)
	case opAppends:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		l, err := u.topList()
		if err != nil {
			return err
		}
		l.Items = append(l.Items, items...)
	case opEmptyDict:
		u.push(&Dict{keys: u.keys})
	case opDict:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		d := &Dict{keys: u.keys}
		if err := setItems(d, items); err != nil {
			return err
		}
		u.push(d)
	case opSetItem:
		v, err := u.pop()
		if err != nil {
			return err
		}
		k, err := u.pop()
		if err != nil {
			return err
		}
		d, err := u.topDict()
		if err != nil {
			return err
		}
		return d.Set(k, v)
	case opSetItems:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		d, err := u.topDict()
		if err != nil {
			return err
		}
		return setItems(d, items)
	case opMemoize:
		v, err := u.top()
		if err != nil {
			return err
		}
		u.memo[uint64(len(u.memo))] = v
	case opBinPut, opLongBinPut:
		idx, err := u.uint(memoIndexSize(op == opLongBinPut))
		if err != nil {
			return err
		}
		v, err := u.top()
		if err != nil {
			return err
		}
		u.memo[idx] = v
	case opBinGet, opLongBinGet:
		idx, err := u.uint(memoIndexSize(op == opLongBinGet))
		if err != nil {
			return err
		}
		v, ok := u.memo[idx]
		if !ok {
			return fmt.Errorf("%w: memo %d not found", ErrBadPickle, idx)
		}
		u.push(v)
	case opEmptySet:
		u.push(&Set{keys: u.keys})
	case opAddItems:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		v, err := u.top()
		if err != nil {
			return err
		}
		s, ok := v.(*Set)
		if !ok || s.Frozen {
			return fmt.Errorf("%w: add items to a %s", ErrBadPickle, TypeName(v))
		}
		for _, it := range items {
			if err := s.Add(it); err != nil {
				return err
			}
		}
	case opFrozenSet:
		items, err := u.popMark()
		if err != nil {
			return err
		}
		s := &Set{Frozen: true, keys: u.keys}
		for _, it := range items {
			if err := s.Add(it); err != nil {
				return err
			}
		}
		u.push(s)
	case opNextBuffer, opReadonlyBuffer:
		return fmt.Errorf("%w: out-of-band buffers", ErrUnsupported)
	default:
		return fmt.Errorf("%w: unknown opcode 0x%02x", ErrBadPickle, op)
	}
	return nil
}

func memoIndexSize(long bool) int {
	if long {
		return 4
	}
	return 1
}

func setItems(d *Dict, items []any) error {
	if len(items)%2 != 0 {
		return fmt.Errorf("%w: odd number of dict items", ErrBadPickle)
	}
	for i := 0; i < len(items); i += 2 {
		if err := d.Set(items[i], items[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// decodeLong decodes a little-endian two's complement integer: an int64,
// a uint64 above MaxInt64, or beyond both an Ext of type BigInt. Its
// size is bounded by the pickle's, which the caller's message size limit
// bounds.
func decodeLong(b []byte) any {
	be := make([]byte, len(b))
	for i, c := range b {
		be[len(b)-1-i] = c
	}
	if len(be) == 0 {
		return int64(0)
	}
	n, _ := pyext.ParseBigInt(be)
	switch {
	case n.IsInt64():
		return n.Int64()
	case n.IsUint64():
		return n.Uint64()
	}
	return Ext{Type: pyext.BigInt, Data: pyext.Signed(n)}
}

func (u *unpickler) push(v any) { u.stack = append(u.stack, v) }

// fence is the stack length below which pops may not reach: the last mark.
func (u *unpickler) fence() int {
	if len(u.marks) == 0 {
		return 0
	}
	return u.marks[len(u.marks)-1]
}

func (u *unpickler) pop() (any, error) {
	if len(u.stack) <= u.fence() {
		return nil, fmt.Errorf("%w: stack underflow", ErrBadPickle)
	}
	v := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	return v, nil
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) <= u.fence() {
		return nil, fmt.Errorf("%w: stack underflow", ErrBadPickle)
	}
	return u.stack[len(u.stack)-1], nil
}

// popMark removes and returns the items above the last mark, and the mark.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.marks) == 0 {
		return nil, fmt.Errorf("%w: no MARK", ErrBadPickle)
	}
	m := u.marks[len(u.marks)-1]
	u.marks = u.marks[:len(u.marks)-1]
	items := make([]any, len(u.stack)-m)
	copy(items, u.stack[m:])
	clear(u.stack[m:])
	u.stack = u.stack[:m]
	return items, nil
}

func (u *unpickler) topList() (*List, error) {
	v, err := u.top()
	if err != nil {
		return nil, err
	}
	l, ok := v.(*List)
	if !ok {
		return nil, fmt.Errorf("%w: append to a %s", ErrBadPickle, TypeName(v))
	}
	return l, nil
}

func (u *unpickler) topDict() (*Dict, error) {
	v, err := u.top()
	if err != nil {
		return nil, err
	}
	d, ok := v.(*Dict)
	if !ok {
		return nil, fmt.Errorf("%w: set an item of a %s", ErrBadPickle, TypeName(v))
	}
	return d, nil
}

func (u *unpickler) read(n uint64) ([]byte, error) {
	if n > uint64(len(u.data)-u.pos) {
		return nil, fmt.Errorf("%w: truncated", ErrBadPickle)
	}
	b := u.data[u.pos : u.pos+int(n)]
	u.pos += int(n)
	return b, nil
}

// uint reads a little-endian unsigned integer of size 1, 2, 4 or 8 bytes.
func (u *unpickler) uint(size int) (uint64, error) {
	b, err := u.read(uint64(size))
	if err != nil {
		return 0, err
	}
	var n uint64
	for i := size - 1; i >= 0; i-- {
		n = n<<8 | uint64(b[i])
	}
	return n, nil
}

// counted reads the argument of a string or bytes opcode: a 1-byte length
// for short, 4 for normal, 8 for the others.
func (u *unpickler) counted(op, short, normal byte) ([]byte, error) {
	size := 8
	switch op {
	case short:
		size = 1
	case normal:
		size = 4
	}
	n, err := u.uint(size)
	if err != nil {
		return nil, err
	}
	return u.read(n)
}

// line reads a newline-terminated argument (of GLOBAL), at most 256 bytes.
func (u *unpickler) line() (string, error) {
	rest := u.data[u.pos:min(len(u.data), u.pos+256)]
	i := strings.IndexByte(string(rest), '\n')
	if i < 0 {
		return "", ErrBadPickle
	}
	u.pos += i + 1
	return string(rest[:i]), nil
}
