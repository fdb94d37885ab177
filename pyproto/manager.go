package pyproto

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/qm-dev/qm/internal/pyext"
)

// Request is a manager request, the pickled 4-tuple
// (ident, methodname, args, kwds). Ident is nil for the server's own
// methods (dummy, create, incref, decref, accept_connection...) and the
// object id that create returned for a call on that object.
type Request struct {
	Ident  any
	Method string
	Args   []any
	Kwds   *Dict
}

// DecodeRequest unpickles and checks one request.
func DecodeRequest(data []byte) (*Request, error) {
	v, err := Unpickle(data)
	if err != nil {
		return nil, err
	}
	t, ok := v.(Tuple)
	if !ok || len(t) != 4 {
		return nil, fmt.Errorf("%w: a %s, not a 4-tuple", ErrBadRequest, TypeName(v))
	}
	req := &Request{Ident: t[0]}
	if req.Method, ok = t[1].(string); !ok {
		return nil, fmt.Errorf("%w: method name is a %s", ErrBadRequest, TypeName(t[1]))
	}
	switch a := t[2].(type) {
	case Tuple:
		req.Args = a
	case *List:
		req.Args = a.Items
	default:
		return nil, fmt.Errorf("%w: args are a %s", ErrBadRequest, TypeName(t[2]))
	}
	if req.Kwds, ok = t[3].(*Dict); !ok {
		return nil, fmt.Errorf("%w: kwds are a %s", ErrBadRequest, TypeName(t[3]))
	}
	for _, k := range req.Kwds.Keys {
		if _, ok := k.(string); !ok {
			return nil, fmt.Errorf("%w: keyword of type %s", ErrBadRequest, TypeName(k))
		}
	}
	return req, nil
}

// Params binds a call's arguments to a signature, as Python does for
// fn(name0=default0, name1=default1, ...).
type Params struct {
	vals []any
}

// Bind binds req's args and kwds to the parameters names, whose defaults
// are defaults, and fails like Python on too many, unknown or repeated
// arguments. It reports errors as TypeError text.
func (r *Request) Bind(names []string, defaults []any) (*Params, error) {
	if len(r.Args) > len(names) {
		return nil, fmt.Errorf("%s() takes %d positional arguments but %d were given", r.Method, len(names), len(r.Args))
	}
	vals := make([]any, len(names))
	set := make([]bool, len(names))
	copy(vals, defaults)
	for i, a := range r.Args {
		vals[i], set[i] = a, true
	}
	if r.Kwds != nil {
	kw:
		for i, k := range r.Kwds.Keys {
			name := k.(string)
			for j, n := range names {
				if n == name {
					if set[j] {
						return nil, fmt.Errorf("%s() got multiple values for argument '%s'", r.Method, name)
					}
					vals[j], set[j] = r.Kwds.Values[i], true
					continue kw
				}
			}
			return nil, fmt.Errorf("%s() got an unexpected keyword argument '%s'", r.Method, name)
		}
	}
	for j, v := range vals {
		if v == Required {
			return nil, fmt.Errorf("%s() missing required argument: '%s'", r.Method, names[j])
		}
	}
	return &Params{vals: vals}, nil
}

// Required is the default of a parameter that has none.
var Required = &struct{ required bool }{true}

// Value returns parameter i.
func (p *Params) Value(i int) any { return p.vals[i] }

// Truth returns the truth value of parameter i, as Python's bool() does.
func (p *Params) Truth(i int) bool {
	switch x := p.vals[i].(type) {
	case nil:
		return false
	case bool:
		return x
	case int64:
		return x != 0
	case uint64:
		return x != 0
	case float64:
		return x != 0
	case string:
		return x != ""
	case []byte:
		return len(x) != 0
	case Tuple:
		return len(x) != 0
	case *List:
		return len(x.Items) != 0
	case *Dict:
		return x.Len() != 0
	case *Set:
		return len(x.Items) != 0
	case Ext:
		return extTruth(x)
	}
	return true
}

// extTruth is bool() of an Ext: false for an empty bytearray and the
// zeros of complex, Decimal and timedelta.
func extTruth(x Ext) bool {
	switch x.Type {
	case pyext.ByteArray:
		return len(x.Data) != 0
	case pyext.Complex:
		c, err := pyext.ParseComplex(x.Data)
		return err != nil || c != 0
	case pyext.TimeDelta:
		return strings.Trim(string(x.Data), "\x00") != ""
	case pyext.Decimal:
		mantissa, _, _ := strings.Cut(strings.TrimPrefix(string(x.Data), "-"), "E")
		return mantissa == "" || strings.Trim(mantissa, "0.") != ""
	}
	return true
}

// Timeout returns parameter i as a timeout: ok is false for None; an
// error for a negative number, or not a number.
func (p *Params) Timeout(i int) (d time.Duration, ok bool, err error) {
	var secs float64
	switch x := p.vals[i].(type) {
	case nil:
		return 0, false, nil
	case bool:
		secs = 0
		if x {
			secs = 1
		}
	case int64:
		secs = float64(x)
	case uint64:
		secs = float64(x)
	case float64:
		secs = x
	default:
		return 0, false, fmt.Errorf("timeout must be a number, not %s", TypeName(x))
	}
	if secs < 0 || math.IsNaN(secs) {
		return 0, false, fmt.Errorf("'timeout' must be a non-negative number")
	}
	if secs > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false, nil // centuries: wait for ever
	}
	return time.Duration(secs * float64(time.Second)), true, nil
}
