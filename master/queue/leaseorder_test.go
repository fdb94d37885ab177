package queue

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestLeaseOrder checks the deadline order against a sorted slice through
// random adds (of more lengths than it has lists, with clocks that
// sometimes run back), removes and moves of deadlines; lists emptied on
// the way are taken by new lengths, and lengths beyond the lists spill
// to a heap.
func TestLeaseOrder(t *testing.T) {
	var o leaseOrder
	var held []*lease
	rng := rand.New(rand.NewPCG(3, 4))
	var lengths []int64 // more than maxLeaseLists
	for i := range maxLeaseLists + 4 {
		lengths = append(lengths, int64(1+i*i))
	}
	now := int64(1000)
	spilled := false
	id := uint64(0)
	for step := range 20_000 {
		now += rng.Int64N(3)
		switch op := rng.IntN(10); {
		case op < 5 || len(held) == 0:
			id++
			length := lengths[rng.IntN(len(lengths))]
			at := now - rng.Int64N(2) // a clock read a moment before
			l := &lease{task: Task{ID: id}, deadline: at + length}
			o.add(l, length)
			held = append(held, l)
		case op < 9:
			i := rng.IntN(len(held))
			o.remove(held[i])
			held = slices.Delete(held, i, i+1)
		default:
			l := held[rng.IntN(len(held))]
			length := lengths[rng.IntN(len(lengths))]
			o.remove(l)
			l.deadline = now + length
			o.add(l, length)
		}
		if o.len() != len(held) {
			t.Fatalf("step %d: len %d, want %d", step, o.len(), len(held))
		}
		if len(held) == 0 {
			if o.first() != nil {
				t.Fatalf("step %d: a first lease in an empty order", step)
			}
			continue
		}
		want := slices.MinFunc(held, func(a, b *lease) int {
			if earlier(a, b) {
				return -1
			}
			if earlier(b, a) {
				return 1
			}
			return 0
		})
		if len(o.spill) > 0 {
			spilled = true
		}
		if got := o.first(); got != want {
			t.Fatalf("step %d: first is task %d, want %d", step, got.task.ID, want.task.ID)
		}
	}
	if !spilled {
		t.Error("no lease spilled to the heap: the test did not test it")
	}
	// Drained in order.
	var prev *lease
	for f := o.first(); f != nil; f = o.first() {
		if prev != nil && earlier(f, prev) {
			t.Fatalf("task %d came out after task %d", f.task.ID, prev.task.ID)
		}
		o.remove(f)
		prev = f
	}
	if o.len() != 0 {
		t.Fatalf("%d left", o.len())
	}
}
