package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// In-process tests: the commands run in this process against a master
// started by qmtest, so the race detector and goleak see their goroutines.

// runInProcess runs qmaster with args in this process, with QM_AUTHKEY set
// to the test key, and returns its exit code.
func runInProcess(ctx context.Context, f *factory, args ...string) int {
	f.Getenv = func(k string) string {
		if k == "QM_AUTHKEY" {
			return testKey
		}
		return ""
	}
	root := newRootCmd(f, nil)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	return exitCode(f.ErrOut, cmd, err)
}

func startInProcessMaster(t *testing.T, cfg master.Config) string {
	cfg.Authkey = []byte(testKey)
	addr, _ := qmtest.StartMaster(t, cfg)
	return addr
}

func TestMapInProcess(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxAttempts: 2})
	runWorker(t, addr, "tasks", func(n int64) (any, error) {
		if n%100 == 0 {
			return nil, fmt.Errorf("%d is round", n)
		}
		return n + 1, nil
	})
	f, out, errOut := testFactory(seq(1000))
	f.StderrTTY = true // draws the progress bar into errOut
	code := runInProcess(context.Background(), f, "map", "--server", addr, "--batch", "64", "--timeout", "30s")
	if code != 1 {
		t.Errorf("exit %d, want 1 (ten tasks fail); stderr:\n%s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 1000 {
		t.Fatalf("%d lines, want 1000", len(lines))
	}
	for i, l := range lines {
		n := i + 1
		want := fmt.Sprint(n + 1)
		if n%100 == 0 {
			want = "null"
		}
		if l != want {
			t.Fatalf("line %d: %q, want %q", n, l, want)
		}
	}
	for _, want := range []string{
		"(input line 300: 300) failed after 2 attempts: 300 is round",
		"qmaster map: 10 of 1000 tasks failed",
		"(1000/1000", // the bar, finished
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

func TestMapIgnoresForeignResults(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	foreign, err := wire.Encode(wire.Result{TaskID: 999999, Value: []byte{0xc0}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutRaw(context.Background(), "shared", []msgpack.RawMessage{foreign}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	runWorker(t, addr, "tasks", func(n int64) (any, error) { return -n, nil })

	f, out, errOut := testFactory("1\n2\n3\n")
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--results", "shared", "--timeout", "30s"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if out.String() != "-1\n-2\n-3\n" {
		t.Errorf("stdout %q", out)
	}
	if want := "qmaster map: ignored 1 result in shared of tasks this map did not submit\n"; errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
}

func TestMapEmptyInput(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, out, errOut := testFactory("\n\n")
	if code := runInProcess(context.Background(), f, "map", "--server", addr); code != 0 || out.Len() != 0 {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0 and nothing", code, out, errOut)
	}
}

func TestMapInterrupted(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	f, _, _ := testFactory("1\n2\n")
	errOut := &syncBuffer{}
	f.ErrOut = errOut
	done := make(chan int, 1)
	go func() { done <- runInProcess(ctx, f, "map", "--server", addr) }()
	c := qmtestDial(t, addr)
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		st, err := c.Stats(context.Background(), "tasks")
		if err != nil || st[0].Ready != 2 {
			return fmt.Errorf("tasks not submitted yet: %v %v", st, err)
		}
		return nil
	})
	cancel()
	// "of 0": the put may have been cancelled before map counted it.
	if code := <-done; code != 1 || !regexp.MustCompile(`qmaster map: interrupted with 0 of [02] results`).MatchString(errOut.String()) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	names, err := c.Queues(context.Background())
	if err != nil || len(names) != 1 || names[0] != "tasks" {
		t.Errorf("queues after map %v, %v: want the private result queue deleted", names, err)
	}
}

func TestPutBatches(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, out, errOut := testFactory(seq(2500))
	if code := runInProcess(context.Background(), f, "put", "--server", addr, "--batch", "1000", "--ids", "big"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if n := strings.Count(out.String(), "\n"); n != 2500 {
		t.Errorf("%d ids printed, want 2500", n)
	}
	st, err := qmtestDial(t, addr).Stats(context.Background(), "big")
	if err != nil || st[0].Ready != 2500 {
		t.Errorf("stats %v, %v; want 2500 ready", st, err)
	}
}

func TestPutQueueFull(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxQueueLen: 2})
	f, _, errOut := testFactory("")
	code := runInProcess(context.Background(), f, "put", "--server", addr, "small", "1", "2", "3")
	if code != 1 || !strings.Contains(errOut.String(), "qmaster put: put into small: queue full") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestInspectWatch(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, _, _ := testFactory("")
	out := &syncBuffer{}
	f.Out = out
	var wg sync.WaitGroup
	wg.Add(1)
	var code int
	go func() {
		defer wg.Done()
		code = runInProcess(ctx, f, "inspect", "--server", addr, "--watch", "--interval", "10ms")
	}()
	c := qmtestDial(t, addr)
	if _, err := c.Put(ctx, "watched", []any{1}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	qmtest.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := strings.Count(out.String(), "watched "); n < 2 {
			return fmt.Errorf("%d tables show the queue:\n%s", n, out)
		}
		return nil
	})
	cancel()
	wg.Wait()
	if code != 0 {
		t.Errorf("watch ended with %d, want 0", code)
	}
	if strings.Contains(out.String(), clearScreen) {
		t.Errorf("cleared the screen of a non-terminal")
	}
}

func TestClientsTable(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	qmtestDial(t, addr)
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "clients", "--server", addr); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID  ADDR") || !strings.Contains(out.String(), "qmaster clients (") {
		t.Errorf("clients table:\n%s", out)
	}
}

