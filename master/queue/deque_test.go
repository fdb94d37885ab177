package queue

import (
	"math/rand/v2"
	"testing"
)

// TestDeque checks the ring buffer against a slice through random
// pushes and pops at both ends, across growth, wrap-around and shrinking.
func TestDeque(t *testing.T) {
	const steps = 200_000
	var d deque
	// model is the deque's content: store[lo:hi], with room both ways.
	store := make([]uint64, 2*40*steps+1)
	lo, hi := len(store)/2, len(store)/2
	maxCap := 0
	rng := rand.New(rand.NewPCG(1, 2))
	next := uint64(1)
	for step := range steps {
		// Drift up, then down, so the buffer grows past the shrink size
		// and shrinks back.
		pushBias := 56
		if step > steps/2 {
			pushBias = 20
		}
		switch op := rng.IntN(100); {
		case op < pushBias/2:
			d.pushBack(Task{ID: next})
			store[hi] = next
			hi++
			next++
		case op < pushBias:
			d.pushFront(Task{ID: next})
			lo--
			store[lo] = next
			next++
		case op == pushBias:
			k := rng.IntN(40)
			d.reserve(k)
			for range k {
				d.pushBack(Task{ID: next})
				store[hi] = next
				hi++
				next++
			}
		default:
			if lo == hi {
				continue
			}
			var got Task
			d.popFront(&got)
			if got.ID != store[lo] {
				t.Fatalf("step %d: popped %d, want %d", step, got.ID, store[lo])
			}
			lo++
		}
		model := store[lo:hi]
		maxCap = max(maxCap, len(d.buf))
		if d.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, d.len(), len(model))
		}
		if c := len(d.buf); c != 0 && c&(c-1) != 0 {
			t.Fatalf("step %d: capacity %d is not a power of two", step, c)
		}
		if len(model) > 0 && (d.at(0).ID != model[0] || d.at(len(model)-1).ID != model[len(model)-1]) {
			t.Fatalf("step %d: ends %d..%d, want %d..%d", step, d.at(0).ID, d.at(len(model)-1).ID, model[0], model[len(model)-1])
		}
	}
	if maxCap <= dequeShrinkCap || len(d.buf) >= maxCap {
		t.Fatalf("capacity peaked at %d and ended at %d: growth and shrinking not both exercised", maxCap, len(d.buf))
	}
	model := store[lo:hi]
	for i := range model {
		if d.at(i).ID != model[i] {
			t.Fatalf("at(%d) = %d, want %d", i, d.at(i).ID, model[i])
		}
	}
	d.clear()
	if d.len() != 0 || d.buf != nil {
		t.Fatal("clear left tasks")
	}
}

func TestDequePopClearsSlot(t *testing.T) {
	var d deque
	d.pushBack(Task{ID: 1, Payload: []byte("x")})
	var got Task
	d.popFront(&got)
	for i := range d.buf {
		if d.buf[i].Payload != nil {
			t.Fatal("popped slot still references the payload")
		}
	}
}
