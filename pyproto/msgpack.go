package pyproto

import (
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/internal/pyext"
)

// ToMsgpack encodes a value decoded by Unpickle as msgpack: a tuple or a
// list as an array, a dict as a map with its keys in order, an Ext as
// itself, a set as an ext of an array of its elements (docs/VALUES.md). It fails
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
		e.buf = msgp.AppendNil(e.buf)
	case bool:
		e.buf = msgp.AppendBool(e.buf, x)
	case int64:
		e.buf = msgp.AppendInt(e.buf, x)
	case uint64:
		e.buf = msgp.AppendUint(e.buf, x)
	case float64:
		e.buf = msgp.AppendFloat64(e.buf, x)
	case string:
		if err := e.room(len(x)); err != nil {
			return err
		}
		e.buf = msgp.AppendStr(e.buf, x)
	case []byte:
		if err := e.room(len(x)); err != nil {
			return err
		}
		e.buf = msgp.AppendBin(e.buf, x)
	case Tuple:
		return e.array(x, depth)
	case *List:
		return e.array(x.Items, depth)
	case *Dict:
		e.buf = msgp.AppendMapHeader(e.buf, len(x.Keys))
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
	case Ext:
		if err := e.room(len(x.Data) + maxExtHeader); err != nil {
			return err
		}
		e.buf = msgp.AppendExt(e.buf, x.Type, x.Data)
	case *Set:
		typ := pyext.Set
		if x.Frozen {
			typ = pyext.FrozenSet
		}
		// The elements are the ext's data, whose length its header gives:
		// written first, then the header is put before them.
		if err := e.room(maxExtHeader); err != nil {
			return err
		}
		start := len(e.buf)
		if err := e.array(x.Items, depth); err != nil {
			return err
		}
		e.buf = slices.Insert(e.buf, start, msgp.AppendExtHeader(nil, typ, len(e.buf)-start)...)
	default:
		return fmt.Errorf("%w: %s has no msgpack form", ErrUnsupported, TypeName(v))
	}
	return e.room(0)
}

// maxExtHeader is the longest header of an ext: ext 32's type byte, its
// 4-byte length and the ext type.
const maxExtHeader = 6

func (e *mpEncoder) array(items []any, depth int) error {
	e.buf = msgp.AppendArrayHeader(e.buf, len(items))
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

// msgpack pickles one msgpack payload: an array as a list (a tuple when
// it is, or is inside, a dict key or a set, since a list is unhashable),
// a map as a dict, the extension types of internal/pyext as the Python
// values they carry; other extension types have no Python form and are
// refused. msgp's errors wrap ErrBadMsgpack, which is its ErrMalformed.
func (p *pickler) msgpack(b []byte) error {
	r := msgp.NewReader(b)
	if err := p.mpValue(r, 0, false); err != nil {
		return err
	}
	if r.Len() != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadMsgpack, r.Len())
	}
	return nil
}

// mpValue pickles the value at r. It recurses, so it bounds its depth
// itself, by msgp's rule: at most MaxDepth nested non-empty containers.
func (p *pickler) mpValue(r *msgp.Reader, depth int, key bool) error {
	if depth > MaxDepth {
		return fmt.Errorf("%w: deeper than %d", ErrTooDeep, MaxDepth)
	}
	v, err := r.Next()
	if err != nil {
		return err
	}
	switch v.Type {
	case msgp.TypeNil:
		p.op(opNone)
	case msgp.TypeBool:
		return p.value(v.Bool(), depth)
	case msgp.TypeInt:
		p.int(v.Int())
	case msgp.TypeUint:
		p.uint(v.Uint())
	case msgp.TypeFloat:
		p.float(v.Float())
	case msgp.TypeStr:
		if !utf8.Valid(v.Data) && !pythonUTF8(v.Data) {
			p.bytes(v.Data) // as str does
			break
		}
		p.counted(len(v.Data), opShortBinUni, opBinUnicode, opBinUnicode8)
		p.buf = append(p.buf, v.Data...)
	case msgp.TypeBin:
		p.bytes(v.Data)
	case msgp.TypeExt:
		return p.ext(v.ExtType, v.Data, depth, key)
	case msgp.TypeArray:
		if key {
			p.op(opMark)
		} else {
			p.op(opEmptyList)
			if v.Len() == 0 {
				return nil
			}
			p.op(opMark)
		}
		for range v.Len() {
			if err := p.mpValue(r, depth+1, key); err != nil {
				return err
			}
		}
		if key {
			p.op(opTuple)
		} else {
			p.op(opAppends)
		}
	case msgp.TypeMap:
		if key {
			return fmt.Errorf("%w: a map as a dict key (unhashable in Python)", ErrUnsupported)
		}
		p.op(opEmptyDict)
		if v.Len() == 0 {
			return nil
		}
		p.op(opMark)
		for range v.Len() {
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

// MapFields returns the raw msgpack of each value of b, if b is one
// well-formed map (by msgp.Validate) whose keys are all strings; ok is
// false for anything else. The values are slices of b.
func MapFields(b []byte) (fields map[string][]byte, ok bool) {
	if msgp.Validate(b) != nil {
		return nil, false
	}
	r := msgp.NewReader(b)
	m, err := r.Next()
	if err != nil || m.Type != msgp.TypeMap {
		return nil, false
	}
	fields = make(map[string][]byte, m.Len())
	for range m.Len() {
		k, err := r.Next()
		if err != nil || k.Type != msgp.TypeStr {
			return nil, false
		}
		if fields[string(k.Data)], err = r.Raw(); err != nil {
			return nil, false
		}
	}
	return fields, true
}
