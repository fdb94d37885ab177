package pyproto

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/qm-dev/qm/internal/pyext"
)

// keyer gives each dict key and set element a short string, equal for
// keys Python takes as equal (1, 1.0 and True are one key) and different
// for any others. It hash-conses: a tuple's or frozenset's string is built
// from its elements' strings, and a long string is replaced by a number
// given once per distinct one. An object is keyed once: the unpickler's
// objects are shared by memo references, not copied, and the keyer
// remembers each it has keyed. One keyer serves all the dicts and sets of
// an Unpickle, so however often a pickle refers to a key, and however
// large the key once its shared parts are expanded, keying costs time in
// proportion to the pickle's size.
type keyer struct {
	ids  map[string]string // a long key → "#n"
	seen map[ref]string    // an object keyed already → its key
}

// ref is an object by identity: its kind, its data's address and its
// length. The unpickler never changes a str, bytes, tuple, frozenset or
// Ext once built, so the same ref is the same key.
type ref struct {
	kind byte
	p    any
	n    int
}

// maxInline is the longest key kept as it is; a longer one is numbered.
const maxInline = 32

func newKeyer() *keyer {
	return &keyer{ids: make(map[string]string), seen: make(map[ref]string)}
}

// key returns k's string, or an error for a key Python cannot hash.
func (ky *keyer) key(k any, depth int) (string, error) {
	if depth > MaxDepth {
		return "", ErrTooDeep
	}
	var r ref
	var s string
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
		if len(x) < maxInline {
			return "s" + x, nil
		}
		r = ref{'s', unsafe.StringData(x), len(x)}
	case []byte:
		if len(x) < maxInline {
			return "b" + string(x), nil
		}
		r = ref{'b', &x[0], len(x)}
	case Ext:
		// Equal values of these types have equal data, but for ints (in
		// range, they are int64s) and floats that Python takes as equal
		// to some of them: such keys stay apart, which no pickle of a
		// real dict or set has.
		if x.Type != pyext.ByteArray && len(x.Data) > 0 {
			r = ref{'x', &x.Data[0], len(x.Data)}
		}
	case Tuple:
		if len(x) > 0 {
			r = ref{'t', &x[0], len(x)}
		}
	case *Set:
		if x.Frozen {
			r = ref{'F', x, 0}
		}
	}
	if r.p != nil {
		if h, ok := ky.seen[r]; ok {
			return h, nil
		}
	}
	switch x := k.(type) {
	case string:
		s = "s" + x
	case []byte:
		s = "b" + string(x)
	case Ext:
		if x.Type != pyext.ByteArray {
			s = "x" + strconv.Itoa(int(x.Type)) + ":" + string(x.Data)
		}
	case Tuple:
		hs, err := ky.items(x, depth)
		if err != nil {
			return "", err
		}
		s = "t(" + strings.Join(hs, "") + ")"
	case *Set:
		if !x.Frozen {
			break
		}
		hs, err := ky.items(x.Items, depth)
		if err != nil {
			return "", err
		}
		slices.Sort(hs) // a frozenset equals another of the same elements in any order
		s = "F(" + strings.Join(hs, "") + ")"
	}
	if s == "" {
		return "", fmt.Errorf("%w: unhashable dict key or set element of type %s", ErrBadPickle, TypeName(k))
	}
	if len(s) > maxInline {
		id, ok := ky.ids[s]
		if !ok {
			id = "#" + strconv.Itoa(len(ky.ids))
			ky.ids[s] = id
		}
		s = id
	}
	if r.p != nil {
		ky.seen[r] = s
	}
	return s, nil
}

// items returns the key of each item, each prefixed by its length.
func (ky *keyer) items(items []any, depth int) ([]string, error) {
	hs := make([]string, len(items))
	for i, e := range items {
		eh, err := ky.key(e, depth+1)
		if err != nil {
			return nil, err
		}
		hs[i] = strconv.Itoa(len(eh)) + ":" + eh
	}
	return hs, nil
}
