package seglog

import "testing"

// An idIndex keeps its entries through the move from a table to a map,
// whichever ID comes out of the table's range.
func TestIDIndex(t *testing.T) {
	tests := []struct {
		name   string
		adds   int
		lo, hi uint64
		ids    []uint64 // set in order, at places 0, 1, ...
		table  bool     // still a table at the end
	}{
		{"dense", 4, 10, 13, []uint64{10, 11, 12, 13}, true},
		{"below the range", 3, 10, 12, []uint64{10, 11, 3}, false},
		{"above the range", 3, 10, 12, []uint64{10, 12, 500}, false},
		{"sparse from the start", 2, 1, 1 << 40, []uint64{1, 1 << 40}, false},
		{"no adds", 0, 0, 0, []uint64{7}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := newIDIndex(tt.adds, tt.lo, tt.hi)
			for i, id := range tt.ids {
				x.set(id, int32(i))
			}
			x.del(tt.ids[0])
			if _, ok := x.get(tt.ids[0]); ok {
				t.Errorf("deleted id %d still found", tt.ids[0])
			}
			for i, id := range tt.ids[1:] {
				if got, ok := x.get(id); !ok || got != int32(i+1) {
					t.Errorf("get(%d) = %d, %v; want %d", id, got, ok, i+1)
				}
			}
			for _, id := range []uint64{0, tt.lo - 1, tt.hi + 1, 1 << 50} {
				if _, ok := x.get(id); ok && !contains(tt.ids[1:], id) {
					t.Errorf("get(%d) found an id never set", id)
				}
			}
			if (x.m == nil) != tt.table {
				t.Errorf("table = %v, want %v", x.m == nil, tt.table)
			}
		})
	}
}

func contains(ids []uint64, id uint64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// prefault leaves what is in the memory it maps in as it was.
func TestPrefaultKeepsContents(t *testing.T) {
	s := make([]uint64, 1<<16, 1<<17)
	for i := range s {
		s[i] = uint64(i) * 7
	}
	prefault(s)
	prefault(s[:0:0])
	for i := range s {
		if s[i] != uint64(i)*7 {
			t.Fatalf("s[%d] = %d after prefault, want %d", i, s[i], i*7)
		}
	}
	s = append(s, 1) // the rest of the capacity is usable
	if s[len(s)-1] != 1 {
		t.Fatal("append after prefault lost its value")
	}
}
