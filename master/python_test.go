package master_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// pyPrelude connects a classic BaseManager client to the master at
// sys.argv[1] with the key sys.argv[2]; task and result are the proxies
// of queues "tasks" and "results".
const pyPrelude = `
import os, queue, sys, threading, time
from multiprocessing import AuthenticationError
from multiprocessing.managers import BaseManager, RemoteError
class QueueManager(BaseManager): pass
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')
host, port = sys.argv[1].rsplit(':', 1)
ADDR, KEY = (host, int(port)), sys.argv[2].encode()
def manager():
    m = QueueManager(address=ADDR, authkey=KEY)
    m.connect()
    return m
`

const pyTimeout = 60 * time.Second

// forEachPython runs f, in parallel, once per interpreter, each against
// a master of its own started with cfg.
func forEachPython(t *testing.T, cfg master.Config, f func(t *testing.T, py qmtest.Python, addr string)) {
	t.Helper()
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			addr, _ := qmtest.StartMaster(t, cfg)
			f(t, py, addr)
		})
	}
}

func runPy(t *testing.T, py qmtest.Python, addr, script string, args ...string) string {
	t.Helper()
	return py.Run(t, pyTimeout, pyPrelude+script, append([]string{addr, string(qmtest.Authkey)}, args...)...)
}

func putInts(t *testing.T, c *wire.Client, q string, n int, opts wire.PutOptions) []uint64 {
	t.Helper()
	items := make([]any, n)
	for i := range items {
		items[i] = i + 1
	}
	ids, err := c.Put(context.Background(), q, items, opts)
	if err != nil {
		t.Fatalf("put: %v", err)
	}
	return ids
}

// getValues takes n tasks from q for good and returns their values.
func getValues(t *testing.T, c *wire.Client, q string, n int) []any {
	t.Helper()
	var out []any
	for len(out) < n {
		ts, err := c.Get(context.Background(), q, wire.GetOptions{Max: n - len(out), Timeout: 5 * time.Second, NoAck: true})
		if err != nil {
			t.Fatalf("get %s: %v", q, err)
		}
		if len(ts) == 0 {
			t.Fatalf("get %s: %d of %d values, then nothing", q, len(out), n)
		}
		for _, task := range ts {
			v, err := task.Value()
			if err != nil {
				t.Fatalf("value of task %d: %v", task.ID, err)
			}
			out = append(out, v)
		}
	}
	return out
}

func stats(t *testing.T, c *wire.Client, q string) wire.QueueStats {
	t.Helper()
	st, err := c.Stats(context.Background(), q)
	if err != nil || len(st) != 1 {
		t.Fatalf("stats %s: %v, %v", q, st, err)
	}
	return st[0]
}

// TestPythonWorkerLoop: the classic worker squares what a Go producer put.
func TestPythonWorkerLoop(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		putInts(t, c, "tasks", 20, wire.PutOptions{})
		out := runPy(t, py, addr, `
m = manager()
task = m.get_task_queue(); result = m.get_result_queue()
done = 0
while True:
    try:
        n = task.get(timeout=0.5)
    except queue.Empty:
        break
    result.put(n * n)
    done += 1
print(done)
`)
		if strings.TrimSpace(out) != "20" {
			t.Fatalf("python handled %q tasks, want 20", out)
		}
		got := getValues(t, c, "results", 20)
		for i, v := range got {
			if want := int64((i + 1) * (i + 1)); v != want {
				t.Fatalf("result %d = %v, want %d", i, v, want)
			}
		}
		if st := stats(t, c, "tasks"); st.Ready != 0 || st.Leased != 0 || st.Done != 20 {
			t.Errorf("task queue after the run: %+v", st)
		}
	})
}

