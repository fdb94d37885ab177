package pyproto

import (
	"fmt"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/internal/pyext"
)

// MaxDepth bounds how deeply containers may nest in a value converted to
// or from msgpack: msgp's bound, that of every msgpack decoder of qm.
// Python's own pickler stops near its recursion limit of 1000.
const MaxDepth = msgp.MaxDepth

// Values decoded by Unpickle and accepted by the encoder are nil, bool,
// int64, uint64 (for ints above MaxInt64), float64, string, []byte, Ext
// (the Python types msgpack carries as extension types), and the
// containers below. Containers are pointers because a pickle may refer
// to one container from several places, or from inside itself.

// Ext is a Python value that msgpack has no type for, as the extension
// type of package internal/pyext (docs/VALUES.md) that carries it: an int
// beyond 64 bits, a bytearray, a datetime, date, time or timedelta, a
// Decimal or a complex. Unpickle checks Data; the encoder checks it
// again, as it does an ext in msgpack.
type Ext struct {
	Type int8
	Data []byte
}

// Set is a Python set, or a frozenset if Frozen: its elements in the
// order they came, each once by Python's equality (as Dict's keys).
type Set struct {
	Items  []any
	Frozen bool
	index  map[string]struct{}
	keys   *keyer
}

// Add adds item unless an equal one is there. Unhashable items (list,
// dict, set, bytearray) are refused.
func (s *Set) Add(item any) error {
	if s.keys == nil {
		s.keys = newKeyer()
	}
	h, err := s.keys.key(item, 0)
	if err != nil {
		return err
	}
	if s.index == nil {
		s.index = make(map[string]struct{})
	}
	if _, ok := s.index[h]; ok {
		return nil
	}
	s.index[h] = struct{}{}
	s.Items = append(s.Items, item)
	return nil
}

// Tuple is a Python tuple.
type Tuple []any

// List is a Python list.
type List struct {
	Items []any
}

// Dict is a Python dict: its keys in insertion order, each with its value.
type Dict struct {
	Keys   []any
	Values []any
	index  map[string]int
	keys   *keyer
}

// Set stores value under key, replacing the value of an equal key as a
// Python dict does (1, 1.0 and True are one key). Unhashable keys (list,
// dict) are refused. A key, like a Python tuple, is not changed once set.
func (d *Dict) Set(key, value any) error {
	if d.keys == nil {
		d.keys = newKeyer()
	}
	h, err := d.keys.key(key, 0)
	if err != nil {
		return err
	}
	if d.index == nil {
		d.index = make(map[string]int)
	}
	if i, ok := d.index[h]; ok {
		d.Values[i] = value
		return nil
	}
	d.index[h] = len(d.Keys)
	d.Keys = append(d.Keys, key)
	d.Values = append(d.Values, value)
	return nil
}

// Get returns the value under key, if there is one.
func (d *Dict) Get(key any) (any, bool) {
	if d.index == nil {
		return nil, false
	}
	h, err := d.keys.key(key, 0)
	if err != nil {
		return nil, false
	}
	i, ok := d.index[h]
	if !ok {
		return nil, false
	}
	return d.Values[i], true
}

// Len returns the number of keys.
func (d *Dict) Len() int { return len(d.Keys) }

// TypeName names the Python type of a decoded value, for error messages.
func TypeName(v any) string {
	switch x := v.(type) {
	case nil:
		return "NoneType"
	case bool:
		return "bool"
	case int64, uint64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case Tuple:
		return "tuple"
	case *List, []any:
		return "list"
	case *Dict, map[string]any:
		return "dict"
	case Ext:
		if n := pyext.Name(x.Type); n != "" {
			return n
		}
		return fmt.Sprintf("msgpack extension type %d", x.Type)
	case *Set:
		if x.Frozen {
			return "frozenset"
		}
		return "set"
	case *global:
		return "the class " + x.String()
	case timezone:
		return "datetime.timezone"
	}
	return fmt.Sprintf("%T", v)
}
