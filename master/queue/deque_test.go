package queue

import (
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// TestDeque checks the deque against a slice through random pushes and
// pops at both ends, across block boundaries, ring growth and draining.
func TestDeque(t *testing.T) {
	const steps = 200_000
	var d deque
	// model is the deque's content: store[lo:hi], with room both ways.
	store := make([]uint64, 2*40*steps+1)
	lo, hi := len(store)/2, len(store)/2
	maxBlocks := 0
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
		maxBlocks = max(maxBlocks, d.blocks)
		if d.len() != len(model) {
			t.Fatalf("step %d: len %d, want %d", step, d.len(), len(model))
		}
		if need := (d.head + d.n + blockLen - 1) / blockLen; d.n > 0 && d.blocks != need || d.n == 0 && d.blocks > 1 {
			t.Fatalf("step %d: %d blocks for %d tasks from offset %d, want %d", step, d.blocks, d.n, d.head, need)
		}
		if len(model) > 0 && (d.id(0) != model[0] || d.id(len(model)-1) != model[len(model)-1]) {
			t.Fatalf("step %d: ends %d..%d, want %d..%d", step, d.id(0), d.id(len(model)-1), model[0], model[len(model)-1])
		}
	}
	if maxBlocks < 8 || d.blocks >= maxBlocks {
		t.Fatalf("blocks peaked at %d and ended at %d: growth and draining not both exercised", maxBlocks, d.blocks)
	}
	model := store[lo:hi]
	for i := range model {
		if d.id(i) != model[i] {
			t.Fatalf("id(%d) = %d, want %d", i, d.id(i), model[i])
		}
	}
	d.clear()
	if d.len() != 0 || d.ring != nil {
		t.Fatal("clear left tasks")
	}
}

// TestDequeKeepsEveryField: a task comes out as it went in.
func TestDequeKeepsEveryField(t *testing.T) {
	var d deque
	now := time.Now().Round(0)
	in := []Task{
		{ID: 1, Payload: []byte("a"), ReplyTo: "r", Attempts: 2, LastError: "boom", Enqueued: now, seq: -3},
		{ID: 2, Payload: []byte("b"), ReplyTo: "r", Enqueued: now},
		{ID: 3, Payload: []byte("c"), ReplyTo: "r", Enqueued: now},
		{ID: 4},
	}
	for _, task := range in {
		d.pushBack(task)
	}
	if d.slot(1).meta != d.slot(2).meta {
		t.Error("tasks of one batch do not share their meta")
	}
	for i, want := range in {
		var got Task
		d.popFront(&got)
		if !got.Enqueued.Equal(want.Enqueued) || got.Enqueued.IsZero() != want.Enqueued.IsZero() {
			t.Errorf("task %d enqueued %v, want %v", i, got.Enqueued, want.Enqueued)
		}
		got.Enqueued, want.Enqueued = time.Time{}, time.Time{}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("task %d = %+v, want %+v", i, got, want)
		}
	}
}

func TestDequePopClearsSlot(t *testing.T) {
	var d deque
	d.pushBack(Task{ID: 1, Payload: []byte("x")})
	var got Task
	d.popFront(&got)
	if d.ring[d.first][0].payload != nil {
		t.Fatal("popped slot still references the payload")
	}
	for i := range blockLen + 1 {
		d.pushBack(Task{ID: uint64(i), Payload: []byte("y")})
	}
	for range blockLen {
		d.popFront(&got)
	}
	if d.spare == nil || d.spare[blockLen-1].payload != nil {
		t.Fatal("the emptied block was not kept, or not clean")
	}
}

func TestDequeRemoveIf(t *testing.T) {
	var d deque
	const n = 3*blockLen + 7
	d.pushFront(Task{ID: 0}) // start mid-block
	for i := 1; i < n; i++ {
		d.pushBack(Task{ID: uint64(i), Payload: []byte("p")})
	}
	got := d.removeIf(func(id uint64) bool { return id%3 != 0 })
	if len(got) != n-(n+2)/3 || got[0].ID != 1 || got[1].ID != 2 {
		t.Fatalf("removed %d tasks starting %v", len(got), got[:2])
	}
	if d.len() != (n+2)/3 || d.blocks != (d.head+d.n+blockLen-1)/blockLen {
		t.Fatalf("%d left in %d blocks from offset %d", d.len(), d.blocks, d.head)
	}
	for i := range d.len() {
		if d.id(i) != uint64(3*i) {
			t.Fatalf("id(%d) = %d, want %d", i, d.id(i), 3*i)
		}
	}
	d.removeIf(func(uint64) bool { return true })
	if d.len() != 0 || d.blocks > 1 {
		t.Fatalf("after removing all: %d tasks, %d blocks", d.len(), d.blocks)
	}
	d.pushBack(Task{ID: 9})
	if d.id(0) != 9 {
		t.Fatal("push after removing all")
	}
}

// id returns the ID of the i-th task from the front.
func (d *deque) id(i int) uint64 { return d.slot(i).id }

// clear drops every task and releases the blocks.
func (d *deque) clear() { *d = deque{} }
