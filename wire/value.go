package wire

import (
	"bytes"
	"fmt"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/internal/pyext"
	"github.com/vmihailenco/msgpack/v5"
)

// The Go values of the Python types that msgpack has no type for, which
// Python clients send as the extension types of docs/VALUES.md. An int
// beyond 64 bits is a *big.Int, a complex a complex128, and an aware
// datetime a time.Time (in UTC, or in a fixed zone with the datetime's
// offset and timezone name); the others have a type here. Each of these
// types is encoded back to its extension type by Encode and Put, so a Go
// worker hands Python the type it was given; so are a *big.Int (as a
// msgpack int when it fits one) and a complex128, whose encoders this
// package registers with github.com/vmihailenco/msgpack/v5. A time.Time
// is put as a timestamp, which Python reads as a datetime in UTC.

// Set is a Python set: its elements, each decoded as DecodeValue decodes
// a value (a tuple is a []any).
type Set []any

// FrozenSet is a Python frozenset.
type FrozenSet []any

// ByteArray is a Python bytearray.
type ByteArray []byte

// Decimal is a Python decimal.Decimal as str() writes it, exactly:
// "1.50", "-0", "1E+30", "NaN", "-Infinity".
type Decimal string

// Date is a Python datetime.date. Its JSON is "2024-01-02".
type Date struct {
	Year  int
	Month time.Month
	Day   int
}

// DateTime is a naive Python datetime.datetime, one without a timezone.
// Its JSON is Python's isoformat(): "2024-01-02T03:04:05.000006".
type DateTime struct {
	Year                              int
	Month                             time.Month
	Day, Hour, Minute, Second, Micros int
	// Fold is Python's fold: 1 marks the second of two equal wall times
	// (when clocks go back).
	Fold int
}

// Time is a Python datetime.time: naive if Zone is nil, else with a fixed
// offset (a time.FixedZone). Its JSON is Python's isoformat():
// "03:04:05.000006", "03:04:05+02:00".
type Time struct {
	Hour, Minute, Second, Micros int
	Fold                         int
	Zone                         *time.Location
}

// TimeDelta is a Python datetime.timedelta, normalized as Python keeps
// it: Seconds from 0 to 86399, Micros from 0 to 999999, and Days from
// -999999999 to 999999999, far beyond a time.Duration. Its JSON is the
// number of seconds, exact: -86394.999993.
type TimeDelta struct {
	Days, Seconds, Micros int
}

func init() {
	// Before, vmihailenco wrote a *big.Int as the bytes of its decimal
	// text, and refused a complex128.
	msgpack.Register((*big.Int)(nil), encodeBigInt, nil)
	msgpack.Register(complex128(0), encodeComplex, nil)
}

func encodeBigInt(e *msgpack.Encoder, v reflect.Value) error {
	x := v.Interface().(*big.Int)
	switch {
	case x == nil:
		return e.EncodeNil()
	case x.IsInt64():
		return e.EncodeInt(x.Int64())
	case x.IsUint64():
		return e.EncodeUint(x.Uint64())
	}
	return encodeExt(e, pyext.BigInt, pyext.Signed(x))
}

func encodeComplex(e *msgpack.Encoder, v reflect.Value) error {
	return encodeExt(e, pyext.Complex, pyext.ComplexData(v.Complex()))
}

func encodeExt(e *msgpack.Encoder, typ int8, data []byte) error {
	if err := e.EncodeExtHeader(typ, len(data)); err != nil {
		return err
	}
	_, err := e.Writer().Write(data)
	return err
}

// DecodeValue decodes a msgpack payload into nil, bool, int64 (uint64
// above MaxInt64), float64, string, []byte, []any, map[string]any, and
// the types of the Python values above. A map whose keys are not all
// str (or bin) is a map[any]any, its keys scalars (Python's {1: "a"} or
// {None: 1}, say); one with an array, map or extension key is refused.
func DecodeValue(b []byte) (any, error) {
	if len(b) == 0 { // msgpack decodes a RawMessage holding nil as empty
		return nil, nil
	}
	if err := msgp.Validate(b); err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	v, err := decodeValue(msgp.NewReader(b), 0)
	if err != nil {
		return nil, fmt.Errorf("decode payload: %w", err)
	}
	return v, nil
}