// TestPythonGetTimeout: an empty queue raises queue.Empty after the
// timeout, at once for get_nowait, get(False) and get(timeout=0); a
// negative timeout is a ValueError, as with a Python master.
func TestPythonGetTimeout(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
m = manager()
task = m.get_task_queue()
def check(name, f, lo, hi, exc=queue.Empty):
    t0 = time.monotonic()
    try:
        f()
    except exc as e:
        d = time.monotonic() - t0
        assert type(e) is exc, (name, type(e))
        assert lo <= d < hi, (name, d)
        print(name, 'ok')
    else:
        print(name, 'no exception')
check('timeout', lambda: task.get(timeout=0.3), 0.29, 3)
check('kw block', lambda: task.get(block=True, timeout=0.1), 0.09, 3)
check('nowait', task.get_nowait, 0, 1)
check('noblock', lambda: task.get(False), 0, 1)
check('zero', lambda: task.get(timeout=0), 0, 1)
check('negative', lambda: task.get(timeout=-1), 0, 1, ValueError)
print(task.qsize(), task.empty(), task.full())
`)
		want := "timeout ok\nkw block ok\nnowait ok\nnoblock ok\nzero ok\nnegative ok\n0 True False\n"
		if out != want {
			t.Fatalf("python printed\n%s\nwant\n%s", out, want)
		}
	})
}

// TestPythonValues: every value type goes from Python to a Go client and
// from a Go client to Python; what Go cannot carry stays exact between
// Python clients.
func TestPythonValues(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		goValues := []any{
			int64(0), int64(-1), int64(1 << 40), int64(math.MinInt64), uint64(math.MaxUint64), 1.5, "h\u00e9llo",
			[]byte{0, 0xff}, true, false, nil, []any{int64(1), "a"}, []any{int64(1), []any{int64(2)}},
			map[string]any{"k": int64(1 << 40), "n": map[string]any{"x": []any{nil}}},
		}
		if _, err := c.Put(context.Background(), "back", goValues, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		out := runPy(t, py, addr, `
QueueManager.register('get_back_queue')
QueueManager.register('get_py_queue')
m = manager()
task = m.get_task_queue(); back = m.get_back_queue()
values = [0, -1, 2**40, -2**63, 2**64 - 1, 1.5, 'h\u00e9llo', b'\x00\xff', True, False, None,
          (1, 'a'), [1, [2]], {'k': 2**40, 'n': {'x': [None]}}]
for v in values:
    task.put(v)
for v in values:
    got = back.get(timeout=5)
    want = list(v) if isinstance(v, tuple) else v
    assert got == want and type(got) is type(want), (got, want)
# Between Python clients: dict keys of any hashable plain type, and sizes.
exotic = [{1: 'one', (1, (2, b'x')): 'pair', None: 0, 1.5: True, '': ''}, 'x' * 100000, b'y' * 100000, [[[[]]]]]
py = m.get_py_queue()
for v in exotic:
    py.put(v)
    got = py.get(timeout=5)
    assert got == v, (got, v)
print('ok')
`)
		if strings.TrimSpace(out) != "ok" {
			t.Fatalf("python: %s", out)
		}
		ts, err := c.Get(context.Background(), "tasks", wire.GetOptions{Max: len(goValues), Timeout: 5 * time.Second, NoAck: true})
		if err != nil || len(ts) != len(goValues) {
			t.Fatalf("get: %d tasks, %v", len(ts), err)
		}
		for i, task := range ts {
			got, err := task.Value()
			if err != nil {
				t.Fatalf("value %d: %v", i, err)
			}
			want := goValues[i]
			if _, ok := want.([]byte); ok && task.Payload[0] != 0xc4 {
				t.Errorf("bytes sent as %x, want msgpack bin", task.Payload)
			}
			if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) {
				t.Errorf("value %d from python = %#v, want %#v", i, got, want)
			}
		}
	})
}

// pyRichValues are Python values msgpack has no type for (docs/VALUES.md),
// each as the Python expression and as what wire.DecodeValue gives a Go
// client, shown by goShow.
var pyRichValues = []struct{ py, go_ string }{
	{"2**64 + 1", "*big.Int 18446744073709551617"},
	{"-2**64 - 1", "*big.Int -18446744073709551617"},
	{"10**30", "*big.Int 1000000000000000000000000000000"},
	{"-10**30", "*big.Int -1000000000000000000000000000000"},
	{"-2**63 - 1", "*big.Int -9223372036854775809"},
	{"2**2100 % 10**12 + 2**2100", "*big.Int " + new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 2100), new(big.Int).Mod(new(big.Int).Lsh(big.NewInt(1), 2100), big.NewInt(1e12))).String()},
	{"{1, 2}", "wire.Set{int64 1, int64 2}"},
	{"set()", "wire.Set{}"},
	{"frozenset({1, 3})", "wire.FrozenSet{int64 1, int64 3}"},
	{"frozenset()", "wire.FrozenSet{}"},
	{"{(1, (2, b'x')), frozenset({3}), 'a'}", "wire.Set{[]interface {}{int64 1, []interface {}{int64 2, []uint8 [120]}}, string a, wire.FrozenSet{int64 3}}"},
	{"{frozenset({1}): 'one'}", "error"}, // a Go client reads scalar keys only
	{"{1: 'a'}", "map[interface {}]interface {} map[1:a]"},
	{"bytearray(b'\\x00\\xff')", "wire.ByteArray [0 255]"},
	{"bytearray()", "wire.ByteArray []"},
	{"dt.datetime(2024, 1, 2, 3, 4, 5, 6)", "wire.DateTime 2024-01-02T03:04:05.000006"},
	{"dt.datetime(2024, 11, 3, 1, 30, fold=1)", "wire.DateTime 2024-11-03T01:30:00 fold 1"},
	{"dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)", "time.Time 2024-01-02 03:04:05.000006 +0000 UTC"},
	{"dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc)", "time.Time 0001-01-01 00:00:00 +0000 UTC"},
	{"dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-5, minutes=-30), 'X'))", "time.Time 9999-12-31 23:59:59.999999 -0530 X"},
	{"dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))", "time.Time 2024-01-02 00:00:00 +0200 +0200"},
	{"dt.date(2024, 2, 29)", "wire.Date 2024-02-29"},
	{"dt.date.max", "wire.Date 9999-12-31"},
	{"dt.time(1, 2, 3, 4)", "wire.Time 01:02:03.000004"},
	{"dt.time(23, 59, tzinfo=dt.timezone(dt.timedelta(hours=2), 'CEST'))", "wire.Time 23:59:00+02:00"},
	{"dt.timedelta(days=-1, seconds=5, microseconds=7)", "wire.TimeDelta -86394.999993"},
	{"dt.timedelta.max", "wire.TimeDelta 86399999999999.999999"},
	{"decimal.Decimal('1.50')", "wire.Decimal 1.50"},
	{"decimal.Decimal('-0')", "wire.Decimal -0"},
	{"decimal.Decimal('-Infinity')", "wire.Decimal -Infinity"},
	{"decimal.Decimal('1E+30')", "wire.Decimal 1E+30"},
	{"complex(1.5, -2)", "complex128 (1.5-2i)"},
	{"0j", "complex128 (0+0i)"},
	{"[2**100, {'k': {1}}, [dt.date(2024, 1, 1), bytearray(b'x')]]",
		"[]interface {}{*big.Int 1267650600228229401496703205376, map[string]interface {}{k: wire.Set{int64 1}}, []interface {}{wire.Date 2024-01-01, wire.ByteArray [120]}}"},
}

// goShow renders a value DecodeValue gave with its types, a set's
// elements sorted (Python's order depends on its hashes).
func goShow(v any) string {
	items := func(xs []any, sorted bool) string {
		s := make([]string, len(xs))
		for i, x := range xs {
			s[i] = goShow(x)
		}
		if sorted {
			slices.Sort(s)
		}
		return strings.Join(s, ", ")
	}
	switch x := v.(type) {
	case []any:
		return "[]interface {}{" + items(x, false) + "}"
	case wire.Set:
		return "wire.Set{" + items(x, true) + "}"
	case wire.FrozenSet:
		return "wire.FrozenSet{" + items(x, true) + "}"
	case map[string]any:
		keys := slices.Sorted(maps.Keys(x))
		s := make([]string, len(keys))
		for i, k := range keys {
			s[i] = k + ": " + goShow(x[k])
		}
		return "map[string]interface {}{" + strings.Join(s, ", ") + "}"
	case wire.DateTime:
		if x.Fold != 0 {
			return fmt.Sprintf("%T %v fold %d", x, x, x.Fold)
		}
	case time.Time:
		return fmt.Sprintf("%T %s", x, x.Format("2006-01-02 15:04:05.999999999 -0700 MST"))
	}
	return fmt.Sprintf("%T %s", v, fmt.Sprint(v))
}

// TestPythonRichValues: the Python values msgpack has no type for come
// back to Python equal and of the same type (an aware datetime with its
// offset, timezone name and fold), reach a Go client as the values of
// docs/VALUES.md, and a Go client's wire types reach Python as the Python
// types. No pickle is ever executed: the master reads them as data, and
// refuses a datetime whose tzinfo is a class of the script's own.
func TestPythonRichValues(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		fromGo := []any{
			wire.Set{int64(1), int64(2)}, wire.FrozenSet{"a"}, wire.ByteArray("ab"), wire.Decimal("-1.50E+3"),
			wire.Date{Year: 2024, Month: 2, Day: 29},
			wire.DateTime{Year: 2024, Month: 11, Day: 3, Hour: 1, Minute: 30, Fold: 1},
			wire.Time{Hour: 1, Minute: 2, Micros: 3, Zone: time.FixedZone("CET", 3600)},
			wire.TimeDelta{Days: -1, Seconds: 5, Micros: 7},
			time.Date(2024, 1, 2, 3, 4, 5, 6000, time.UTC),
			time.Date(2024, 1, 2, 3, 4, 5, 0, time.FixedZone("", 7200)), // a time.Time crosses as an instant, in UTC
			map[string]any{"s": wire.Set{wire.FrozenSet{int64(1)}}, "t": []any{wire.Date{Year: 1, Month: 1, Day: 1}}},
			new(big.Int).Lsh(big.NewInt(-1), 100), complex(0.5, 1),
			map[any]any{int64(1): "a", nil: true, 2.5: int64(3)},
		}
		if _, err := c.Put(context.Background(), "fromgo", fromGo, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		exprs := make([]string, len(pyRichValues))
		for i, v := range pyRichValues {
			exprs[i] = v.py
		}
		out := runPy(t, py, addr, `
import datetime as dt, decimal
QueueManager.register('get_rich_queue')
QueueManager.register('get_py_queue')
QueueManager.register('get_fromgo_queue')
m = manager()
rich = m.get_rich_queue(); pyq = m.get_py_queue(); fromgo = m.get_fromgo_queue()
def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (set, frozenset)):
        return a == b and all(any(same(x, y) for y in b) for x in a)
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and repr(a) == repr(b) and a.fold == b.fold  # offset, name, fold
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return a == b
values = [`+strings.Join(exprs, ",\n          ")+`]
for v in values:
    pyq.put(v)
    got = pyq.get(timeout=5)
    assert same(got, v), (got, v)
    rich.put(v)
