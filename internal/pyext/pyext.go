// Package pyext defines the msgpack extension types in which qm carries
// the Python values msgpack has no type for (an int beyond 64 bits, a set,
// a bytearray, the datetime types, a Decimal, a complex), and their data:
// the one place that pyproto (pickles to and from msgpack) and wire
// (msgpack to and from Go values) read and write them. docs/VALUES.md
// describes the same forms for other implementations.
//
// Each Parse function checks all of its data, so that what it accepts is
// a value Python can hold (a date that exists, a time of day, an offset
// within a day); the functions that return data write what the Parse
// functions read, and the caller appends it with msgp.AppendExt. Values
// are read from the data alone: nothing is allocated beyond what the data
// holds, and nothing recurses here (a set's elements are msgpack, which
// the caller walks by its own depth rule).
package pyext

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/big"
	"time"
	"unicode/utf8"

	"github.com/qm-dev/qm/internal/msgp"
)

// The extension types. Timestamp is msgpack's own; the others are qm's,
// one per Python type.
const (
	// Timestamp (msgpack's -1) is an aware datetime in UTC: tzinfo
	// timezone.utc, fold 0. Data: msgpack's 4, 8 or 12 bytes.
	Timestamp int8 = -1
	// BigInt is an int outside the int64 and uint64 ranges (smaller ones
	// are msgpack ints). Data: the shortest big-endian two's complement.
	BigInt int8 = 1
	// Set is a set. Data: one msgpack array of its elements.
	Set int8 = 2
	// FrozenSet is a frozenset. Data: one msgpack array of its elements.
	FrozenSet int8 = 3
	// ByteArray is a bytearray. Data: its bytes.
	ByteArray int8 = 4
	// Date is a datetime.date. Data: year (2 bytes), month, day.
	Date int8 = 5
	// Time is a datetime.time. Data: hour (bit 7: fold), minute, second,
	// microsecond (3 bytes), then a Zone suffix if it is aware.
	Time int8 = 6
	// DateTime is a datetime.datetime that is naive, or aware with an
	// offset other than UTC, a named timezone or fold 1. Data: year (2
	// bytes), month (bit 7: fold), day, hour, minute, second, microsecond
	// (3 bytes), then a Zone suffix if it is aware.
	DateTime int8 = 7
	// TimeDelta is a datetime.timedelta. Data: days, seconds (0 to 86399)
	// and microseconds (0 to 999999), each a signed 4-byte integer.
	TimeDelta int8 = 8
	// Decimal is a decimal.Decimal. Data: str() of it, in ASCII.
	Decimal int8 = 9
	// Complex is a complex. Data: its real and imaginary parts, each an
	// IEEE 754 double.
	Complex int8 = 10
)

// A Zone suffix is the timezone of an aware time or datetime: its UTC
// offset in seconds as a signed 4-byte integer, then, if the timezone has
// a name, a zero byte and the name in UTF-8. Every integer is big-endian.

// ErrInvalid is returned for data that is not a value of its type: the
// wrong length, a month 13, an offset of a day or more.
var ErrInvalid = fmt.Errorf("%w: invalid extension value", msgp.ErrMalformed)

// Name returns the Python type that ext type t carries, "" for a type
// qm does not define.
func Name(t int8) string {
	switch t {
	case Timestamp, DateTime:
		return "datetime.datetime"
	case BigInt:
		return "int"
	case Set:
		return "set"
	case FrozenSet:
		return "frozenset"
	case ByteArray:
		return "bytearray"
	case Date:
		return "datetime.date"
	case Time:
		return "datetime.time"
	case TimeDelta:
		return "datetime.timedelta"
	case Decimal:
		return "decimal.Decimal"
	case Complex:
		return "complex"
	}
	return ""
}

func invalid(what string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(what, args...))
}

// Signed returns x as the shortest big-endian two's complement: the data
// of BigInt.
func Signed(x *big.Int) []byte {
	if x.Sign() >= 0 {
		b := x.Bytes()
		if len(b) == 0 || b[0]&0x80 != 0 {
			b = append([]byte{0}, b...)
		}
		return b
	}
	// -x-1 is the bitwise complement of x's two's complement.
	m := new(big.Int).Neg(x)
	b := m.Sub(m, big.NewInt(1)).Bytes()
	for i := range b {
		b[i] = ^b[i]
	}
	if len(b) == 0 || b[0]&0x80 == 0 {
		b = append([]byte{0xff}, b...)
	}
	return b
}

