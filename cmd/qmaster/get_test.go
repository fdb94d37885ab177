package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
	"github.com/vmihailenco/msgpack/v5"
)

// checkHeld fails the test unless queue holds want tasks, ready or leased.
func checkHeld(t *testing.T, c *wire.Client, queue string, want int) {
	t.Helper()
	st, err := c.Stats(context.Background(), queue)
	if err != nil || len(st) != 1 || st[0].Ready+st[0].Leased != want {
		t.Errorf("stats of %s: %+v, %v; want %d tasks held", queue, st, err, want)
	}
}

// TestGetNonFinite: a Python client's 1, float('inf'), 2, 3 all print,
// and none is left behind; put reads back what get prints.
func TestGetNonFinite(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	if _, err := c.Put(context.Background(), "b", []any{int64(1), math.Inf(1), int64(2), int64(3)}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	const printed = "1\nInfinity\n2\n3\n"
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "get", "--server", addr, "b", "-n", "4"); code != 0 || out.String() != printed {
		t.Fatalf("get -n 4: exit %d, printed %q; want 0, %q; stderr:\n%s", code, out, printed, errOut)
	}
	checkHeld(t, c, "b", 0)

	for i, tt := range []struct{ name, in, want string }{
		{"get's output", printed, printed},
		{"non-finite", "NaN\n-Infinity\n\"NaN\"\nnan\n[NaN]\n",
			"NaN\n-Infinity\n\"NaN\"\n\"nan\"\n\"[NaN]\"\n"},
		{"ints to 2^64-1", "18446744073709551615\n[9223372036854775808]\n100000000000000000000000000001\n",
			"18446744073709551615\n[9223372036854775808]\n1e+29\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := fmt.Sprint("rt", i)
			f, _, errOut := testFactory(tt.in)
			if code := runInProcess(context.Background(), f, "put", "--server", addr, q); code != 0 {
				t.Fatalf("put: exit %d; stderr:\n%s", code, errOut)
			}
			n := fmt.Sprint(strings.Count(tt.in, "\n"))
			f, out, errOut := testFactory("")
			if code := runInProcess(context.Background(), f, "get", "--server", addr, q, "-n", n); code != 0 || out.String() != tt.want {
				t.Errorf("get -n %s: exit %d, printed %q; want 0, %q; stderr:\n%s", n, code, out, tt.want, errOut)
			}
		})
	}
}

// tupleKeyMap is {(1,): 1}, which a Python client may put and get cannot
// print: wire.DecodeValue reads scalar keys only.
var tupleKeyMap = msgpack.RawMessage{0x81, 0x91, 0x01, 0x01}

