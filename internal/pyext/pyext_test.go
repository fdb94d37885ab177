package pyext_test

import (
	"encoding/hex"
	"errors"
	"math/big"
	"testing"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/qm-dev/qm/internal/pyext"
)

func TestSigned(t *testing.T) {
	for _, tc := range []struct{ n, hex string }{
		{"0", "00"}, {"1", "01"}, {"127", "7f"}, {"128", "0080"}, {"255", "00ff"}, {"256", "0100"},
		{"-1", "ff"}, {"-128", "80"}, {"-129", "ff7f"}, {"-256", "ff00"}, {"-257", "feff"},
		{"18446744073709551616", "010000000000000000"},                    // 2**64
		{"-18446744073709551617", "feffffffffffffffff"},                   // -2**64 - 1
		{"-9223372036854775809", "ff7fffffffffffffff"},                    // -2**63 - 1
		{"1000000000000000000000000000000", "0c9f2c9cd04674edea40000000"}, // 10**30
	} {
		n, _ := new(big.Int).SetString(tc.n, 10)
		got := pyext.Signed(n)
		if hex.EncodeToString(got) != tc.hex {
			t.Errorf("Signed(%s) = %x, want %s", tc.n, got, tc.hex)
		}
		back, err := pyext.ParseBigInt(got)
		if err != nil || back.Cmp(n) != 0 {
			t.Errorf("ParseBigInt(%x) = %v, %v; want %s", got, back, err, tc.n)
		}
	}
	// Longer forms than the shortest read as the same number.
	if n, err := pyext.ParseBigInt([]byte{0xff, 0xff, 0xff}); err != nil || n.Int64() != -1 {
		t.Errorf("ParseBigInt(ffffff) = %v, %v", n, err)
	}
	if _, err := pyext.ParseBigInt(nil); !errors.Is(err, pyext.ErrInvalid) {
		t.Errorf("ParseBigInt(empty) = %v, want ErrInvalid", err)
	}
}