// ParseBigInt decodes big-endian two's complement data of any length but
// zero.
func ParseBigInt(d []byte) (*big.Int, error) {
	if len(d) == 0 {
		return nil, invalid("an int of no bytes")
	}
	x := new(big.Int).SetBytes(d)
	if d[0]&0x80 != 0 {
		x.Sub(x, new(big.Int).Lsh(big.NewInt(1), uint(8*len(d))))
	}
	return x, nil
}

// Civil is a date and a time of day, as a Python date, time or datetime
// holds them; a date leaves the time zero, a time the date.
type Civil struct {
	Year, Month, Day                  int
	Hour, Minute, Second, Microsecond int
	Fold                              bool
}

// Zone is the timezone of an aware time or datetime: a
// datetime.timezone, a fixed offset from UTC with an optional name.
type Zone struct {
	// Offset is seconds east of UTC, less than a day either way.
	Offset int
	// Name is the timezone's name if Named (it may be ""); an unnamed
	// one is written as UTC+01:00 and the like by Python.
	Name  string
	Named bool
}

// UTC reports whether z is timezone.utc: offset 0, no name.
func (z *Zone) UTC() bool { return z != nil && z.Offset == 0 && !z.Named }

const (
	dateLen  = 4
	clockLen = 6
	dayLen   = 86400
)

// DateState returns the 4 bytes of a date: the data of Date, and the
// state Python's pickle gives datetime.date.
func DateState(c Civil) []byte {
	return []byte{byte(c.Year >> 8), byte(c.Year), byte(c.Month), byte(c.Day)}
}

// TimeState returns the 6 bytes of a time of day: the data of a naive
// Time, and the state Python's pickle gives datetime.time.
func TimeState(c Civil) []byte {
	h := byte(c.Hour)
	if c.Fold {
		h |= 0x80
	}
	us := c.Microsecond
	return []byte{h, byte(c.Minute), byte(c.Second), byte(us >> 16), byte(us >> 8), byte(us)}
}

// DateTimeState returns the 10 bytes of a date and time: the data of a
// naive DateTime, and the state Python's pickle (protocol 4 and later,
// which keeps the fold) gives datetime.datetime.
func DateTimeState(c Civil) []byte {
	d := DateState(c)
	t := TimeState(c)
	if c.Fold {
		d[2] |= 0x80
		t[0] &^= 0x80
	}
	return append(d, t...)
}

