package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// binDir holds the qmaster and qworker that TestMain builds.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qbench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	build := exec.Command("go", "build", "-o", dir+"/", "github.com/qm-dev/qm/cmd/qmaster", "github.com/qm-dev/qm/cmd/qworker")
	var stderr bytes.Buffer
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "build qmaster and qworker: %v: %s\n", err, stderr.Bytes())
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// TestSmoke runs the whole bench against qm, tiny, so that it cannot rot.
// It checks that every figure is there, never how good it is.
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "PERFORMANCE.md")
	if err := os.WriteFile(out, []byte("# Performance\n\nkept above\n\n"+beginMarker+"\nold\n"+endMarker+"\nkept below\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := &options{
		N: 300, SlowN: 100, RTT: 20, MemN: 1000, Sizes: []int{16, 4096}, Workers: []int{1, 4},
		Systems: []string{"qm", "qm-1req", "qm-defaults", "qm-stdio"}, Bin: binDir, QMBatch: 100, QMConcurrency: 4,
		Python: "python3", PythonHelper: "../../python", RedisServer: "redis-server", Out: out, Command: "qbench (test)",
	}
	if err := opts.validate(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(ctx, opts, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	table := stdout.String()
	if _, err := exec.LookPath("python3"); err == nil && !strings.Contains(table, "| qm --stdio, Python x*x | 16 B | 4 | 300 |") {
		t.Errorf("table lacks the qm --stdio row:\n%s", table)
	}
	for _, want := range []string{"| qm, batched | 16 B | 1 | 300 |", "| qm, 1 request/op | 4 KiB | 4 | 100 |", "| qm, defaults | 16 B | 4 | 300 |",
		"Targets (issue 14)", "| qm batched ≥ 1.0x Redis batched, 16 B | not measured |", "Memory: 1000 16-byte tasks held",
		"| qm, delayed 1h | "} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	if !strings.Contains(doc, "kept above") || !strings.Contains(doc, "kept below") || strings.Contains(doc, "\nold\n") ||
		!strings.Contains(doc, table) {
		t.Errorf("%s is not the old file with its section replaced:\n%s", out, doc)
	}
}

func TestValidate(t *testing.T) {
	cmd := newRootCmd()
	for _, args := range [][]string{{"--n", "0"}, {"--systems", "qm,kafka"}, {"--workers", "0"}, {"--sizes", "-1"}} {
		cmd.SetArgs(args)
		cmd.SetOut(new(bytes.Buffer))
		cmd.SetErr(new(bytes.Buffer))
		if err := cmd.Execute(); err == nil {
			t.Errorf("qbench %s: no error", strings.Join(args, " "))
		}
	}
}

func TestPercentile(t *testing.T) {
	c := cell{}
	for i := 100; i >= 1; i-- {
		c.RTT = append(c.RTT, time.Duration(i)*time.Microsecond)
	}
	if got := c.percentile(0.5); got != 51*time.Microsecond {
		t.Errorf("p50 = %v", got)
	}
	if got := c.percentile(0.99); got != 100*time.Microsecond {
		t.Errorf("p99 = %v", got)
	}
}

// standIn is a system that records the round trips it is asked for and
// fails when told to; it tests the bench's turn-taking, not a system.
type standIn struct {
	name   string
	log    *[]string
	failAt int // fail the round-trip call with this index (0: never)
	calls  int
	closed bool
}

func (s *standIn) throughput(context.Context, int) (time.Duration, error) { return time.Second, nil }

func (s *standIn) roundTrips(_ context.Context, count int) ([]time.Duration, error) {
	s.calls++
	if s.calls == s.failAt {
		return nil, fmt.Errorf("%s broke", s.name)
	}
	*s.log = append(*s.log, fmt.Sprintf("%s:%d", s.name, count))
	return make([]time.Duration, count), nil
}

func (s *standIn) peakRSS() (int64, error) { return 1, nil }
func (s *standIn) close()                  { s.closed = true }

// The systems of a group take turns at the round trips, each turn led by
// the next, and each gets --rtt of them after the warm-up; a baseline that
// breaks gets a row saying so and the others go on.
func TestGroupTakesTurns(t *testing.T) {
	opts := &options{N: 10, SlowN: 10, RTT: 25, Systems: []string{"qm", "redis", "python"}}
	var log []string
	started := map[string]*standIn{}
	b := &bench{opts: opts, log: new(bytes.Buffer)}
	b.startSystem = func(_ context.Context, sys string, _, _ int) (system, error) {
		s := &standIn{name: sys, log: &log}
		if sys == "python" {
			s.failAt = 4 // the warm-up, then two turns
		}
		started[sys] = s
		return s, nil
	}
	cells, err := b.group(context.Background(), 16, 4)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(log[:7], " "); got != "qm:100 redis:100 python:100 qm:2 redis:2 python:2 redis:3" {
		t.Errorf("first calls: %s", got)
	}
	for i, want := range []struct {
		rtt int
		err string
	}{{25, ""}, {25, ""}, {0, "python broke"}} {
		if c := cells[i]; c.Err != want.err || c.Err == "" && len(c.RTT) != want.rtt {
			t.Errorf("%s: %d round trips, err %q; want %d, %q", c.System, len(c.RTT), c.Err, want.rtt, want.err)
		}
	}
	for name, s := range started {
		if !s.closed {
			t.Errorf("%s not closed", name)
		}
	}

	// qm breaking fails the run.
	opts.Systems = []string{"redis", "qm"}
	b.startSystem = func(_ context.Context, sys string, _, _ int) (system, error) {
		return &standIn{name: sys, log: &log, failAt: 2}, nil
	}
	if _, err := b.group(context.Background(), 16, 4); err == nil || !strings.Contains(err.Error(), "qm broke") {
		t.Errorf("group with qm failing = %v", err)
	}
}
