package pyproto

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

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
}

// Add adds item unless an equal one is there. Unhashable items (list,
// dict, set, bytearray) are refused.
func (s *Set) Add(item any) error {
	h, err := hashKey(item)
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
}

// Set stores value under key, replacing the value of an equal key as a
// Python dict does (1, 1.0 and True are one key). Unhashable keys (list,
// dict) are refused.
func (d *Dict) Set(key, value any) error {
	h, err := hashKey(key)
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
	h, err := hashKey(key)
	if err != nil || d.index == nil {
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

// maxKeyLen bounds the string hashKey builds for one key. Tuples that
// share their elements (memo references) can describe a key of 2^60
// leaves in a few hundred bytes; without a bound, hashing it would take
// forever.
const maxKeyLen = 1 << 16

// hashKey returns a string equal for keys Python takes as equal, or an
// error for a key Python cannot hash or that is too large.
func hashKey(k any) (string, error) {
	budget := maxKeyLen
	return hashKeyWithin(k, 0, &budget)
}

func hashKeyWithin(k any, depth int, budget *int) (string, error) {
	if depth > MaxDepth {
		return "", ErrTooDeep
	}
	if *budget <= 0 {
		return "", fmt.Errorf("%w: dict key of more than %d bytes", ErrTooLarge, maxKeyLen)
	}
	switch x := k.(type) {
	case nil:
		return "N", nil
	case bool:
		if x {
			return "i1", nil
		}
		return "i0", nil
	case int64:
		return "i" + strconv.FormatInt(x, 10), nil
	case uint64:
		return "i" + strconv.FormatUint(x, 10), nil
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<63 {
			return "i" + strconv.FormatInt(int64(x), 10), nil
		}
		return "f" + strconv.FormatUint(math.Float64bits(x), 16), nil
	case string:
		return "s" + strconv.Itoa(len(x)) + ":" + x, nil
	case []byte:
		return "b" + strconv.Itoa(len(x)) + ":" + string(x), nil
	case Tuple:
		hs, err := hashItems(x, depth, budget)
		if err != nil {
			return "", err
		}
		return "t" + strconv.Itoa(len(x)) + "(" + strings.Join(hs, "") + ")", nil
	case Ext:
		// Equal values of these types have equal data, but for ints (in
		// range, they are int64s) and floats that Python takes as equal
		// to some of them: such keys stay apart, which no pickle of a
		// real dict or set has.
		if x.Type != pyext.ByteArray {
			*budget -= len(x.Data)
			return "x" + strconv.Itoa(int(x.Type)) + ":" + string(x.Data), nil
		}
	case *Set:
		if x.Frozen {
			hs, err := hashItems(x.Items, depth, budget)
			if err != nil {
				return "", err
			}
			slices.Sort(hs) // a frozenset equals another of the same elements in any order
			return "F" + strconv.Itoa(len(hs)) + "(" + strings.Join(hs, "") + ")", nil
		}
	}
	return "", fmt.Errorf("%w: unhashable dict key or set element of type %s", ErrBadPickle, TypeName(k))
}

// hashItems returns the hashKey of each item, each prefixed by its
// length, within budget.
func hashItems(items []any, depth int, budget *int) ([]string, error) {
	hs := make([]string, len(items))
	for i, e := range items {
		eh, err := hashKeyWithin(e, depth+1, budget)
		if err != nil {
			return nil, err
		}
		hs[i] = strconv.Itoa(len(eh)) + ":" + eh
		if *budget -= len(eh); *budget <= 0 {
			return nil, fmt.Errorf("%w: dict key of more than %d bytes", ErrTooLarge, maxKeyLen)
		}
	}
	return hs, nil
}

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