// TestGetUnprintable: an item get cannot print is named, and the items
// after it, taken too, are still printed.
func TestGetUnprintable(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	ids, err := c.PutRaw(context.Background(), "b", []msgpack.RawMessage{{0x01}, tupleKeyMap, {0x02}}, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f, out, errOut := testFactory("")
	code := runInProcess(context.Background(), f, "get", "--server", addr, "b", "-n", "3")
	if code != 1 || out.String() != "1\n2\n" {
		t.Errorf("get -n 3: exit %d, printed %q; want 1, %q", code, out, "1\n2\n")
	}
	named := fmt.Sprintf("qmaster get: task %d: decode payload: ", ids[1])
	last := "qmaster get: 1 of 3 items taken could not be printed\n"
	if s := errOut.String(); !strings.HasPrefix(s, named) || !strings.HasSuffix(s, last) || strings.Count(s, "\n") != 2 {
		t.Errorf("stderr %q, want a line starting %q, then %q", s, named, last)
	}
	checkHeld(t, c, "b", 0)
}

// TestPeekNonFinite: peek prints payloads as get does, and names the
// task it cannot print after printing the others.
func TestPeekNonFinite(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	ids := putNonFinite(t, c, "p")
	f, out, errOut := testFactory("")
	if code := runInProcess(context.Background(), f, "peek", "--server", addr, "p", "-n", "4"); code != 1 {
		t.Errorf("peek: exit %d, want 1", code)
	}
	lines := printedNonFinite(t, out.String())
	var first peekedTask
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil || first.ID != ids[0] || string(first.Payload) != "1" {
		t.Errorf("line %q read as %+v, %v; want task %d with payload 1", lines[0], first, err, ids[0])
	}
	named := fmt.Sprintf("qmaster peek: task %d: decode payload: ", ids[2])
	last := "qmaster peek: 1 of 4 tasks could not be printed\n"
	if s := errOut.String(); !strings.HasPrefix(s, named) || !strings.HasSuffix(s, last) {
		t.Errorf("stderr %q, want a line starting %q, then %q", s, named, last)
	}
	checkHeld(t, c, "p", 4)
}

// TestDeadNonFinite: dead prints payloads as peek does, in its table and
// with --json, and names the task it cannot print after the others.
func TestDeadNonFinite(t *testing.T) {
	addr := startInProcessMaster(t, master.Config{MaxAttempts: 1})
	c := qmtestDial(t, addr)
	ctx := context.Background()
	ids := putNonFinite(t, c, "p")
	ts, err := c.Get(ctx, "p", wire.GetOptions{Max: 4})
	if err != nil || len(ts) != 4 {
		t.Fatal(ts, err)
	}
	for _, task := range ts {
		if err := c.Nack(ctx, "p", task.ID, "no"); err != nil {
			t.Fatal(err)
		}
	}
	f, out, errOut := testFactory("")
	if code := runInProcess(ctx, f, "dead", "--server", addr, "p", "-n", "4", "--json"); code != 1 {
		t.Errorf("dead --json: exit %d, want 1", code)
	}
	printedNonFinite(t, out.String())
	named := fmt.Sprintf("qmaster dead: task %d: decode payload: ", ids[2])
	if s := errOut.String(); !strings.HasPrefix(s, named) || !strings.HasSuffix(s, "qmaster dead: 1 of 4 tasks could not be printed\n") {
		t.Errorf("stderr %q, want a line starting %q, then the count", s, named)
	}
	f, out, errOut = testFactory("")
	if code := runInProcess(ctx, f, "dead", "--server", addr, "p", "-n", "4"); code != 0 {
		t.Errorf("dead: exit %d, want 0; stderr %s", code, errOut)
	}
	if s := out.String(); !strings.Contains(s, " -Infinity\n") || !strings.Contains(s, " [NaN]\n") {
		t.Errorf("dead's table does not show the payloads as peek does:\n%s", s)
	}
}

// putNonFinite puts 1, -Infinity, a map with int keys (which no JSON
// holds) and [NaN] into queue, and returns their IDs.
func putNonFinite(t *testing.T, c *wire.Client, queue string) []uint64 {
	t.Helper()
	raw := make([]msgpack.RawMessage, 0, 4)
	for _, v := range []any{int64(1), math.Inf(-1), tupleKeyMap, []any{math.NaN()}} {
		b, err := wire.Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		raw = append(raw, b)
	}
	ids, err := c.PutRaw(context.Background(), queue, raw, wire.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// printedNonFinite checks that out, as peek prints putNonFinite's tasks,
// holds the three that can be printed, as get prints them, and returns
// its lines.
func printedNonFinite(t *testing.T, out string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("printed %q, want 3 lines", out)
	}
	for i, payload := range []string{"1", "-Infinity", "[NaN]"} {
		if want := `,"payload":` + payload + "}"; !strings.HasSuffix(lines[i], want) {
			t.Errorf("line %d %q does not end %q", i, lines[i], want)
		}
	}
	return lines
}

// slowWriter is a reader that takes its time with the first write (a
// pager), as get's output.
type slowWriter struct {
	bytes.Buffer
	delay time.Duration
	slept bool
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if !w.slept {
		time.Sleep(w.delay)
		w.slept = true
	}
	return w.Buffer.Write(p)
}

// A reader slower than get's lease does not make get's items come back
// while they are printed: their leases are renewed until the ack.
func TestGetKeepsItsLeasesWhileItWrites(t *testing.T) {
	defer func(l time.Duration) { getLease = l }(getLease)
	getLease = 300 * time.Millisecond
	addr := startInProcessMaster(t, master.Config{})
	c := qmtestDial(t, addr)
	if _, err := c.Put(context.Background(), "slow", []any{1, 2}, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	f, _, errOut := testFactory("")
	out := &slowWriter{delay: 4 * getLease}
	f.Out = out
	if code := runInProcess(context.Background(), f, "get", "--server", addr, "slow", "-n", "2"); code != 0 || out.String() != "1\n2\n" {
		t.Fatalf("get: exit %d, printed %q; stderr:\n%s", code, out.String(), errOut)
	}
	if st, err := c.Stats(context.Background(), "slow"); err != nil || st[0].Done != 2 || st[0].Ready != 0 || st[0].Leased != 0 || st[0].Expired != 0 {
		t.Fatalf("slow: %+v, %v; want both done, none expired", st, err)
	}
}
