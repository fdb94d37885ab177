package main

import (
	"slices"
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