func parseDate(d []byte, c *Civil, foldBit bool) error {
	c.Year = int(d[0])<<8 | int(d[1])
	c.Month, c.Day = int(d[2]), int(d[3])
	if foldBit {
		c.Fold = c.Month&0x80 != 0
		c.Month &^= 0x80
	}
	if c.Year < 1 || c.Year > 9999 || c.Month < 1 || c.Month > 12 || c.Day < 1 || c.Day > daysIn(c.Year, c.Month) {
		return invalid("no date %04d-%02d-%02d", c.Year, c.Month, c.Day)
	}
	return nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func parseClock(d []byte, c *Civil, foldBit bool) error {
	c.Hour, c.Minute, c.Second = int(d[0]), int(d[1]), int(d[2])
	c.Microsecond = int(d[3])<<16 | int(d[4])<<8 | int(d[5])
	if foldBit {
		c.Fold = c.Hour&0x80 != 0
		c.Hour &^= 0x80
	}
	if c.Hour > 23 || c.Minute > 59 || c.Second > 59 || c.Microsecond > 999999 {
		return invalid("no time of day %02d:%02d:%02d.%06d", c.Hour, c.Minute, c.Second, c.Microsecond)
	}
	return nil
}

// parseZone reads the Zone suffix in d, if there is one.
func parseZone(d []byte) (*Zone, error) {
	switch {
	case len(d) == 0:
		return nil, nil
	case len(d) < 4 || len(d) > 4 && d[4] != 0:
		return nil, invalid("a timezone of %d bytes", len(d))
	}
	z := &Zone{Offset: int(int32(binary.BigEndian.Uint32(d)))}
	if z.Offset <= -dayLen || z.Offset >= dayLen {
		return nil, invalid("a UTC offset of %d seconds", z.Offset)
	}
	if len(d) > 4 {
		if !utf8.Valid(d[5:]) {
			// Python's timezone names are str, which pickle writes as
			// UTF-8 (and Go's, a string that may not be).
			return nil, invalid("a timezone name that is not UTF-8")
		}
		z.Name, z.Named = string(d[5:]), true
	}
	return z, nil
}

func appendZone(b []byte, z *Zone) []byte {
	if z == nil {
		return b
	}
	b = binary.BigEndian.AppendUint32(b, uint32(int32(z.Offset)))
	if z.Named {
		b = append(append(b, 0), z.Name...)
	}
	return b
}

// CheckZone reports whether Python can hold z: an offset within a day.
func CheckZone(z *Zone) error {
	if z != nil && (z.Offset <= -dayLen || z.Offset >= dayLen) {
		return invalid("a UTC offset of %d seconds", z.Offset)
	}
	return nil
}

// ParseDate decodes the data of Date.
func ParseDate(d []byte) (Civil, error) {
	var c Civil
	if len(d) != dateLen {
		return c, invalid("a date of %d bytes", len(d))
	}
	return c, parseDate(d, &c, false)
}

// ParseTime decodes the data of Time; the zone is nil for a naive time.
func ParseTime(d []byte) (Civil, *Zone, error) {
	var c Civil
	if len(d) < clockLen {
		return c, nil, invalid("a time of %d bytes", len(d))
	}
	if err := parseClock(d, &c, true); err != nil {
		return c, nil, err
	}
	z, err := parseZone(d[clockLen:])
	return c, z, err
}

// TimeData returns the data of a Time: the time of day of c, with z (nil
// for a naive time), which the caller has checked.
func TimeData(c Civil, z *Zone) []byte {
	return appendZone(TimeState(c), z)
}

// ParseDateTime decodes the data of DateTime; the zone is nil for a
// naive datetime.
func ParseDateTime(d []byte) (Civil, *Zone, error) {
	var c Civil
	if len(d) < dateLen+clockLen {
		return c, nil, invalid("a datetime of %d bytes", len(d))
	}
	if err := parseDate(d, &c, true); err != nil {
		return c, nil, err
	}
	fold := c.Fold
	if err := parseClock(d[dateLen:], &c, false); err != nil {
		return c, nil, err
	}
	c.Fold = fold
	z, err := parseZone(d[dateLen+clockLen:])
	return c, z, err
}

// DateTimeData returns the type and data of the datetime c with z (nil
// for a naive datetime), which the caller has checked: a Timestamp if z
// is UTC and fold is 0, else a DateTime.
func DateTimeData(c Civil, z *Zone) (int8, []byte) {
	if z.UTC() && !c.Fold {
		t := time.Date(c.Year, time.Month(c.Month), c.Day, c.Hour, c.Minute, c.Second, c.Microsecond*1000, time.UTC)
		v, _ := msgp.NewReader(msgp.AppendTime(nil, t)).Next()
		return Timestamp, v.Data
	}
	return DateTime, appendZone(DateTimeState(c), z)
}

// ParseTimestamp decodes the data of a Timestamp as a datetime in UTC. A
// time between microseconds is cut to the one before it; one outside
// Python's years 1 to 9999 is refused.
func ParseTimestamp(d []byte) (Civil, error) {
	t, err := msgp.Timestamp(d)
	if err != nil {
		return Civil{}, err
	}
	t = t.UTC()
	if t.Year() < 1 || t.Year() > 9999 {
		return Civil{}, fmt.Errorf("%w: %s is outside the years 1 to 9999 of a Python datetime", ErrRange, t.Format(time.RFC3339))
	}
	return Civil{
		Year: t.Year(), Month: int(t.Month()), Day: t.Day(),
		Hour: t.Hour(), Minute: t.Minute(), Second: t.Second(), Microsecond: t.Nanosecond() / 1000,
	}, nil
}

// ErrRange is returned for a well-formed value that Python cannot hold:
// a timestamp outside the years 1 to 9999.
var ErrRange = errors.New("value out of Python's range")

// Delta is a datetime.timedelta, normalized as Python keeps it.
type Delta struct {
	Days         int // -999999999 to 999999999
	Seconds      int // 0 to 86399
	Microseconds int // 0 to 999999
}

const maxDays = 999999999

// CheckDelta reports whether d is normalized and in Python's range.
func CheckDelta(d Delta) error {
	if d.Days < -maxDays || d.Days > maxDays || d.Seconds < 0 || d.Seconds >= dayLen || d.Microseconds < 0 || d.Microseconds > 999999 {
		return invalid("no timedelta(%d, %d, %d)", d.Days, d.Seconds, d.Microseconds)
	}
	return nil
}

// ParseTimeDelta decodes the data of TimeDelta.
func ParseTimeDelta(d []byte) (Delta, error) {
	if len(d) != 12 {
		return Delta{}, invalid("a timedelta of %d bytes", len(d))
	}
	td := Delta{
		Days:         int(int32(binary.BigEndian.Uint32(d))),
		Seconds:      int(int32(binary.BigEndian.Uint32(d[4:]))),
		Microseconds: int(int32(binary.BigEndian.Uint32(d[8:]))),
	}
	return td, CheckDelta(td)
}

// DeltaData returns the data of a TimeDelta: d, which the caller has
// checked.
func DeltaData(d Delta) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(int32(d.Days)))
	b = binary.BigEndian.AppendUint32(b, uint32(int32(d.Seconds)))
	return binary.BigEndian.AppendUint32(b, uint32(int32(d.Microseconds)))
}