func TestCheckDecimal(t *testing.T) {
	for _, s := range []string{"0", "-0", "1.50", "1E+30", "-1.23E-7", "0.000001", "Infinity", "-Infinity",
		"NaN", "-NaN", "NaN123", "sNaN", "-sNaN45", "123456789012345678901234567890.5"} {
		if err := pyext.CheckDecimal([]byte(s)); err != nil {
			t.Errorf("CheckDecimal(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", "-", "+1", "1e5", "1E5", "1.", ".5", "1.E+2", "1E+", "inf", "nan", "Inf",
		"Infinity1", "NaNx", " 1", "1 ", "1_000", "0x10", "١"} {
		if err := pyext.CheckDecimal([]byte(s)); !errors.Is(err, pyext.ErrInvalid) {
			t.Errorf("CheckDecimal(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

func TestDateTimes(t *testing.T) {
	c := pyext.Civil{Year: 2024, Month: 11, Day: 3, Hour: 1, Minute: 30, Second: 5, Microsecond: 123456, Fold: true}
	if got := hex.EncodeToString(pyext.DateTimeState(c)); got != "07e88b0301"+"1e0501e240" {
		t.Errorf("DateTimeState = %s", got)
	}
	if got := hex.EncodeToString(pyext.TimeState(c)); got != "811e0501e240" {
		t.Errorf("TimeState = %s", got)
	}
	for _, z := range []*pyext.Zone{nil, {Offset: 3600}, {Offset: -19800, Name: "X", Named: true}, {Name: "", Named: true}, {}} {
		typ, data := pyext.DateTimeData(c, z)
		if typ != pyext.DateTime {
			t.Fatalf("DateTimeData with fold 1 is type %d", typ)
		}
		got, gz, err := pyext.ParseDateTime(data)
		if err != nil || got != c || (gz == nil) != (z == nil) || gz != nil && *gz != *z {
			t.Errorf("ParseDateTime(%x) = %+v, %+v, %v; want %+v, %+v", data, got, gz, err, c, z)
		}
		tc, tz, err := pyext.ParseTime(pyext.TimeData(c, z))
		if err != nil || tc.Hour != c.Hour || tc.Microsecond != c.Microsecond || !tc.Fold || (tz == nil) != (z == nil) {
			t.Errorf("ParseTime(TimeData) = %+v, %+v, %v", tc, tz, err)
		}
	}
	// In UTC with fold 0: msgpack's timestamp, which reads back the same.
	c.Fold = false
	typ, data := pyext.DateTimeData(c, &pyext.Zone{})
	if typ != pyext.Timestamp || len(data) != 8 {
		t.Fatalf("DateTimeData in UTC = %d, %x", typ, data)
	}
	if got, err := pyext.ParseTimestamp(data); err != nil || got != c {
		t.Errorf("ParseTimestamp = %+v, %v; want %+v", got, err, c)
	}
	// A named UTC is not timezone.utc.
	if typ, _ := pyext.DateTimeData(c, &pyext.Zone{Name: "UTC", Named: true}); typ != pyext.DateTime {
		t.Errorf("a UTC named UTC is type %d", typ)
	}
}

func TestParseTimestamp(t *testing.T) {
	for _, tc := range []struct {
		data string
		want pyext.Civil
		err  error
	}{
		{"00000000", pyext.Civil{Year: 1970, Month: 1, Day: 1}, nil},
		{"00000fa000000000", pyext.Civil{Year: 1970, Month: 1, Day: 1, Microsecond: 1}, nil},                             // 1000 ns
		{"00000fa400000000", pyext.Civil{Year: 1970, Month: 1, Day: 1, Microsecond: 1}, nil},                             // 1001 ns: cut
		{"000003e7ffffffffffffffff", pyext.Civil{Year: 1969, Month: 12, Day: 31, Hour: 23, Minute: 59, Second: 59}, nil}, // -1 s + 999 ns
		{"00000000fffffff1886e0900", pyext.Civil{Year: 1, Month: 1, Day: 1}, nil},
		{"00000000fffffff1886e08ff", pyext.Civil{}, pyext.ErrRange},
		{"000000000000003afff44180", pyext.Civil{}, pyext.ErrRange}, // 10000-01-01
		{"000000", pyext.Civil{}, msgp.ErrMalformed},
	} {
		d, _ := hex.DecodeString(tc.data)
		got, err := pyext.ParseTimestamp(d)
		if !errors.Is(err, tc.err) || err == nil && got != tc.want {
			t.Errorf("ParseTimestamp(%s) = %+v, %v; want %+v, %v", tc.data, got, err, tc.want, tc.err)
		}
	}
}

func TestInvalid(t *testing.T) {
	for name, f := range map[string]func() error{
		"date of 3 bytes":   func() error { _, err := pyext.ParseDate([]byte{7, 0xe8, 1}); return err },
		"year 0":            func() error { _, err := pyext.ParseDate([]byte{0, 0, 1, 1}); return err },
		"year 10000":        func() error { _, err := pyext.ParseDate([]byte{0x27, 0x10, 1, 1}); return err },
		"February 29, 2023": func() error { _, err := pyext.ParseDate([]byte{7, 0xe7, 2, 29}); return err },
		"month 0":           func() error { _, err := pyext.ParseDate([]byte{7, 0xe8, 0, 1}); return err },
		"date with fold":    func() error { _, err := pyext.ParseDate([]byte{7, 0xe8, 0x81, 1}); return err },
		"minute 60":         func() error { _, _, err := pyext.ParseTime([]byte{0, 60, 0, 0, 0, 0}); return err },
		"second 60":         func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 60, 0, 0, 0}); return err },
		"microsecond 10**6": func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 0, 0x0f, 0x42, 0x40}); return err },
		"offset of 3 bytes": func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0}); return err },
		"offset of a day":   func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0x51, 0x80}); return err },
		"offset of -a day": func() error {
			_, _, err := pyext.ParseTime([]byte{0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0xae, 0x80})
			return err
		},
		"name without zero": func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 'X'}); return err },
		"name not UTF-8":    func() error { _, _, err := pyext.ParseTime([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff}); return err },
		"datetime hour 24":  func() error { _, _, err := pyext.ParseDateTime([]byte{7, 0xe8, 1, 1, 24, 0, 0, 0, 0, 0}); return err },
		"timedelta days": func() error {
			_, err := pyext.ParseTimeDelta([]byte{0x3b, 0x9a, 0xca, 0, 0, 0, 0, 0, 0, 0, 0, 0})
			return err
		},
		"timedelta -1 s": func() error {
			_, err := pyext.ParseTimeDelta([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
			return err
		},
		"timedelta 11 B":  func() error { _, err := pyext.ParseTimeDelta(make([]byte, 11)); return err },
		"complex of 15 B": func() error { _, err := pyext.ParseComplex(make([]byte, 15)); return err },
		"set of a str":    func() error { _, _, err := pyext.OpenSet([]byte{0xa1, 'x'}); return err },
		"set cut":         func() error { _, _, err := pyext.OpenSet([]byte{0x92, 1}); return err },
	} {
		if err := f(); !errors.Is(err, msgp.ErrMalformed) {
			t.Errorf("%s: %v, want a malformed value", name, err)
		}
	}
}

func TestDelta(t *testing.T) {
	for _, d := range []pyext.Delta{{}, {Days: -1, Seconds: 5, Microseconds: 7}, {Days: 999999999, Seconds: 86399, Microseconds: 999999}, {Days: -999999999}} {
		got, err := pyext.ParseTimeDelta(pyext.DeltaData(d))
		if err != nil || got != d {
			t.Errorf("%+v read back as %+v, %v", d, got, err)
		}
	}
	if got := hex.EncodeToString(pyext.DeltaData(pyext.Delta{Days: -1, Seconds: 5, Microseconds: 7})); got != "ffffffff0000000500000007" {
		t.Errorf("DeltaData = %s", got)
	}
}

func TestComplex(t *testing.T) {
	c := complex(1.5, -2)
	if got := hex.EncodeToString(pyext.ComplexData(c)); got != "3ff8000000000000c000000000000000" {
		t.Errorf("ComplexData = %s", got)
	}
	if got, err := pyext.ParseComplex(pyext.ComplexData(c)); err != nil || got != c {
		t.Errorf("ParseComplex = %v, %v", got, err)
	}
}

func TestName(t *testing.T) {
	for typ := int8(-1); typ <= 10; typ++ {
		if typ != 0 && pyext.Name(typ) == "" {
			t.Errorf("type %d has no name", typ)
		}
	}
	if pyext.Name(0) != "" || pyext.Name(11) != "" {
		t.Error("types 0 and 11 are named")
	}
}