utc = dt.timezone.utc
want = [{1, 2}, frozenset({'a'}), bytearray(b'ab'), decimal.Decimal('-1.50E+3'), dt.date(2024, 2, 29),
        dt.datetime(2024, 11, 3, 1, 30, fold=1), dt.time(1, 2, 0, 3, tzinfo=dt.timezone(dt.timedelta(hours=1), 'CET')),
        dt.timedelta(days=-1, seconds=5, microseconds=7), dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=utc),
        dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=utc), {'s': {frozenset({1})}, 't': [dt.date(1, 1, 1)]},
        -2**100, complex(0.5, 1), {1: 'a', None: True, 2.5: 3}]
for w in want:
    got = fromgo.get(timeout=5)
    assert same(got, w), (got, w)
class MyTZ(dt.tzinfo):
    def utcoffset(self, d):
        return dt.timedelta(hours=1)
try:
    pyq.put(dt.datetime(2024, 1, 1, tzinfo=MyTZ()))
except RemoteError as e:
    assert 'refused pickle' in str(e) and 'MyTZ' in str(e), str(e)
else:
    raise AssertionError('a datetime with a tzinfo of a class of its own was taken')
print('ok')
`)
		if strings.TrimSpace(out) != "ok" {
			t.Fatalf("python: %s", out)
		}
		ts, err := c.Get(context.Background(), "rich", wire.GetOptions{Max: len(pyRichValues), Timeout: 5 * time.Second, NoAck: true})
		if err != nil || len(ts) != len(pyRichValues) {
			t.Fatalf("get: %d tasks, %v", len(ts), err)
		}
		for i, task := range ts {
			got := "error"
			if v, err := task.Value(); err == nil {
				got = goShow(v)
			}
			if want := pyRichValues[i].go_; got != want {
				t.Errorf("%s reached Go as\n%s\nwant\n%s", pyRichValues[i].py, got, want)
			}
		}
	})
}

// TestPythonWrongAuthkey: AuthenticationError in Python; the master goes on.
func TestPythonWrongAuthkey(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := py.Run(t, pyTimeout, pyPrelude+`
try:
    manager()
