package jsqueue

import (
	"testing"
	"time"
)

func TestPackSizeFor(t *testing.T) {
	span := 250 * time.Millisecond
	for _, c := range []struct {
		rate          float64
		waiting, most int
		want          int
	}{
		{rate: 1, most: 32, want: 1},                // a worker running 1 s tasks
		{rate: 3.9, most: 32, want: 1},              // under a task a span
		{rate: 4, most: 32, want: 2},                // one a span, and the one now
		{rate: 50, most: 32, want: 8},               // 50 workers running 1 s tasks: 13, down to a power of two
		{rate: 200, most: 32, want: 32},             // CPU-bound
		{rate: 200, most: 20, want: 20},             // --pack itself, not a power of two
		{rate: 0, waiting: 1, most: 32, want: 1},    // a get of one task waits
		{rate: 0, waiting: 16, most: 32, want: 16},  // a batched worker waits
		{rate: 1, waiting: 100, most: 32, want: 32}, // many waiting
	} {
		if got := packSizeFor(c.rate, span, c.waiting, c.most); got != c.want {
			t.Errorf("packSizeFor(%v/s, %v, waiting %d, most %d) = %d, want %d", c.rate, span, c.waiting, c.most, got, c.want)
		}
	}
}
