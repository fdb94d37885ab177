package pyproto

import (
	"fmt"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/pyext"
)

// The globals Unpickle resolves: the classes and functions Python's
// pickler names for the types qm carries (protocols 2 to 5; protocol 2
// writes the builtins as __builtin__, and bytes as _codecs.encode), each
// with a reducer that reads the arguments REDUCE applies it to. Nothing is
// looked up or called: a reducer checks the shape Python's pickler writes
// and builds the plain value from it, and refuses any other shape.
// (copyreg._reconstructor is absent: Python writes it for objects at
// protocols 0 and 1 only.)
var globals = map[[2]string]*global{}

func init() {
	for _, g := range []*global{
		{module: "builtins", name: "set", reduce: reduceSet(false)},
		{module: "builtins", name: "frozenset", reduce: reduceSet(true)},
		{module: "builtins", name: "bytearray", reduce: reduceByteArray},
		{module: "builtins", name: "bytes", reduce: reduceBytes},
		{module: "builtins", name: "complex", reduce: reduceComplex},
		{module: "_codecs", name: "encode", reduce: reduceEncode},
		{module: "datetime", name: "datetime", reduce: reduceDateTime},
		{module: "datetime", name: "date", reduce: reduceDate},
		{module: "datetime", name: "time", reduce: reduceTime},
		{module: "datetime", name: "timedelta", reduce: reduceTimeDelta},
		{module: "datetime", name: "timezone", reduce: reduceTimezone},
		{module: "decimal", name: "Decimal", reduce: reduceDecimal},
	} {
		globals[[2]string{g.module, g.name}] = g
		if g.module == "builtins" {
			py2 := *g
			py2.module = "__builtin__"
			globals[[2]string{py2.module, py2.name}] = &py2
		}
	}
}

// global is a class or function a pickle named, on the stack until a
// REDUCE applies it. It has no msgpack form: left as a value, it is
// refused with ErrUnsupported. Its reduce is given the keyer of the
// Unpickle, for the sets it builds.
type global struct {
	module, name string
	reduce       func(g *global, args Tuple, keys *keyer) (any, error)
}

func (g *global) String() string { return g.module + "." + g.name }

// lookupGlobal returns the allowed global module.name, or the error
// refusing it.
func lookupGlobal(op, module, name string) (*global, error) {
	if g, ok := globals[[2]string{module, name}]; ok {
		return g, nil
	}
	return nil, fmt.Errorf("%w: opcode %s %s", ErrUnsafePickle, op, quoteName(module+"."+name))
}

// timezone is a datetime.timezone, on the stack until a datetime or a
// time takes it as its tzinfo. It has no msgpack form of its own.
type timezone pyext.Zone

// shapeError refuses arguments of a shape Python's pickler does not write.
func shapeError(g *global, args Tuple) error {
	types := ""
	for i, a := range args {
		if i > 0 {
			types += ", "
		}
		types += TypeName(a)
	}
	return fmt.Errorf("%w: REDUCE of %s with arguments (%s), which is not how Python pickles it", ErrUnsafePickle, g, types)
}

// valueError refuses a value of the right shape that Python would not
// build, or that qm cannot carry.
func valueError(g *global, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrBadPickle, g, err)
}

func reduceSet(frozen bool) func(*global, Tuple, *keyer) (any, error) {
	return func(g *global, args Tuple, keys *keyer) (any, error) {
		s := &Set{Frozen: frozen, keys: keys}
		if len(args) == 0 {
			return s, nil
		}
		l, ok := args[0].(*List)
		if len(args) != 1 || !ok {
			return nil, shapeError(g, args)
		}
		for _, it := range l.Items {
			if err := s.Add(it); err != nil {
				return nil, err
			}
		}
		return s, nil
	}
}

func reduceByteArray(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) == 0 {
		return Ext{Type: pyext.ByteArray, Data: []byte{}}, nil
	}
	b, ok := args[0].([]byte)
	if len(args) != 1 || !ok {
		return nil, shapeError(g, args)
	}
	return Ext{Type: pyext.ByteArray, Data: append([]byte{}, b...)}, nil
}

// reduceBytes is bytes(), which protocol 2 writes for b"".
func reduceBytes(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 0 {
		return nil, shapeError(g, args)
	}
	return []byte{}, nil
}

// reduceEncode is _codecs.encode(s, "latin1"), which protocol 2 writes
// for bytes: each character of s is a byte.
func reduceEncode(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 2 {
		return nil, shapeError(g, args)
	}
	s, ok1 := args[0].(string)
	enc, ok2 := args[1].(string)
	if !ok1 || !ok2 || enc != "latin1" {
		return nil, shapeError(g, args)
	}
	b := make([]byte, 0, len(s))
	for _, r := range s {
		if r == utf8.RuneError || r > 0xff {
			return nil, valueError(g, fmt.Errorf("character %U is not latin1", r))
		}
		b = append(b, byte(r))
	}
	return b, nil
}

