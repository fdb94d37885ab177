package sim

import (
	"testing"
	"time"
)

// A long operation is cut into quanta: another process's short one runs
// after the first quantum, while the long one's own process finishes it
// before its next operation (a thread is preempted, not its goroutine).
func TestQuantumSharesTheCore(t *testing.T) {
	c := &clock{}
	h := newHost(c, 1, 100*time.Microsecond)
	a, b := h.newProcess(1), h.newProcess(1)
	done := map[string]time.Duration{}
	at := func(name string) func() { return func() { done[name] = c.now } }
	a.do(time.Millisecond, at("a long"))
	a.do(10*time.Microsecond, at("a short"))
	b.do(10*time.Microsecond, at("b short"))
	c.runUntil(time.Second)
	want := map[string]time.Duration{
		"b short": 110 * time.Microsecond,  // after a's first quantum
		"a long":  1010 * time.Microsecond, // its 1 ms plus b's 10 µs
		"a short": 1020 * time.Microsecond, // only after a's long one
	}
	for name, w := range want {
		if done[name] != w {
			t.Errorf("%s done at %s, want %s", name, done[name], w)
		}
	}
	if h.inUse != 1020*time.Microsecond || a.busy != 1010*time.Microsecond {
		t.Errorf("host busy %s, a busy %s; want 1.02ms and 1.01ms", h.inUse, a.busy)
	}
}

// A killed process runs nothing more, and what it was running has no
// effect.
func TestKilledProcessDoesNothing(t *testing.T) {
	c := &clock{}
	h := newHost(c, 1, 0)
	p := h.newProcess(1)
	ran := 0
	p.do(time.Millisecond, func() { ran++ })
	p.do(time.Millisecond, func() { ran++ })
	c.after(500*time.Microsecond, p.kill)
	c.runUntil(time.Second)
	if ran != 0 {
		t.Errorf("%d operations of a killed process ran", ran)
	}
}