// CheckDecimal reports whether s is a Decimal as Python's str() writes
// it: an optional "-", then digits with an optional fraction and an
// exponent "E+n" or "E-n", or Infinity, NaN or sNaN (the NaNs with
// optional digits of payload).
func CheckDecimal(s []byte) error {
	t := s
	if len(t) > 0 && t[0] == '-' {
		t = t[1:]
	}
	digits := func(min int) bool {
		n := 0
		for n < len(t) && t[n] >= '0' && t[n] <= '9' {
			n++
		}
		t = t[n:]
		return n >= min
	}
	switch {
	case string(t) == "Infinity":
		return nil
	case len(t) >= 3 && string(t[:3]) == "NaN":
		t = t[3:]
		if digits(0) && len(t) == 0 {
			return nil
		}
	case len(t) >= 4 && string(t[:4]) == "sNaN":
		t = t[4:]
		if digits(0) && len(t) == 0 {
			return nil
		}
	case digits(1):
		if len(t) > 0 && t[0] == '.' {
			t = t[1:]
			if !digits(1) {
				break
			}
		}
		if len(t) > 1 && t[0] == 'E' && (t[1] == '+' || t[1] == '-') {
			t = t[2:]
			if !digits(1) {
				break
			}
		}
		if len(t) == 0 {
			return nil
		}
	}
	if len(s) > 40 {
		s = append(s[:37:37], "..."...)
	}
	return invalid("%q is not a Decimal as str() writes one", s)
}

// ParseComplex decodes the data of Complex.
func ParseComplex(d []byte) (complex128, error) {
	if len(d) != 16 {
		return 0, invalid("a complex of %d bytes", len(d))
	}
	re := math.Float64frombits(binary.BigEndian.Uint64(d))
	im := math.Float64frombits(binary.BigEndian.Uint64(d[8:]))
	return complex(re, im), nil
}

// ComplexData returns the data of a Complex.
func ComplexData(c complex128) []byte {
	b := binary.BigEndian.AppendUint64(nil, math.Float64bits(real(c)))
	return binary.BigEndian.AppendUint64(b, math.Float64bits(imag(c)))
}

// OpenSet starts reading the data of a Set or FrozenSet: it returns a
// Reader positioned at the first of n elements. After the elements the
// caller checks that r.Len() is 0.
func OpenSet(d []byte) (r *msgp.Reader, n int, err error) {
	r = msgp.NewReader(d)
	v, err := r.Next()
	if err != nil {
		return nil, 0, err
	}
	if v.Type != msgp.TypeArray {
		return nil, 0, invalid("a set's data is a msgpack %s, not an array", v.Type)
	}
	return r, v.Len(), nil
}
