package pyproto_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/qm-dev/qm/internal/pyext"
	"github.com/qm-dev/qm/pyproto"
)

// L, T and D build expected values.
func L(items ...any) *pyproto.List { return &pyproto.List{Items: items} }
func T(items ...any) pyproto.Tuple { return pyproto.Tuple(items) }
func D(kv ...any) *pyproto.Dict {
	d := &pyproto.Dict{}
	for i := 0; i < len(kv); i += 2 {
		_ = d.Set(kv[i], kv[i+1]) // an unhashable key shows up as a missing one
	}
	return d
}

// show renders a decoded value unambiguously, tuples apart from lists.
func show(v any) string {
	var b strings.Builder
	var walk func(v any, depth int)
	walk = func(v any, depth int) {
		if depth > 20 {
			b.WriteString("...")
			return
		}
		switch x := v.(type) {
		case nil:
			b.WriteString("None")
		case bool:
			b.WriteString(strconv.FormatBool(x))
		case int64:
			b.WriteString(strconv.FormatInt(x, 10))
		case uint64:
			b.WriteString(strconv.FormatUint(x, 10))
		case float64:
			b.WriteString(strconv.FormatFloat(x, 'g', -1, 64) + "f")
		case string:
			b.WriteString(strconv.Quote(x))
		case []byte:
			b.WriteString("b" + strconv.Quote(string(x)))
		case pyproto.Tuple:
			b.WriteString("(")
			for i, e := range x {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(e, depth+1)
			}
			b.WriteString(",)")
		case *pyproto.List:
			b.WriteString("[")
			for i, e := range x.Items {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(e, depth+1)
			}
			b.WriteString("]")
		case pyproto.Ext:
			if x.Type == pyext.BigInt && len(x.Data) < 64 {
				n, err := pyext.ParseBigInt(x.Data)
				fmt.Fprintf(&b, "int(%v, %v)", n, err)
				break
			}
			fmt.Fprintf(&b, "ext%d(%x)", x.Type, x.Data[:min(len(x.Data), 64)])
		case *pyproto.Set:
			if x.Frozen {
				b.WriteString("frozenset(")
			}
			b.WriteString("{")
			for i, e := range x.Items {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(e, depth+1)
			}
			b.WriteString("}")
			if x.Frozen {
				b.WriteString(")")
			}
		case *pyproto.Dict:
			b.WriteString("{")
			for i, k := range x.Keys {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(k, depth+1)
				b.WriteString(": ")
				walk(x.Values[i], depth+1)
			}
			b.WriteString("}")
		default:
			fmt.Fprintf(&b, "%T(%v)", v, v)
		}
	}
	walk(v, 0)
	return b.String()
}