except AuthenticationError as e:
    print('AuthenticationError', e)
`, addr, "wrong-key")
		if !strings.HasPrefix(out, "AuthenticationError") {
			t.Fatalf("python with a wrong key: %q", out)
		}
		if out := runPy(t, py, addr, "print(manager().get_task_queue().qsize())"); out != "0\n" {
			t.Fatalf("python with the key: %q", out)
		}
	})
}

// TestPythonManyClients: processes of several threads each (a connection
// per thread) drain one queue together; every task is taken once.
func TestPythonManyClients(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		const n = 300
		putInts(t, c, "tasks", n, wire.PutOptions{})
		const script = `
m = manager()
task = m.get_task_queue(); result = m.get_result_queue()
counts = []
def work():
    k = 0
    while True:
        try:
            x = task.get(timeout=0.5)
        except queue.Empty:
            break
        result.put(x)
        k += 1
    counts.append(k)
ts = [threading.Thread(target=work) for _ in range(4)]
for th in ts: th.start()
for th in ts: th.join()
print(sum(counts))
`
		outs := make(chan string, 3)
		for range 3 {
			go func() {
				cmd := py.Command(t, pyTimeout, pyPrelude+script, addr, string(qmtest.Authkey))
				b, err := cmd.CombinedOutput()
				if err != nil {
					b = fmt.Appendf(b, "\n%v", err)
				}
				outs <- string(b)
			}()
		}
		total := 0
		for range 3 {
			out := <-outs
			var k int
			if _, err := fmt.Sscan(out, &k); err != nil {
				t.Fatalf("python: %s", out)
			}
			total += k
		}
		if total != n {
			t.Fatalf("python processes took %d tasks, want %d", total, n)
		}
		got := getValues(t, c, "results", n)
		seen := map[any]bool{}
		for _, v := range got {
			if seen[v] {
				t.Fatalf("task %v delivered twice", v)
			}
			seen[v] = true
		}
	})
}

// TestPythonRefusesCode: a value whose unpickling would run a command is
// refused with a clear error, the command never runs, and the connection
// serves on. So is such a pickle in place of a whole request.
func TestPythonRefusesCode(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		marker := filepath.Join(t.TempDir(), "pwned")
		out := runPy(t, py, addr, `
