package pyproto_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

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
// pickles the value with a global) it must refuse it as unsafe.
var corpus = map[string]struct {
	want     any
	minProto int
	err      error // from Unpickle, at every protocol
	mpErr    error // from ToMsgpack
}{
	"none":  {want: nil},
	"bools": {want: L(true, false)},
	"ints": {want: L(int64(0), int64(1), int64(-1), int64(255), int64(256), int64(65535), int64(65536),
		int64(math.MinInt32), int64(math.MaxInt32), int64(1<<31), int64(1<<40), int64(-1<<40),
		int64(math.MaxInt64), int64(math.MinInt64), uint64(math.MaxUint64))},
	"floats":          {want: L(0.0, 1.5, -2.25, 1e300, math.Inf(1))},
	"strs":            {want: L("", "x", "héllo ✓", strings.Repeat("a", 300))},
	"bytes":           {want: L([]byte{}, []byte{0, 0xff}, []byte(strings.Repeat("y", 300))), minProto: 3},
	"tuple":           {want: T(int64(1), "a", T(int64(2), int64(3)), T())},
	"list":            {want: L(int64(1), L(int64(2), L(int64(3))), L())},
	"dict":            {want: D("k", int64(1<<40), "nested", D("a", L(int64(1), int64(2))), int64(1), "one", T(int64(1), int64(2)), "pair", nil, int64(0))},
	"shared":          {want: L("shared", "shared", L("shared"))},
	"request_put":     {want: T("7fa939083350", "put", T(T(int64(49), "x", []byte("y"), 1.5, nil, true, L(int64(1)), D("k", int64(1<<40)))), D()), minProto: 3},
	"request_get":     {want: T("qm-queue:task", "get", T(), D("timeout", int64(1)))},
	"request_create":  {want: T(nil, "create", T("get_task_queue"), D())},
	"cycle":           {mpErr: pyproto.ErrTooDeep},
	"deep":            {mpErr: pyproto.ErrTooDeep},
	"bigint":          {err: pyproto.ErrUnsupported},
	"set":             {err: pyproto.ErrUnsupported, minProto: 4},
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
			if got, want := show(v), show(tc.want); got != want {
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
		{"set", "\x80\x04\x8f(K\x01\x90.", pyproto.ErrUnsupported, "set"},
		{"frozenset", "\x80\x04(K\x01\x91.", pyproto.ErrUnsupported, "set"},
		{"text INT", "I1\n.", pyproto.ErrUnsupported, "protocol"},
		{"protocol 6", "\x80\x06N.", pyproto.ErrUnsupported, "protocol 6"},
		{"out-of-band", "\x80\x05\x97.", pyproto.ErrUnsupported, "out-of-band"},
		{"huge LONG4", "\x80\x02\x8b\x00\x00\x01\x00" + strings.Repeat("\x01", 65536) + ".", pyproto.ErrUnsupported, "64 bits"},
		{"LONG4 beyond data", "\x80\x02\x8b\xff\xff\xff\x7f.", pyproto.ErrBadPickle, "truncated"},
		{"BINUNICODE8 beyond data", "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", pyproto.ErrBadPickle, "truncated"},
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := pyproto.Unpickle([]byte(tc.in))
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("Unpickle = %s, %v; want %v containing %q", show(v), err, tc.err, tc.text)
			}
		})
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