func TestConnectRefused(t *testing.T) {
	f, _, errOut := testFactory("")
	// Port 1 on loopback: nothing listens there.
	code := runInProcess(context.Background(), f, "queues", "--server", "127.0.0.1:1", "--connect-timeout", "1s")
	if msg := errOut.String(); code != 1 || !strings.HasPrefix(msg, "qmaster: ") || !strings.Contains(msg, "127.0.0.1:1") || !strings.Contains(msg, "refused") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestUnknownQueue(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	f, _, errOut := testFactory("")
	code := runInProcess(context.Background(), f, "delete", "--server", addr, "nope")
	if code != 1 || errOut.String() != "qmaster delete: queue nope: unknown queue\n" {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func qmtestDial(t *testing.T, addr string) *wire.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(testKey), Role: "admin", Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// pythonPayloads are what Python clients send for the types of
// docs/VALUES.md (pyproto's corpus checks that they do).
var pythonPayloads = []string{
	"c70901010000000000000001",             // 2**64 + 1
	"c70d01f360d3632fb98b1215c0000000",     // -10**30
	"c70302920102",                         // {1, 2}
	"d7029192019202c40178",                 // {(1, (2, b'x'))}
	"c7050391d5039102",                     // frozenset({frozenset({2})})
	"d5046162",                             // bytearray(b'ab')
	"c7030400ff00",                         // bytearray(b'\x00\xff\x00')
	"c70a0707e80102030405000006",           // datetime(2024, 1, 2, 3, 4, 5, 6)
	"d7ff00005dc065937d25",                 // the same with tzinfo=timezone.utc
	"d807270f0c1f173b3b0f423fffffb2a80058", // datetime(9999, 12, 31, 23, 59, 59, 999999, timezone(-5:30, 'X'))
	"d60507e8021d",                         // date(2024, 2, 29)
	"c70606010203000004",                   // time(1, 2, 3, 4)
	"c70a06173b3b0f423f00001c20",           // time(23, 59, 59, 999999, tzinfo=timezone(+2:00))
	"c70c08ffffffff0000000500000007",       // timedelta(days=-1, seconds=5, microseconds=7)
	"d609312e3530",                         // Decimal('1.50')
	"c703094e614e",                         // Decimal('NaN')
	"d80a3ff8000000000000c000000000000000", // complex(1.5, -2)
	"81a16bd5029101",                       // {'k': {1}}
}

func pythonRaw(t *testing.T) []msgpack.RawMessage {
	t.Helper()
	raw := make([]msgpack.RawMessage, len(pythonPayloads))
	for i, h := range pythonPayloads {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		raw[i] = b
	}
	return raw
}

// TestPythonValuesPrinted: qmaster get and qmaster map print the Python
// types as docs/VALUES.md says, the same way.
func TestPythonValuesPrinted(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	raw := pythonRaw(t)
	if _, err := c.PutRaw(context.Background(), "py", raw, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "get", "--server", addr, "py", "-n", fmt.Sprint(len(raw))); code != 0 {
		t.Fatalf("get: exit %d; stderr:\n%s", code, errOut)
	}
	checkGolden(t, "values.golden", out.String())

	runWorker(t, addr, "tasks", func(n int64) (any, error) { return raw[n-1], nil })
	f, out, errOut = testFactory(seq(len(raw)))
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "30s"); code != 0 {
		t.Fatalf("map: exit %d; stderr:\n%s", code, errOut)
	}
	checkGolden(t, "values.golden", out.String())
}

// unavailableOnce is queues whose first put stores its tasks and then
// answers, as a gateway may while its engine elects a leader, that the
// queues are unavailable.
type unavailableOnce struct {
	*queue.Manager
	refused atomic.Bool
}

func (q *unavailableOnce) Put(ctx context.Context, req queue.PutRequest) ([]uint64, error) {
	ids, err := q.Manager.Put(ctx, req)
	if err == nil && !req.Results && q.refused.CompareAndSwap(false, true) {
		return nil, queue.ErrUnavailable
	}
	return ids, err
}

// A map through one master puts a batch again when it is told the queues
// are unavailable, under the same request ID: the batch, stored the first
// time, is stored once, and no result is ignored as foreign.
func TestMapPutAgainAfterUnavailableStoresOnce(t *testing.T) {
	var qs *unavailableOnce
	addr := startInProcessMaster(t, master.Config{OpenQueues: func(qc queue.Config) (master.Queues, error) {
		m, err := queue.New(qc)
		qs = &unavailableOnce{Manager: m}
		return qs, err
	}})
	runWorker(t, addr, "tasks", func(n int64) (any, error) { return n * n, nil })
	f, out, errOut := testFactory(seq(100))
	if code := runInProcess(context.Background(), f, "map", "--server", addr, "--timeout", "30s"); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, errOut)
	}
	if !qs.refused.Load() {
		t.Fatal("no put was refused")
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr %q, want nothing", errOut)
	}
	var want strings.Builder
	for n := 1; n <= 100; n++ {
		fmt.Fprintln(&want, n*n)
	}
	if out.String() != want.String() {
		t.Errorf("stdout %q", out)
	}
	st, err := qmtestDial(t, addr).Stats(context.Background(), "tasks")
	if err != nil || len(st) != 1 || st[0].Puts != 100 {
		t.Fatalf("tasks: %+v, %v; want 100 puts", st, err)
	}
}