from multiprocessing.connection import Client
class Evil:
    def __reduce__(self):
        return (os.system, ('touch ' + sys.argv[3],))
m = manager()
task = m.get_task_queue()
try:
    task.put(Evil())
except RemoteError as e:
    print('refused:', 'refused pickle' in str(e), 'system' in str(e))
task.put(7)
print(task.get(timeout=5))
c = Client(ADDR, authkey=KEY)
c.send(Evil())
kind, text = c.recv()
print(kind, 'refused pickle' in text)
c.send((None, 'dummy', (), {}))
print(c.recv())
`, marker)
		want := "refused: True True\n7\n#TRACEBACK True\n('#RETURN', None)\n"
		if out != want {
			t.Errorf("python printed\n%s\nwant\n%s", out, want)
		}
		if _, err := os.Stat(marker); !os.IsNotExist(err) {
			t.Fatalf("the refused pickle's command ran: %v", err)
		}
	})
}

// A Python put of a value nested deeper than a get can hand out is
// refused, saying so, and nothing is queued; one within the bound goes
// to a native worker. A result too deep for its result's map is refused
// as a result, and the task waits for one that fits.
func TestPythonPutTooDeep(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		ids := putInts(t, c, "work", 1, wire.PutOptions{ReplyTo: "replies"})
		out := runPy(t, py, addr, `
def nest(k):
    v = 1
    for _ in range(k):
        v = [v]
    return v
m = manager()
task = m.get_task_queue()
try:
    task.put(nest(int(sys.argv[3]) + 1))
except RemoteError as e:
    print('refused:', 'item 1 nests more than ' + sys.argv[3] in str(e))
task.put(nest(int(sys.argv[3])))
print(task.qsize())
QueueManager.register('get_work_queue')
QueueManager.register('get_replies_queue')
m = manager()
work, replies = m.get_work_queue(), m.get_replies_queue()
work.get(timeout=5)
try:
    replies.put(nest(int(sys.argv[4]) + 1))
except RemoteError as e:
    print('result refused:', 'result nests more than ' + sys.argv[4] in str(e))
