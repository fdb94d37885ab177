package main

import "testing"

// TestIDIndex adds batches as masters and gateways hand out IDs
// (consecutive, increasing), and as they may not (gaps, a batch lower than
// the last), and checks every lookup against a plain map.
func TestIDIndex(t *testing.T) {
	batches := [][]uint64{
		{10, 11, 12},
		{13, 14},
		{20, 21, 25, 26}, // gaps: three runs
		{5, 6},           // lower than the last: odd
		{22},             // inside the gap of an earlier batch: odd
		{100},
		{101, 102, 103},
	}
	var x idIndex
	want := map[uint64]int{}
	pos := 0
	for _, b := range batches {
		x.add(b, pos)
		for i, id := range b {
			want[id] = pos + i
		}
		pos += len(b)
	}
	for id := range uint64(110) {
		got, ok := x.lookup(id)
		w, wok := want[id]
		if ok != wok || got != w {
			t.Errorf("lookup(%d) = %d, %v; want %d, %v", id, got, ok, w, wok)
		}
	}
	// Lines before position 9 are printed: the runs wholly before it go;
	// odd IDs go one by one as their results come.
	x.forgetBefore(9)
	x.forget(5)
	if _, ok := x.lookup(12); ok {
		t.Error("ID 12, at a printed position, still found")
	}
	if _, ok := x.lookup(5); ok {
		t.Error("odd ID 5 still found after forget")
	}
	for id, w := range map[uint64]int{6: 10, 22: 11, 100: 12, 103: 15} {
		if got, ok := x.lookup(id); !ok || got != w {
			t.Errorf("after forgetting, lookup(%d) = %d, %v; want %d", id, got, ok, w)
		}
	}
}
