package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// A sample taken late (a gap of 1s, then one of 0.5s) still gives the
// load and rate of each 500ms period.
func TestResample(t *testing.T) {
	type s struct {
		at, cpu time.Duration
		done    int
	}
	in := []s{{0, 0, 0}, {time.Second, time.Second, 100}, {1500 * time.Millisecond, 2 * time.Second, 400}}
	cores, rates, gap := resample(in, func(x s) (time.Duration, time.Duration, int) { return x.at, x.cpu, x.done })
	if want := []float64{1, 1, 2}; !slices.Equal(cores, want) {
		t.Errorf("cores %v, want %v", cores, want)
	}
	if want := []float64{100, 100, 600}; !slices.Equal(rates, want) {
		t.Errorf("rates %v, want %v", rates, want)
	}
	if gap != time.Second {
		t.Errorf("gap %s, want 1s", gap)
	}
}

// qbench simulate prints its table and, with --kill-at, the burst.
func TestSimulateCommand(t *testing.T) {
	var out bytes.Buffer
	cmd := newRootCmd()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"simulate", "--gateways", "2", "--workers", "20", "--window", "40", "--compute", "50ms",
		"--warmup", "200ms", "--duration", "2s", "--kill-at", "100ms", "--ack-wait", "600ms"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| tasks/s | RTT p50 | RTT p99 |", "killed the last gateway at 100ms", "redelivered"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestFleetValidate(t *testing.T) {
	for name, o := range map[string]fleetOptions{
		"no gateways":   {Nodes: 1, Workers: 1, Queues: 1, Window: 1, Duration: time.Second},
		"small window":  {Nodes: 1, Gateways: 1, Workers: 1, Queues: 2, Window: 1, Duration: time.Second},
		"kill the only": {Nodes: 1, Gateways: 1, Workers: 1, Queues: 1, Window: 1, Duration: time.Second, KillAt: time.Second},
	} {
		if err := o.validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// qbench fleet runs, small, on real gateways and a node, and reports
// every part of a round trip, so that it cannot rot.
func TestFleetSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node and two gateways")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := &fleetOptions{Bin: binDir, Nodes: 1, Gateways: 2, Workers: 20, Queues: 1, Window: 40, Compute: 10 * time.Millisecond,
		Warmup: 500 * time.Millisecond, Duration: time.Second, Lease: 5 * time.Second, Fsync: "never"}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	if err := runFleet(ctx, o, &out, &log); err != nil {
		t.Fatalf("fleet: %v\n%s", err, log.String())
	}
	for _, want := range []string{"| tasks/s | RTT p50 | RTT p99 |", "put to handler start: p50", "handler end to the result at the producer: p50", "producers: "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "handler end to the result at the producer: p50 0 µs") {
		t.Errorf("no result measured:\n%s", out.String())
	}
}