// decodeValue decodes the value at r. It recurses, and counts its depth
// against msgp.MaxDepth, a set's elements (inside an ext, which Validate
// does not walk) as one more level.
func decodeValue(r *msgp.Reader, depth int) (any, error) {
	if depth > msgp.MaxDepth {
		return nil, msgp.ErrTooDeep
	}
	v, err := r.Next()
	if err != nil {
		return nil, err
	}
	switch v.Type {
	case msgp.TypeBool:
		return v.Bool(), nil
	case msgp.TypeInt:
		return v.Int(), nil
	case msgp.TypeUint:
		return v.Uint(), nil
	case msgp.TypeFloat:
		return v.Float(), nil
	case msgp.TypeStr:
		return string(v.Data), nil
	case msgp.TypeBin:
		return append([]byte{}, v.Data...), nil
	case msgp.TypeArray:
		return decodeItems(r, v.Len(), depth)
	case msgp.TypeMap:
		return decodeMap(r, v.Len(), depth)
	case msgp.TypeExt:
		return decodeExt(v.ExtType, v.Data, depth)
	}
	return nil, nil // TypeNil
}

// decodeMap decodes a map of n pairs: a map[string]any if every key is a
// str (or bin), else a map[any]any, as Python's {1: "a"} or {None: 1}
// is. A key Go cannot compare, or a big one, is refused.
func decodeMap(r *msgp.Reader, n, depth int) (any, error) {
	m := make(map[string]any, n)
	var am map[any]any // once a key is not a str
	for range n {
		k, err := r.Next()
		if err != nil {
			return nil, err
		}
		var key any
		switch k.Type {
		case msgp.TypeStr, msgp.TypeBin:
			key = string(k.Data)
		case msgp.TypeNil:
		case msgp.TypeBool:
			key = k.Bool()
		case msgp.TypeInt:
			key = k.Int()
		case msgp.TypeUint:
			key = k.Uint()
		case msgp.TypeFloat:
			key = k.Float()
		default:
			return nil, fmt.Errorf("%w: a map key of type %s; keys are str, bin, int, float, bool or nil", msgp.ErrType, k.Type)
		}
		v, err := decodeValue(r, depth+1)
		if err != nil {
			return nil, err
		}
		if am == nil {
			if s, ok := key.(string); ok {
				m[s] = v
				continue
			}
			am = make(map[any]any, n)
			for s, e := range m {
				am[s] = e
			}
		}
		am[key] = v
	}
	if am != nil {
		return am, nil
	}
	return m, nil
}