// corpus is what Unpickle must make of each pickle written by
// testdata/gen.py, at every protocol from minProto; below it (where Python
// pickles the value with a global) it must refuse it as unsafe. For the
// types carried as msgpack extensions, mp is the msgpack ToMsgpack must
// write (mp23 at protocols 2 and 3, which drop a datetime's fold), the
// forms of docs/VALUES.md.
var corpus = map[string]struct {
	want     any
	mp, mp23 string
	minProto int
	err      error // from Unpickle, at every protocol
	mpErr    error // from ToMsgpack
}{
	"none":  {want: nil},
	"bools": {want: L(true, false)},
	"ints": {want: L(int64(0), int64(1), int64(-1), int64(255), int64(256), int64(65535), int64(65536),
		int64(math.MinInt32), int64(math.MaxInt32), int64(1<<31), int64(1<<40), int64(-1<<40),
		int64(math.MaxInt64), int64(math.MinInt64), uint64(math.MaxUint64))},
	"floats":         {want: L(0.0, 1.5, -2.25, 1e300, math.Inf(1))},
	"strs":           {want: L("", "x", "héllo ✓", strings.Repeat("a", 300))},
	"bytes":          {want: L([]byte{}, []byte{0, 0xff}, []byte(strings.Repeat("y", 300)))},
	"tuple":          {want: T(int64(1), "a", T(int64(2), int64(3)), T())},
	"list":           {want: L(int64(1), L(int64(2), L(int64(3))), L())},
	"dict":           {want: D("k", int64(1<<40), "nested", D("a", L(int64(1), int64(2))), int64(1), "one", T(int64(1), int64(2)), "pair", nil, int64(0))},
	"shared":         {want: L("shared", "shared", L("shared"))},
	"request_put":    {want: T("7fa939083350", "put", T(T(int64(49), "x", []byte("y"), 1.5, nil, true, L(int64(1)), D("k", int64(1<<40)))), D())},
	"request_get":    {want: T("qm-queue:task", "get", T(), D("timeout", int64(1)))},
	"request_create": {want: T(nil, "create", T("get_task_queue"), D())},
	"cycle":          {mpErr: pyproto.ErrTooDeep},
	"deep":           {mpErr: pyproto.ErrTooDeep},
	"bigint":         {mp: "c70901400000000000000000"}, // 2**70
	"bigints": {mp: "97" + // 2**64, 2**64+1, -2**64-1, -2**63-1, 10**30, -10**30, 2**2100
		"c70901010000000000000000" + "c70901010000000000000001" + "c70901feffffffffffffffff" + "c70901ff7fffffffffffffff" +
		"c70d010c9f2c9cd04674edea40000000" + "c70d01f360d3632fb98b1215c0000000" + "c8010701" + "10" + strings.Repeat("00", 262)},
	"set":        {mp: "c70302920102"},                                                      // {1, 2}
	"sets":       {mp: "93" + "d40290" + "c7030291a161" + "c70c0292d503910392019202c40178"}, // set(), {"a"}, {(1, (2, b"x")), frozenset({3})}
	"frozensets": {mp: "93" + "d40390" + "d5039101" + "c7050391d5039102"},                   // frozenset(), ({1}), ({frozenset({2})})
	"set_key":    {mp: "81d5039101a36f6e65"},                                                // {frozenset({1}): "one"}
	"bytearrays": {mp: "93" + "c70004" + "d5046162" + "c8019004" + strings.Repeat("00ff", 200)},
	"datetimes": {
		mp: "96" +
			"c70a0707e80102030405000006" + // naive 2024-01-02 03:04:05.000006
			"d7ff00005dc065937d25" + // the same in UTC: a timestamp
			"c70cff00000000fffffff1886e0900" + // 0001-01-01 UTC
			"d807270f0c1f173b3b0f423fffffb2a80058" + // 9999-12-31 23:59:59.999999 -05:30 "X"
			"c70a0707e88b03011e00000000" + // 2024-11-03 01:30, fold 1
			"c70e0707e8010200000000000000001c20", // 2024-01-02 +02:00
		mp23: "96c70a0707e80102030405000006d7ff00005dc065937d25c70cff00000000fffffff1886e0900d807270f0c1f173b3b0f423fffffb2a80058" +
			"c70a0707e80b03011e00000000" + "c70e0707e8010200000000000000001c20",
	},
	"dates": {mp: "93" + "d60507e8021d" + "d60500010101" + "d605270f0c1f"},
	"times": {
		mp:   "94" + "c70606000000000000" + "c70606010203000004" + "c70a06173b3b0f423f00000000" + "c70606810000000000",
		mp23: "94" + "c70606000000000000" + "c70606010203000004" + "c70a06173b3b0f423f00000000" + "c70606010000000000",
	},
	"timedeltas": {mp: "94" + "c70c08000000000000000000000000" + "c70c08ffffffff0000000500000007" +
		"c70c083b9ac9ff0001517f000f423f" + "c70c08c46536010000000000000000"},
	"decimals":        {mp: "95" + "d609312e3530" + "d5092d30" + "c703094e614e" + "c709092d496e66696e697479" + "c7050931452b3330"},
	"complexes":       {mp: "92" + "d80a3ff8000000000000c000000000000000" + "d80a" + strings.Repeat("00", 16)},
	"class":           {mpErr: pyproto.ErrUnsupported},
	"evil_zoneinfo":   {err: pyproto.ErrUnsafePickle},
	"evil_system":     {err: pyproto.ErrUnsafePickle},
	"evil_eval":       {err: pyproto.ErrUnsafePickle},
	"evil_object":     {err: pyproto.ErrUnsafePickle},
	"evil_in_request": {err: pyproto.ErrUnsafePickle},
}