replies.put(nest(int(sys.argv[4])))
`, strconv.Itoa(wire.MaxPayloadDepth), strconv.Itoa(wire.MaxResultDepth))
		if want := "refused: True\n1\nresult refused: True\n"; out != want {
			t.Fatalf("python printed\n%s\nwant\n%s", out, want)
		}
		w := qmtest.Dial(t, addr, "worker")
		ts, err := w.Get(ctxFor(t, 10*time.Second), "tasks", wire.GetOptions{Timeout: time.Second})
		if err != nil || len(ts) != 1 || wire.CheckDepth(ts[0].Payload, wire.MaxPayloadDepth) != nil || wire.CheckDepth(ts[0].Payload, wire.MaxPayloadDepth-1) == nil {
			t.Fatalf("a native worker's get: %d tasks, %v; want the task %d deep", len(ts), err, wire.MaxPayloadDepth)
		}
		rs, err := c.Get(ctxFor(t, 10*time.Second), "replies", wire.GetOptions{Max: 2, Timeout: time.Second, NoAck: true})
		if err != nil || len(rs) != 1 {
			t.Fatalf("replies: %d, %v; want the one result that fit", len(rs), err)
		}
		if r, err := wire.DecodeResult(rs[0].Payload); err != nil || r.TaskID != ids[0] || r.Error != "" || wire.CheckDepth(r.Value, wire.MaxResultDepth) != nil {
			t.Fatalf("the result: %+v, %v", r, err)
		}
	})
}

// TestPythonTypeids: get_<name>_queue serves <name>, the classic
// get_task_queue and get_result_queue serve tasks and results, PyTypeIDs
// maps any typeid (a classic one too), and an unknown typeid raises
// RemoteError naming a KeyError.
func TestPythonTypeids(t *testing.T) {
	cfg := master.Config{PyTypeIDs: map[string]string{"get_task_queue": "inbox", "jobs": "job-queue"}}
	forEachPython(t, cfg, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
QueueManager.register('jobs')
QueueManager.register('get_other_queue')
QueueManager.register('bogus')
m = manager()
m.get_task_queue().put('to inbox')
m.get_result_queue().put('to results')
m.jobs().put('to job-queue')
m.get_other_queue().put('to other')
try:
    m.bogus()
except RemoteError as e:
    print("KeyError: 'bogus'" in str(e), '--py-typeid' in str(e))
`)
		if out != "True True\n" {
			t.Fatalf("python: %q", out)
		}
		c := qmtest.Dial(t, addr, "producer")
		for q, want := range map[string]string{"inbox": "to inbox", "results": "to results", "job-queue": "to job-queue", "other": "to other"} {
			if got := getValues(t, c, q, 1); got[0] != want {
				t.Errorf("queue %s holds %v, want %q", q, got[0], want)
			}
		}
	})
}

// TestPythonClientListed: a Python client shows in the client list while
// connected, with role python and its process name.
func TestPythonClientListed(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "admin")
		cmd := py.Command(t, pyTimeout, pyPrelude+`
m = manager()
task = m.get_task_queue()  # its thread's connection lives as long as a proxy does
task.qsize()
print('ready', flush=True)
sys.stdin.read()
`, addr, string(qmtest.Authkey))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
			t.Fatalf("python: %q", line)
		}
		pythons := func() []wire.ClientInfo {
			cs, err := c.Clients(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return slices.DeleteFunc(cs, func(ci wire.ClientInfo) bool { return ci.Role != "python" })
		}
		if ps := pythons(); len(ps) != 1 || ps[0].Name != "MainProcess" {
			t.Fatalf("python clients listed: %+v", ps)
		}
		stdin.Close()
		_, _ = io.Copy(io.Discard, stdout)
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if ps := pythons(); len(ps) != 0 {
				return fmt.Errorf("still listed after python exited: %+v", ps)
			}
			return nil
		})
	})
}

// TestPythonBlockedGetEndsWithClient: a get blocked without a timeout
// stops waiting when its Python process dies, and takes no later task.
func TestPythonBlockedGetEndsWithClient(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		cmd := py.Command(t, pyTimeout, pyPrelude+"manager().get_task_queue().get()", addr, string(qmtest.Authkey))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		qmtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
			if st, err := c.Stats(context.Background(), "tasks"); err != nil || len(st) != 1 || st[0].Consumers != 1 {
				return fmt.Errorf("no blocked get: %+v, %v", st, err)
			}
			return nil
		})
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		qmtest.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			if st := stats(t, c, "tasks"); st.Consumers != 0 {
				return fmt.Errorf("get still blocked after python died: %+v", st)
			}
			return nil
		})
		putInts(t, c, "tasks", 1, wire.PutOptions{})
		if got := getValues(t, c, "tasks", 1); got[0] != int64(1) {
			t.Fatalf("got %v", got)
		}
	})
}

// TestPythonResultsToReplyTo: a Python worker's put after taking a task
// that names a reply queue publishes that task's result there, as a
// wire.Result, so a producer such as qmaster map gets it; a worker that
// takes several tasks before it puts their results answers them in order.
func TestPythonResultsToReplyTo(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		ids := putInts(t, c, "tasks", 5, wire.PutOptions{ReplyTo: "replies"})
		runPy(t, py, addr, `
m = manager()
task = m.get_task_queue(); result = m.get_result_queue()
for _ in range(2):
    n = task.get(timeout=5)
    result.put(n * n)
# A batch: three tasks, then their results, in the order they came.
batch = [task.get(timeout=5) for _ in range(3)]
for n in batch:
    result.put(n * n)
`)
		ts, err := c.Get(context.Background(), "replies", wire.GetOptions{Max: 5, Timeout: 5 * time.Second, NoAck: true})
		if err != nil || len(ts) != 5 {
			t.Fatalf("replies: %d, %v", len(ts), err)
		}
		for i, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatal(err)
			}
			v, err := wire.DecodeValue(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			want := int64((i + 1) * (i + 1))
			if r.TaskID != ids[i] || v != want || r.Attempt != 1 || !strings.HasPrefix(r.Worker, "MainProcess@127.0.0.1:") || r.Error != "" {
				t.Errorf("result %d = %+v value %v; want task %d value %d", i, r, v, ids[i], want)
			}
		}
		if st := stats(t, c, "results"); st.Ready != 0 {
			t.Errorf("results also went to the queue named by the put: %+v", st)
		}
	})
}