func decodeItems(r *msgp.Reader, n, depth int) ([]any, error) {
	s := make([]any, n)
	for i := range s {
		var err error
		if s[i], err = decodeValue(r, depth+1); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// decodeExt decodes the extension types of package internal/pyext.
func decodeExt(typ int8, data []byte, depth int) (any, error) {
	switch typ {
	case pyext.Timestamp:
		t, err := msgp.Timestamp(data)
		return t.UTC(), err
	case pyext.BigInt:
		return pyext.ParseBigInt(data)
	case pyext.Set, pyext.FrozenSet:
		r, n, err := pyext.OpenSet(data)
		if err != nil {
			return nil, err
		}
		items, err := decodeItems(r, n, depth)
		if err != nil {
			return nil, err
		}
		if r.Len() != 0 {
			return nil, fmt.Errorf("%w: %d bytes after a set's elements", msgp.ErrMalformed, r.Len())
		}
		if typ == pyext.FrozenSet {
			return FrozenSet(items), nil
		}
		return Set(items), nil
	case pyext.ByteArray:
		return ByteArray(append([]byte{}, data...)), nil
	case pyext.Date:
		c, err := pyext.ParseDate(data)
		return Date{c.Year, time.Month(c.Month), c.Day}, err
	case pyext.Time:
		c, z, err := pyext.ParseTime(data)
		return Time{c.Hour, c.Minute, c.Second, c.Microsecond, fold(c), location(z)}, err
	case pyext.DateTime:
		c, z, err := pyext.ParseDateTime(data)
		if z == nil || err != nil {
			return DateTime{c.Year, time.Month(c.Month), c.Day, c.Hour, c.Minute, c.Second, c.Microsecond, fold(c)}, err
		}
		return time.Date(c.Year, time.Month(c.Month), c.Day, c.Hour, c.Minute, c.Second, c.Microsecond*1000, location(z)), nil
	case pyext.TimeDelta:
		d, err := pyext.ParseTimeDelta(data)
		return TimeDelta{d.Days, d.Seconds, d.Microseconds}, err
	case pyext.Decimal:
		return Decimal(data), pyext.CheckDecimal(data)
	case pyext.Complex:
		return pyext.ParseComplex(data)
	}
	return nil, fmt.Errorf("%w: extension type %d", msgp.ErrType, typ)
}

func fold(c pyext.Civil) int {
	if c.Fold {
		return 1
	}
	return 0
}

// location is z as a fixed zone: named as the Python timezone is, or ""
// for one without a name.
func location(z *pyext.Zone) *time.Location {
	if z == nil {
		return nil
	}
	return time.FixedZone(z.Name, z.Offset)
}

// zoneOf is the Python timezone of loc, which must be a fixed zone.
func zoneOf(loc *time.Location) (*pyext.Zone, error) {
	if loc == nil {
		return nil, nil
	}
	name, off := time.Date(2000, 1, 1, 0, 0, 0, 0, loc).Zone()
	if _, off2 := time.Date(2000, 7, 1, 0, 0, 0, 0, loc).Zone(); off2 != off {
		return nil, fmt.Errorf("encode payload: a Time's Zone must be a fixed offset, not %s", loc)
	}
	z := &pyext.Zone{Offset: off, Name: name, Named: name != ""}
	return z, pyext.CheckZone(z)
}

// MarshalMsgpack encodes s as the Set extension type.
func (s Set) MarshalMsgpack() ([]byte, error) { return marshalSet(pyext.Set, s) }

// MarshalMsgpack encodes s as the FrozenSet extension type.
func (s FrozenSet) MarshalMsgpack() ([]byte, error) { return marshalSet(pyext.FrozenSet, s) }

// marshalSet encodes the elements with integers in their shortest form,
// as Python clients write them, so that a set read and put back is the
// same bytes.
func marshalSet(typ int8, items []any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.UseCompactInts(true)
	if err := enc.Encode(items); err != nil {
		return nil, err
	}
	return msgp.AppendExt(nil, typ, buf.Bytes()), nil
}

// MarshalMsgpack encodes b as the ByteArray extension type.
func (b ByteArray) MarshalMsgpack() ([]byte, error) {
	return msgp.AppendExt(nil, pyext.ByteArray, b), nil
}

// MarshalMsgpack encodes d as the Decimal extension type, if it is a
// Decimal as str() writes one.
func (d Decimal) MarshalMsgpack() ([]byte, error) {
	if err := pyext.CheckDecimal([]byte(d)); err != nil {
		return nil, err
	}
	return msgp.AppendExt(nil, pyext.Decimal, []byte(d)), nil
}

func (d Date) civil() pyext.Civil { return pyext.Civil{Year: d.Year, Month: int(d.Month), Day: d.Day} }

// MarshalMsgpack encodes d as the Date extension type, if Python has
// such a date.
func (d Date) MarshalMsgpack() ([]byte, error) {
	data := pyext.DateState(d.civil())
	if c, err := pyext.ParseDate(data); err != nil || c != d.civil() {
		return nil, fmt.Errorf("encode payload: no Python date %v", d)
	}
	return msgp.AppendExt(nil, pyext.Date, data), nil
}

// String is ISO 8601, as Python's isoformat(): 2024-01-02.
func (d Date) String() string { return fmt.Sprintf("%04d-%02d-%02d", d.Year, int(d.Month), d.Day) }

// MarshalText is String.
func (d Date) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (t DateTime) civil() pyext.Civil {
	return pyext.Civil{Year: t.Year, Month: int(t.Month), Day: t.Day, Hour: t.Hour, Minute: t.Minute,
		Second: t.Second, Microsecond: t.Micros, Fold: t.Fold == 1}
}

// MarshalMsgpack encodes t as the DateTime extension type, if Python has
// such a datetime.
func (t DateTime) MarshalMsgpack() ([]byte, error) {
	typ, data := pyext.DateTimeData(t.civil(), nil)
	if c, _, err := pyext.ParseDateTime(data); err != nil || c != t.civil() || t.Fold&^1 != 0 {
		return nil, fmt.Errorf("encode payload: no Python datetime %v", t)
	}
	return msgp.AppendExt(nil, typ, data), nil
}

// String is ISO 8601, as Python's isoformat(): 2024-01-02T03:04:05, with
// .ffffff when there are microseconds.
func (t DateTime) String() string {
	return Date{t.Year, t.Month, t.Day}.String() + "T" + clock(t.Hour, t.Minute, t.Second, t.Micros)
}

// MarshalText is String.
func (t DateTime) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// In returns t as a time.Time in loc.
func (t DateTime) In(loc *time.Location) time.Time {
	return time.Date(t.Year, t.Month, t.Day, t.Hour, t.Minute, t.Second, t.Micros*1000, loc)
}

func clock(h, m, s, us int) string {
	c := fmt.Sprintf("%02d:%02d:%02d", h, m, s)
	if us != 0 {
		c += fmt.Sprintf(".%06d", us)
	}
	return c
}

// MarshalMsgpack encodes t as the Time extension type, if Python has
// such a time; Zone must be a fixed offset of less than a day.
func (t Time) MarshalMsgpack() ([]byte, error) {
	z, err := zoneOf(t.Zone)
	if err != nil {
		return nil, err
	}
	c := pyext.Civil{Hour: t.Hour, Minute: t.Minute, Second: t.Second, Microsecond: t.Micros, Fold: t.Fold == 1}
	data := pyext.TimeData(c, z)
	if got, _, err := pyext.ParseTime(data); err != nil || got != c || t.Fold&^1 != 0 {
		return nil, fmt.Errorf("encode payload: no Python time %v", t)
	}
	return msgp.AppendExt(nil, pyext.Time, data), nil
}

// String is ISO 8601, as Python's isoformat(): 03:04:05.000006, then the
// offset if Zone is set: +02:00.
func (t Time) String() string {
	s := clock(t.Hour, t.Minute, t.Second, t.Micros)
	if t.Zone == nil {
		return s
	}
	_, off := time.Date(2000, 1, 1, 0, 0, 0, 0, t.Zone).Zone()
	sign := "+"
	if off < 0 {
		sign, off = "-", -off
	}
	s += fmt.Sprintf("%s%02d:%02d", sign, off/3600, off/60%60)
	if off%60 != 0 {
		s += fmt.Sprintf(":%02d", off%60)
	}
	return s
}

// MarshalText is String.
func (t Time) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// MarshalMsgpack encodes d as the TimeDelta extension type, if it is
// normalized as Python keeps a timedelta.
func (d TimeDelta) MarshalMsgpack() ([]byte, error) {
	pd := pyext.Delta{Days: d.Days, Seconds: d.Seconds, Microseconds: d.Micros}
	if err := pyext.CheckDelta(pd); err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	return msgp.AppendExt(nil, pyext.TimeDelta, pyext.DeltaData(pd)), nil
}

// Duration returns d as a time.Duration, and false if it does not fit
// one (about 292 years either way).
func (d TimeDelta) Duration() (time.Duration, bool) {
	us := new(big.Int).SetInt64(int64(d.Days))
	us.Mul(us, big.NewInt(86400)).Add(us, big.NewInt(int64(d.Seconds)))
	us.Mul(us, big.NewInt(1e6)).Add(us, big.NewInt(int64(d.Micros)))
	ns := us.Mul(us, big.NewInt(1000))
	if !ns.IsInt64() {
		return 0, false
	}
	return time.Duration(ns.Int64()), true
}

// String is the number of seconds, exact: -86394.999993.
func (d TimeDelta) String() string {
	secs := int64(d.Days)*86400 + int64(d.Seconds) // within ±8.7e13
	us := int64(d.Micros)
	if us == 0 {
		return strconv.FormatInt(secs, 10)
	}
	sign := ""
	if secs < 0 { // secs + us/1e6 = -((-secs-1) + (1e6-us)/1e6)
		sign, secs, us = "-", -secs-1, 1e6-us
	}
	return sign + strconv.FormatInt(secs, 10) + "." + strings.TrimRight(fmt.Sprintf("%06d", us), "0")
}

// MarshalJSON is String, a JSON number.
func (d TimeDelta) MarshalJSON() ([]byte, error) { return []byte(d.String()), nil }