func readCorpus(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/pickles/*.pkl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no pickles in testdata/pickles (run testdata/gen.py): %v", err)
	}
	out := make(map[string][]byte, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".pkl")] = b
	}
	return out
}

func TestUnpickleCorpus(t *testing.T) {
	files := readCorpus(t)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, file := range names {
		t.Run(file, func(t *testing.T) {
			name, p, _ := strings.Cut(file, ".p")
			proto, _ := strconv.Atoi(p)
			tc, ok := corpus[name]
			if !ok {
				t.Fatalf("no expectation for %s", name)
			}
			v, err := pyproto.Unpickle(files[file])
			wantErr := tc.err
			if proto < tc.minProto {
				wantErr = pyproto.ErrUnsafePickle
			}
			if wantErr != nil {
				if !errors.Is(err, wantErr) {
					t.Fatalf("Unpickle = %s, %v; want %v", show(v), err, wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unpickle: %v", err)
			}
			mp, err := pyproto.ToMsgpack(v, 1<<20)
			if tc.mpErr != nil {
				if !errors.Is(err, tc.mpErr) {
					t.Fatalf("ToMsgpack: %v, want %v", err, tc.mpErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ToMsgpack: %v", err)
			}
			if want := tc.mp; want != "" {
				if tc.mp23 != "" && proto < 4 {
					want = tc.mp23
				}
				if got := hex.EncodeToString(mp); got != want {
					t.Fatalf("decoded %s\nas msgpack %s\nwant       %s", show(v), got, want)
				}
			} else if got, want := show(v), show(tc.want); got != want {
				t.Fatalf("decoded\n %s\nwant\n %s", got, want)
			}
			// Through msgpack and back: the same value, tuples as lists.
			back, err := pyproto.Pickle(pyproto.Msgpack(mp))
			if err != nil {
				t.Fatalf("Pickle(msgpack): %v", err)
			}
			v2, err := pyproto.Unpickle(back)
			if err != nil {
				t.Fatalf("Unpickle(Pickle(msgpack)): %v", err)
			}
			mp2, err := pyproto.ToMsgpack(v2, 1<<20)
			if err != nil || string(mp2) != string(mp) {
				t.Fatalf("msgpack round trip changed %x to %x (%v)", mp, mp2, err)
			}
		})
	}
}

// TestUnpickleRefusesBeforeActing: every unsafe opcode is refused when
// it is read, with what it names in the error, and a set too.
func TestUnpickleRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		err  error
		text string
	}{
		{"GLOBAL", "\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.", pyproto.ErrUnsafePickle, `GLOBAL "os.system"`},
		{"GLOBAL protocol 0", "cposix\nsystem\np0\n(Vid\np1\ntp2\nRp3\n.", pyproto.ErrUnsafePickle, `GLOBAL "posix.system"`},
		{"STACK_GLOBAL", "\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02id\x85R.", pyproto.ErrUnsafePickle, `STACK_GLOBAL "os.system"`},
		{"REDUCE alone", "\x80\x04NN\x85R.", pyproto.ErrUnsafePickle, "REDUCE"},
		{"BUILD", "\x80\x04}}b.", pyproto.ErrUnsafePickle, "BUILD"},
		{"INST", "(ios\nsystem\n.", pyproto.ErrUnsafePickle, "INST"},
		{"OBJ", "(N)o.", pyproto.ErrUnsafePickle, "OBJ"},
		{"NEWOBJ", "\x80\x02N)\x81.", pyproto.ErrUnsafePickle, "NEWOBJ"},
		{"NEWOBJ_EX", "\x80\x04N)}\x92.", pyproto.ErrUnsafePickle, "NEWOBJ_EX"},
		{"EXT1", "\x80\x02\x82\x01.", pyproto.ErrUnsafePickle, "EXT1"},
		{"EXT2", "\x80\x02\x83\x01\x00.", pyproto.ErrUnsafePickle, "EXT2"},
		{"EXT4", "\x80\x02\x84\x01\x00\x00\x00.", pyproto.ErrUnsafePickle, "EXT4"},
		{"PERSID", "P1\n.", pyproto.ErrUnsafePickle, "PERSID"},
		{"BINPERSID", "\x80\x02K\x01Q.", pyproto.ErrUnsafePickle, "BINPERSID"},
		{"text INT", "I1\n.", pyproto.ErrUnsupported, "protocol"},
		{"protocol 6", "\x80\x06N.", pyproto.ErrUnsupported, "protocol 6"},
		{"out-of-band", "\x80\x05\x97.", pyproto.ErrUnsupported, "out-of-band"},
		{"LONG4 beyond data", "\x80\x02\x8b\xff\xff\xff\x7f.", pyproto.ErrBadPickle, "truncated"},
		{"BINUNICODE8 beyond data", "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", pyproto.ErrBadPickle, "truncated"},
		{"str not UTF-8", "\x80\x04\x8c\x02a\xff.", pyproto.ErrBadPickle, "not UTF-8"},
		{"unhashable key", "\x80\x04}]Ns.", pyproto.ErrBadPickle, "unhashable"},
		{"append to int", "\x80\x04K\x01Na.", pyproto.ErrBadPickle, "append"},
		{"stack underflow", "\x80\x04\x85.", pyproto.ErrBadPickle, "underflow"},
		{"pop through mark", "\x80\x04N(0.", pyproto.ErrBadPickle, "underflow"},
		{"memo miss", "\x80\x04h\x05.", pyproto.ErrBadPickle, "memo"},
		{"no STOP", "\x80\x04N", pyproto.ErrBadPickle, "STOP"},
		{"two values", "\x80\x04NN.", pyproto.ErrBadPickle, "STOP"},
		{"trailing", "\x80\x04N.x", pyproto.ErrBadPickle, "after STOP"},
		{"empty", "", pyproto.ErrBadPickle, "STOP"},
		{"unknown opcode", "\x80\x04\xff.", pyproto.ErrBadPickle, "0xff"},
		{"frame beyond data", "\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00N.", pyproto.ErrBadPickle, "frame"},

		// The allowlist of reduce.go: only its names, only the shapes
		// Python writes, only values Python would build.
		{"builtins eval", "\x80\x04" + sg("builtins", "eval") + "\x8c\x012\x85R.", pyproto.ErrUnsafePickle, `STACK_GLOBAL "builtins.eval"`},
		{"builtins getattr", "\x80\x02c__builtin__\ngetattr\n.", pyproto.ErrUnsafePickle, `GLOBAL "__builtin__.getattr"`},
		{"other name of an allowed module", "\x80\x04" + sg("datetime", "sys") + ".", pyproto.ErrUnsafePickle, `"datetime.sys"`},
		{"module with a newline", "\x80\x04" + sg("datetime\ndatetime", "") + ".", pyproto.ErrUnsafePickle, "STACK_GLOBAL"},
		{"STACK_GLOBAL of ints", "\x80\x04K\x01K\x02\x93.", pyproto.ErrUnsafePickle, "STACK_GLOBAL"},
		{"GLOBAL cut", "\x80\x02cdatetime", pyproto.ErrUnsafePickle, "GLOBAL"},
		{"REDUCE of a list", "\x80\x04])R.", pyproto.ErrUnsafePickle, "REDUCE of a list"},
		{"REDUCE with a list for arguments", "\x80\x04" + sg("builtins", "set") + "]R.", pyproto.ErrBadPickle, "REDUCE of builtins.set with a list"},
		{"set of an int", "\x80\x04" + sg("builtins", "set") + "K\x01\x85R.", pyproto.ErrUnsafePickle, "builtins.set with arguments (int)"},
		{"set of a list in a list", "\x80\x04" + sg("builtins", "set") + "](]e\x85R.", pyproto.ErrBadPickle, "unhashable"},
		{"set holding a list", "\x80\x04\x8f(]\x90.", pyproto.ErrBadPickle, "unhashable"},
		{"frozenset holding a set", "\x80\x04(\x8f\x91.", pyproto.ErrBadPickle, "unhashable"},
		{"frozenset holding a bytearray", "\x80\x05(\x96\x00\x00\x00\x00\x00\x00\x00\x00\x91.", pyproto.ErrBadPickle, "unhashable"},
		{"ADDITEMS to a frozenset", "\x80\x04(\x91(K\x01\x90.", pyproto.ErrBadPickle, "add items to a frozenset"},
		{"ADDITEMS to a list", "\x80\x04](K\x01\x90.", pyproto.ErrBadPickle, "add items to a list"},
		{"bytes of an int", "\x80\x02c__builtin__\nbytes\nK\x01\x85R.", pyproto.ErrUnsafePickle, "__builtin__.bytes with arguments (int)"},
		{"encode to utf-8", "\x80\x02c_codecs\nencode\n\x8c\x01a\x8c\x05utf-8\x86R.", pyproto.ErrUnsafePickle, "_codecs.encode with arguments (str, str)"},
		{"encode beyond latin1", "\x80\x02c_codecs\nencode\n\x8c\x02\xc4\x80\x8c\x06latin1\x86R.", pyproto.ErrBadPickle, "U+0100"},
		{"bytearray of a str", "\x80\x04" + sg("builtins", "bytearray") + "\x8c\x01a\x85R.", pyproto.ErrUnsafePickle, "bytearray with arguments (str)"},
		{"complex of ints", "\x80\x04" + sg("builtins", "complex") + "K\x01K\x02\x86R.", pyproto.ErrUnsafePickle, "complex with arguments (int, int)"},
		{"Decimal of a float", "\x80\x04" + sg("decimal", "Decimal") + "G?\xf8\x00\x00\x00\x00\x00\x00\x85R.", pyproto.ErrUnsafePickle, "Decimal with arguments (float)"},
		{"Decimal not as str writes it", "\x80\x04" + sg("decimal", "Decimal") + "\x8c\x031e5\x85R.", pyproto.ErrBadPickle, `"1e5"`},
		{"Decimal of spaces", "\x80\x04" + sg("decimal", "Decimal") + "\x8c\x03 1 \x85R.", pyproto.ErrBadPickle, "Decimal"},
		{"timedelta of two ints", "\x80\x04" + sg("datetime", "timedelta") + "K\x01K\x02\x86R.", pyproto.ErrUnsafePickle, "timedelta with arguments (int, int)"},
		{"timedelta not normalized", "\x80\x04" + sg("datetime", "timedelta") + "K\x00J\x80Q\x01\x00K\x00\x87R.", pyproto.ErrBadPickle, "no timedelta(0, 86400, 0)"},
		{"timedelta of a huge int", "\x80\x04" + sg("datetime", "timedelta") + "\x8a\x05\x00\x00\x00\x00\x01K\x00K\x00\x87R.", pyproto.ErrBadPickle, "out of range"},
		{"date of 5 bytes", "\x80\x04" + sg("datetime", "date") + "C\x05\x07\xe8\x01\x02\x00\x85R.", pyproto.ErrUnsafePickle, "date with arguments (bytes)"},
		{"date of ints", "\x80\x04" + sg("datetime", "date") + "M\xe8\x07K\x01K\x02\x87R.", pyproto.ErrUnsafePickle, "date with arguments (int, int, int)"},
		{"date with a tzinfo", "\x80\x04" + sg("datetime", "date") + "C\x04\x07\xe8\x01\x02N\x86R.", pyproto.ErrUnsafePickle, "date with arguments (bytes, NoneType)"},
		{"February 30", "\x80\x04" + sg("datetime", "date") + "C\x04\x07\xe8\x02\x1e\x85R.", pyproto.ErrBadPickle, "no date 2024-02-30"},
		{"month 13", "\x80\x04" + sg("datetime", "datetime") + "C\x0a\x07\xe8\x0d\x02\x03\x04\x05\x00\x00\x06\x85R.", pyproto.ErrBadPickle, "no date"},
		{"hour 24", "\x80\x04" + sg("datetime", "time") + "C\x06\x18\x00\x00\x00\x00\x00\x85R.", pyproto.ErrBadPickle, "no time of day"},
		{"tzinfo a timedelta", "\x80\x04" + sg("datetime", "datetime") + "C\x0a\x07\xe8\x01\x02\x03\x04\x05\x00\x00\x06" +
			sg("datetime", "timedelta") + "K\x00K\x00K\x00\x87R\x86R.", pyproto.ErrUnsafePickle, "tzinfo of type datetime.timedelta"},
		{"tzinfo an int", "\x80\x04" + sg("datetime", "time") + "C\x06\x01\x00\x00\x00\x00\x00K\x01\x86R.", pyproto.ErrUnsafePickle, "tzinfo of type int"},
		{"timezone of an int", "\x80\x04" + sg("datetime", "timezone") + "K\x01\x85R.", pyproto.ErrUnsafePickle, "timezone with arguments (int)"},
		{"timezone of a day", "\x80\x04" + sg("datetime", "timezone") + sg("datetime", "timedelta") + "K\x01K\x00K\x00\x87R\x85R.", pyproto.ErrBadPickle, "offset"},
		{"timezone of a microsecond", "\x80\x04" + sg("datetime", "timezone") + sg("datetime", "timedelta") + "K\x00K\x00K\x01\x87R\x85R.", pyproto.ErrUnsupported, "fraction of a second"},
		{"timezone named by an int", "\x80\x04" + sg("datetime", "timezone") + sg("datetime", "timedelta") + "K\x00K\x00K\x00\x87RK\x01\x86R.", pyproto.ErrUnsafePickle, "timezone with arguments (datetime.timedelta, int)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := pyproto.Unpickle([]byte(tc.in))
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("Unpickle = %s, %v; want %v containing %q", show(v), err, tc.err, tc.text)
			}
		})
	}
}

// sg is a STACK_GLOBAL of module.name (each name under 256 bytes).
func sg(module, name string) string {
	return "\x8c" + string([]byte{byte(len(module))}) + module + "\x8c" + string([]byte{byte(len(name))}) + name + "\x93"
}

// TestUnpickleHugeInt: an int is bounded by the pickle that holds it
// (and so by the message size limit): LONG4 reads its length, checks it
// against the bytes left, and only then copies them.
func TestUnpickleHugeInt(t *testing.T) {
	v, err := pyproto.Unpickle([]byte("\x80\x02\x8b\x00\x00\x01\x00" + strings.Repeat("\x01", 65536) + "."))
	if x, ok := v.(pyproto.Ext); err != nil || !ok || x.Type != pyext.BigInt || len(x.Data) != 65536 || x.Data[0] != 1 {
		t.Fatalf("Unpickle of a LONG4 of 64 KiB = %s, %v", show(v), err)
	}
	if _, err := pyproto.Unpickle([]byte("\x80\x02\x8b\xff\xff\xff\x7f\x01.")); !errors.Is(err, pyproto.ErrBadPickle) {
		t.Fatalf("Unpickle of a LONG4 of 2 GiB with a byte = %v", err)
	}
}

// billionLaughs builds a pickle of n nested lists, each holding the one
// below twice: a few bytes per level, 2**n leaves once expanded.
func billionLaughs(n int) []byte {
	b := []byte("\x80\x04\x8c\x03lol\x940") // memo 0
	for i := range n {
		b = append(b, ']', '(', 'h', byte(i), 'h', byte(i), 'e', 0x94, '0') // [memo i, memo i] as memo i+1
	}
	return append(b[:len(b)-1], '.')
}

func TestToMsgpackBoundsSharedReferences(t *testing.T) {
	v, err := pyproto.Unpickle(billionLaughs(60))
	if err != nil {
		t.Fatalf("Unpickle: %v", err)
	}
	if _, err := pyproto.ToMsgpack(v, 1<<20); !errors.Is(err, pyproto.ErrTooLarge) {
		t.Fatalf("ToMsgpack of 2**60 leaves: %v, want ErrTooLarge", err)
	}
	v, err = pyproto.Unpickle(billionLaughs(4))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := pyproto.ToMsgpack(v, 1<<20); err != nil || len(b) != 15*1+16*4 {
		t.Fatalf("ToMsgpack of 16 leaves: %d bytes, %v", len(b), err)
	}
}

func TestDictKeysAsPython(t *testing.T) {
	// {1: 'a', True: 'b', 1.0: 'c'} is {1: 'c'} in Python.
	d := D(int64(1), "a", true, "b", 1.0, "c", "1", "s", []byte("1"), "b")
	if got := show(d); got != `{1: "c", "1": "s", b"1": "b"}` {
		t.Fatalf("dict = %s", got)
	}
	if err := d.Set(L(), 1); !errors.Is(err, pyproto.ErrBadPickle) {
		t.Fatalf("list key: %v", err)
	}
	if v, ok := d.Get(true); !ok || v != "c" {
		t.Fatalf("Get(True) = %v, %v", v, ok)
	}
}
