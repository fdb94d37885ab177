package gomaxprocs

import (
	"log/slog"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNext(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cur, ncpu int
		load      Load
		want      int
	}{
		{"CPU-bound, a core idle", 1, 16, Load{Busy: 0.97, Idle: 12}, 2},
		{"CPU-bound at 4, cores idle", 4, 16, Load{Busy: 3.9, Idle: 8}, 8},
		{"capped at the cores", 8, 12, Load{Busy: 7.9, Idle: 3}, 12},
		{"already at the cores", 2, 2, Load{Busy: 2, Idle: 1}, 2},
		{"CPU-bound, machine busy (the bench box)", 1, 2, Load{Busy: 0.95, Idle: 0.3}, 1},
		{"not CPU-bound", 1, 16, Load{Busy: 0.5, Idle: 15}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := next(tt.cur, tt.ncpu, tt.load); got != tt.want {
				t.Errorf("next(%d, %d, %+v) = %d, want %d", tt.cur, tt.ncpu, tt.load, got, tt.want)
			}
		})
	}
}

// The Adapter raises GOMAXPROCS only after two periods in a row call for
// it, and Stop ends its goroutine.
func TestAdapterRaisesAfterTwoPeriods(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	loads, quit := make(chan Load), make(chan struct{})
	a := &Adapter{stop: make(chan struct{}), done: make(chan struct{})}
	sample := func() (Load, bool) {
		select {
		case l := <-loads:
			return l, true
		case <-quit:
			return Load{}, false
		}
	}
	go a.run(time.Millisecond, 4, sample, slog.New(slog.DiscardHandler))
	defer a.Stop()
	defer close(quit)
	bound := Load{Busy: 1, Idle: 3}
	for i, l := range []Load{bound, {Busy: 0.2, Idle: 3}, bound} {
		loads <- l
		if n := runtime.GOMAXPROCS(0); n != 1 {
			t.Fatalf("GOMAXPROCS %d after period %d; want 1 until two CPU-bound periods in a row", n, i+1)
		}
	}
	loads <- bound
	loads <- Load{} // the loop has acted on the one before
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Fatalf("GOMAXPROCS %d after two CPU-bound periods, want 2", n)
	}
}

// On Linux a sample sees this process's CPU: a goroutine that spins
// until the process has used 100 ms of CPU shows that much as busy. (Not
// 200 ms of wall time: on a loaded machine that was a quarter as much
// CPU, and the test failed.)
func TestReadCPU(t *testing.T) {
	prev, ok := readCPU()
	if !ok {
		t.Skip("no /proc/stat here")
	}
	deadline := time.Now().Add(10 * time.Second)
	cur := prev
	for cur.proc-prev.proc < 100*time.Millisecond && time.Now().Before(deadline) {
		for end := time.Now().Add(10 * time.Millisecond); time.Now().Before(end); {
		}
		cur, _ = readCPU()
	}
	l := cur.since(prev)
	if used := time.Duration(l.Busy * float64(cur.at.Sub(prev.at))); used < 99*time.Millisecond || l.Idle < 0 {
		t.Fatalf("after spinning for 100 ms of CPU (%v of it seen in 10 s): %+v", cur.proc-prev.proc, l)
	}
}
