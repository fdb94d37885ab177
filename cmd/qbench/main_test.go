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
		Systems: []string{"qm", "qm-1req"}, Bin: binDir, QMBatch: 100, QMConcurrency: 4,
		Python: "python3", RedisServer: "redis-server", Out: out, Command: "qbench (test)",
	}
	if err := opts.validate(); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := run(ctx, opts, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	table := stdout.String()
	for _, want := range []string{"| qm, batched | 16 B | 1 | 300 |", "| qm, 1 request/op | 4 KiB | 4 | 100 |", "RTT p50 ≤ 100 µs", "Memory: 1000 ready"} {
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