// TestPythonReadsWorkerResults: results published by native workers reach
// a Python client as their values; a failed one raises RemoteError.
func TestPythonReadsWorkerResults(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		ok, _ := wire.Encode(wire.Result{TaskID: 1, Worker: "w1", Attempt: 1, Value: []byte{0x31}})
		failed, _ := wire.Encode(wire.Result{TaskID: 2, Worker: "w1", Attempt: 3, Error: "failed after 3 attempts: boom"})
		lookalike, _ := wire.Encode(map[string]any{"task_id": 3, "worker": "w", "value": 1}) // no attempt
		if _, err := c.PutRaw(context.Background(), "results", []msgpack.RawMessage{ok, failed, lookalike}, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		out := runPy(t, py, addr, `
result = manager().get_result_queue()
print(result.get(timeout=5))
try:
    result.get(timeout=5)
except RemoteError as e:
    print('RemoteError', 'task 2 failed' in str(e), 'boom' in str(e))
print(sorted(result.get(timeout=5).items()))
`)
		want := "49\nRemoteError True True\n[('task_id', 3), ('value', 1), ('worker', 'w')]\n"
		if out != want {
			t.Fatalf("python printed\n%s\nwant\n%s", out, want)
		}
	})
}

// TestPythonTaskDoneJoin: join waits for every task to be taken and
// marked done; task_done once too often is a ValueError.
func TestPythonTaskDoneJoin(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
m = manager()
task = m.get_task_queue()
for i in range(3):
    task.put(i)
done = []
def work():
    t = m.get_task_queue()
    for _ in range(3):
        t.get(timeout=5)
        time.sleep(0.1)
        done.append(1)
        t.task_done()
th = threading.Thread(target=work); th.start()
task.join()
print(len(done))
th.join()
try:
    task.task_done()
except ValueError as e:
    print('ValueError', e)
`)
		if out != "3\nValueError task_done() called too many times\n" {
			t.Fatalf("python: %q", out)
		}
	})
}

// TestPythonFullQueue: a put to a full queue raises queue.Full.
func TestPythonFullQueue(t *testing.T) {
	forEachPython(t, master.Config{MaxQueueLen: 1}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
task = manager().get_task_queue()
task.put(1)
print(task.full())
for f in (lambda: task.put_nowait(2), lambda: task.put(2, timeout=0.1), lambda: task.put(2, False)):
    try:
        f()
    except queue.Full as e:
        print(type(e) is queue.Full)
print(task.get(), task.full())
`)
		if out != "True\nTrue\nTrue\nTrue\n1 False\n" {
			t.Fatalf("python: %q", out)
		}
	})
}

// TestPythonPipelineStage: a Python stage that gets tasks from a and puts
// to b fills b, as with a Python master, though the tasks name a reply
// queue; a put to the reply queue itself is the task's result.
func TestPythonPipelineStage(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		ids := putInts(t, c, "a", 4, wire.PutOptions{ReplyTo: "replies"})
		runPy(t, py, addr, `
QueueManager.register('get_a_queue'); QueueManager.register('get_b_queue'); QueueManager.register('get_replies_queue')
m = manager()
a, b, replies = m.get_a_queue(), m.get_b_queue(), m.get_replies_queue()
for _ in range(3):
    b.put(('stage1', a.get(timeout=5)))
replies.put(a.get(timeout=5) * 10)
`)
		if got := getValues(t, c, "b", 3); fmt.Sprint(got) != "[[stage1 1] [stage1 2] [stage1 3]]" {
			t.Fatalf("b holds %v, want the stage's three puts", got)
		}
		ts, err := c.Get(context.Background(), "replies", wire.GetOptions{Max: 5, Timeout: 5 * time.Second, NoAck: true})
		if err != nil || len(ts) != 1 {
			t.Fatalf("replies holds %d items, %v; want the one result", len(ts), err)
		}
		r, err := wire.DecodeResult(ts[0].Payload)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := wire.DecodeValue(r.Value); r.TaskID != ids[3] || v != int64(40) {
			t.Fatalf("result %+v (value %v), want task %d's 40", r, v, ids[3])
		}
	})
}

