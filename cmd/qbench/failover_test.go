package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// One cycle of the failover benchmark on real processes: a node was
// killed, results stopped and came back, and every task had a result. It
// checks that the figures make sense, not how good they are.
func TestFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node cluster and kills a node")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	// A lease shorter than qbench failover's default (qmaster's), for a
	// short test, but not too short: an unpacked task's deliveries
	// count as attempts, and at 3s a gap of 10s (once, with every test
	// package running under -race) dead-lettered a task that had also been
	// completed: an error result beside its own.
	o := &failoverOptions{Bin: binDir, Cycles: 1, Rate: 50, Workers: 2, Lease: 5 * time.Second,
		Steady: 2 * time.Second, Down: time.Second, Timeout: 50 * time.Second, Command: "qbench failover (test)"}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	start := time.Now()
	rep, err := runFailover(ctx, o, &log)
	if err != nil {
		t.Fatalf("failover: %v\n%s", err, log.String())
	}
	md := rep.markdown()
	t.Logf("in %s:\n%s", time.Since(start).Round(time.Second), md)
	if err := rep.check(); err != nil {
		t.Fatal(err)
	}
	if rep.Dup > 0 {
		// At least once, not a fault: see qbench failover --help.
		t.Logf("%d tasks had a second result", rep.Dup)
	}
	if len(rep.Cycles) != 1 {
		t.Fatalf("%d cycles, want 1", len(rep.Cycles))
	}
	cy := rep.Cycles[0]
	switch {
	case cy.Victim != "n1" && cy.Victim != "n2":
		t.Errorf("killed %q, want n1 or n2 (never the producer's n0)", cy.Victim)
	case cy.Gap <= rep.Baseline || cy.Gap > 40*time.Second:
		t.Errorf("gap %s, with %s before the kill: no failover seen, or a nonsense figure", cy.Gap, rep.Baseline)
	case cy.FirstResult <= 0 || cy.FirstNew < cy.FirstResult || cy.NoResult:
		t.Errorf("first result %s, first of a new task %s (none: %v)", cy.FirstResult, cy.FirstNew, cy.NoResult)
	case rep.Put < o.Rate*2 || rep.Results != rep.Put+len(rep.Twice):
		t.Errorf("%d tasks put, %d results", rep.Put, rep.Results)
	}
	if !strings.Contains(md, "| 1 | "+cy.Victim) || !strings.Contains(md, "Gap: median") {
		t.Errorf("report lacks the cycle or the median:\n%s", md)
	}
}

func TestStretch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s ...float64) []time.Time {
		var out []time.Time
		for _, x := range s {
			out = append(out, t0.Add(time.Duration(x*float64(time.Second))))
		}
		return out
	}
	sec := func(x float64) time.Time { return t0.Add(time.Duration(x * float64(time.Second))) }
	for _, tt := range []struct {
		name     string
		arrivals []time.Time
		from, to float64
		gap      time.Duration
		none     bool
	}{
		{"counts from the last arrival before", at(1, 2, 3, 9, 10), 4, 20, 6 * time.Second, false},
		{"ends at the window", at(1, 2, 3, 9, 10, 30), 4, 20, 6 * time.Second, false},
		{"nothing after", at(1, 2), 3, 7, 5 * time.Second, true},
		{"nothing at all", nil, 3, 7, 4 * time.Second, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			gap, none := stretch(tt.arrivals, sec(tt.from), sec(tt.to))
			if gap != tt.gap || none != tt.none {
				t.Errorf("stretch = %s, %v; want %s, %v", gap, none, tt.gap, tt.none)
			}
		})
	}
}

func TestFailoverValidate(t *testing.T) {
	for _, args := range [][]string{{"--cycles", "0"}, {"--rate", "0"}, {"--workers", "0"}, {"--lease", "100ms"}, {"--steady", "0s"}, {"--timeout", "0s"}} {
		cmd := newRootCmd()
		cmd.SetArgs(append([]string{"failover", "--bin", binDir}, args...))
		cmd.SetOut(new(bytes.Buffer))
		cmd.SetErr(new(bytes.Buffer))
		if err := cmd.Execute(); err == nil {
			t.Errorf("qbench failover %s: no error", strings.Join(args, " "))
		}
	}
}