func reduceComplex(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 2 {
		return nil, shapeError(g, args)
	}
	re, ok1 := args[0].(float64)
	im, ok2 := args[1].(float64)
	if !ok1 || !ok2 {
		return nil, shapeError(g, args)
	}
	return Ext{Type: pyext.Complex, Data: pyext.ComplexData(complex(re, im))}, nil
}

func reduceDecimal(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 1 {
		return nil, shapeError(g, args)
	}
	s, ok := args[0].(string)
	if !ok {
		return nil, shapeError(g, args)
	}
	if err := pyext.CheckDecimal([]byte(s)); err != nil {
		return nil, valueError(g, err)
	}
	return Ext{Type: pyext.Decimal, Data: []byte(s)}, nil
}

func reduceTimeDelta(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 3 {
		return nil, shapeError(g, args)
	}
	var n [3]int64
	for i, a := range args {
		x, ok := a.(int64)
		if !ok {
			return nil, shapeError(g, args)
		}
		n[i] = x
	}
	const maxArg = 1 << 31 // beyond every field's range, and an int on every platform
	for _, x := range n {
		if x <= -maxArg || x >= maxArg {
			return nil, valueError(g, fmt.Errorf("%d out of range", x))
		}
	}
	d := pyext.Delta{Days: int(n[0]), Seconds: int(n[1]), Microseconds: int(n[2])}
	if err := pyext.CheckDelta(d); err != nil {
		return nil, valueError(g, err)
	}
	return Ext{Type: pyext.TimeDelta, Data: pyext.DeltaData(d)}, nil
}

// reduceTimezone is timezone(offset) or timezone(offset, name); offset
// is a timedelta of whole seconds within a day.
func reduceTimezone(g *global, args Tuple, _ *keyer) (any, error) {
	if len(args) != 1 && len(args) != 2 {
		return nil, shapeError(g, args)
	}
	off, ok := args[0].(Ext)
	if !ok || off.Type != pyext.TimeDelta {
		return nil, shapeError(g, args)
	}
	var z timezone
	if len(args) == 2 {
		if z.Name, z.Named = args[1].(string); !z.Named {
			return nil, shapeError(g, args)
		}
	}
	d, err := pyext.ParseTimeDelta(off.Data)
	if err != nil {
		return nil, valueError(g, err)
	}
	if d.Microseconds != 0 {
		return nil, fmt.Errorf("%w: %s with an offset of a fraction of a second", ErrUnsupported, g)
	}
	if d.Days < -1 || d.Days > 0 {
		return nil, valueError(g, fmt.Errorf("an offset of %d days", d.Days))
	}
	z.Offset = d.Days*86400 + d.Seconds
	if err := pyext.CheckZone((*pyext.Zone)(&z)); err != nil {
		return nil, valueError(g, err)
	}
	return z, nil
}

// stateArgs reads the (state,) or (state, tzinfo) of a date, time or
// datetime: state is n bytes; tzinfo, if allowed, is None or a timezone.
func stateArgs(g *global, args Tuple, n int, tz bool) ([]byte, *pyext.Zone, error) {
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !tz {
		return nil, nil, shapeError(g, args)
	}
	state, ok := args[0].([]byte)
	if !ok || len(state) != n {
		return nil, nil, shapeError(g, args)
	}
	if len(args) == 1 || args[1] == nil {
		return state, nil, nil
	}
	z, ok := args[1].(timezone)
	if !ok {
		return nil, nil, fmt.Errorf("%w: %s with a tzinfo of type %s; only datetime.timezone (a fixed offset) is carried", ErrUnsafePickle, g, TypeName(args[1]))
	}
	return state, (*pyext.Zone)(&z), nil
}

func reduceDate(g *global, args Tuple, _ *keyer) (any, error) {
	state, _, err := stateArgs(g, args, 4, false)
	if err != nil {
		return nil, err
	}
	if _, err := pyext.ParseDate(state); err != nil {
		return nil, valueError(g, err)
	}
	return Ext{Type: pyext.Date, Data: append([]byte{}, state...)}, nil
}

func reduceTime(g *global, args Tuple, _ *keyer) (any, error) {
	state, z, err := stateArgs(g, args, 6, true)
	if err != nil {
		return nil, err
	}
	c, _, err := pyext.ParseTime(state)
	if err != nil {
		return nil, valueError(g, err)
	}
	return Ext{Type: pyext.Time, Data: pyext.TimeData(c, z)}, nil
}

func reduceDateTime(g *global, args Tuple, _ *keyer) (any, error) {
	state, z, err := stateArgs(g, args, 10, true)
	if err != nil {
		return nil, err
	}
	c, _, err := pyext.ParseDateTime(state)
	if err != nil {
		return nil, valueError(g, err)
	}
	typ, data := pyext.DateTimeData(c, z)
	return Ext{Type: typ, Data: data}, nil
}