// TestPythonPutWith: put_with gives a Python producer delays, priorities
// and idempotency keys, answers the task's ID (a repeated key's first),
// and refuses bad ones with ValueError.
func TestPythonPutWith(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
m = manager()
task = m.get_task_queue()
task.put('plain')
task.put_with('later', delay=3600)
task.put_with('at', at=time.time() + 3600)
task.put_with('urgent', priority=9)
first = task.put_with('once', key='order-17')
again = task.put_with('once again', key='order-17')
print(isinstance(first, int) and first > 0, again == first)
for kw in [dict(priority=10), dict(delay=-1), dict(delay=1, at=time.time()), dict(key='k' * 257), dict(priority='high'),
           dict(delay=1e12), dict(at=float('nan')), dict(at=time.time() + 1e10)]:
    try:
        task.put_with('bad', **kw)
        print('accepted', kw)
    except ValueError:
        pass
print(task.get(timeout=5), task.get(timeout=5), task.get(timeout=5))
print(task.qsize())
`)
		if want := "True True\nurgent plain once\n0\n"; out != want {
			t.Fatalf("python printed\n%s\nwant\n%s", out, want)
		}
		c := qmtest.Dial(t, addr, "admin")
		if st := stats(t, c, "tasks"); st.Delayed != 2 || st.Ready != 0 || st.Puts != 5 {
			t.Fatalf("tasks queue: %+v; want 2 delayed and 5 puts", st)
		}
	})
}

// A Python producer's put_with names its task's reply queue, where the
// result goes (Celery's result backend per task, roughly).
func TestPythonPutWithReplyTo(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
m = manager()
task = m.get_task_queue()
print(task.put_with(7, reply_to='replies') > 0)
for kw in [dict(reply_to=''), dict(reply_to='bad\n'), dict(reply_to=3)]:
    try:
        task.put_with(1, **kw)
        print('accepted', kw)
    except ValueError:
        pass
`)
		if out != "True\n" {
			t.Fatalf("python printed %q", out)
		}
		c := qmtest.Dial(t, addr, "worker")
		ctx := ctxFor(t, 10*time.Second)
		ts, err := c.Get(ctx, "tasks", wire.GetOptions{Max: 10})
		if err != nil || len(ts) != 1 {
			t.Fatalf("get: %+v, %v; want the one task", ts, err)
		}
		if err := c.Complete(ctx, "tasks", "", []wire.Completion{{ID: ts[0].ID, Value: ts[0].Payload}}); err != nil {
			t.Fatal(err)
		}
		if st := stats(t, c, "replies"); st.Ready != 1 {
			t.Fatalf("replies: %+v; want the task's result", st)
		}
	})
}

// The result a Python worker puts for a task whose reply queue was
// deleted after the task was put (an ended map's) goes nowhere, rather
// than make the queue again.
func TestPythonResultForADeletedReplyQueue(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		c := qmtest.Dial(t, addr, "producer")
		ctx := ctxFor(t, 10*time.Second)
		if _, err := c.Put(ctx, "replies", []any{"made"}, wire.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		putInts(t, c, "tasks", 1, wire.PutOptions{ReplyTo: "replies"})
		if err := c.Delete(ctx, "replies"); err != nil {
			t.Fatal(err)
		}
		runPy(t, py, addr, `
m = manager()
task = m.get_task_queue(); result = m.get_result_queue()
n = task.get(timeout=5)
result.put(n * n)
`)
		if qs, err := c.Queues(ctx); err != nil || slices.Contains(qs, "replies") {
			t.Fatalf("queues %v, %v: the deleted reply queue was made again", qs, err)
		}
		if st := stats(t, c, "results"); st.Ready != 0 {
			t.Errorf("the result went to the queue named by the put: %+v", st)
		}
	})
}

// An error of put_nowait, put_with or get_nowait names the method the
// script called.
func TestPythonErrorsNameTheMethod(t *testing.T) {
	forEachPython(t, master.Config{}, func(t *testing.T, py qmtest.Python, addr string) {
		out := runPy(t, py, addr, `
q = manager().get_task_queue()
loop = []
loop.append(loop) # pickles; no msgpack value holds itself
for call in (lambda: q.put_nowait(loop), lambda: q.put_with(loop)):
    try:
        call()
    except RemoteError as e:
        print([m for m in ('put()', 'put_nowait()', 'put_with()') if 'serving ' + m in str(e)])
`)
		if out != "['put_nowait()']\n['put_with()']\n" {
			t.Fatalf("python: %q", out)
		}
	})
}
