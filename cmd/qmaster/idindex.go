package main

import "sort"

// idIndex finds the input position of a task from its ID, for map.
//
// A put's tasks get consecutive IDs, and a later put higher ones, from a
// master and from a JetStream gateway alike: such a batch is one run,
// found by binary search, where a map entry per task cost a tenth of
// map's CPU in map assignments, lookups and the collector's scanning. IDs
// that break the pattern (a put retried in halves, say) go in a map.
type idIndex struct {
	runs []idRun // ascending by ID and by position; runs[head:] are kept
	head int
	odd  map[uint64]int
}

// idRun says that the n tasks at positions pos on have the IDs id on.
type idRun struct {
	id  uint64
	pos int
	n   int
}

func (r idRun) end() uint64 { return r.id + uint64(r.n) }

// add records that ids[i] is at position pos+i.
func (x *idIndex) add(ids []uint64, pos int) {
	for i := 0; i < len(ids); {
		j := i + 1
		for j < len(ids) && ids[j] == ids[j-1]+1 {
			j++
		}
		r := idRun{id: ids[i], pos: pos + i, n: j - i}
		if x.head == len(x.runs) || r.id >= x.runs[len(x.runs)-1].end() {
			x.runs = append(x.runs, r)
		} else {
			if x.odd == nil {
				x.odd = make(map[uint64]int)
			}
			for k := i; k < j; k++ {
				x.odd[ids[k]] = pos + k
			}
		}
		i = j
	}
}

// lookup returns the position of id, if it was added and not forgotten.
func (x *idIndex) lookup(id uint64) (int, bool) {
	runs := x.runs[x.head:]
	// The first run that ends after id is the only one that may hold it.
	i := sort.Search(len(runs), func(i int) bool { return runs[i].end() > id })
	if i < len(runs) && runs[i].id <= id {
		return runs[i].pos + int(id-runs[i].id), true
	}
	pos, ok := x.odd[id]
	return pos, ok
}

// forget drops id if it is an odd one; a run's IDs go with the run.
func (x *idIndex) forget(id uint64) { delete(x.odd, id) }

// forgetBefore drops the runs wholly before position next, whose lines
// are printed.
func (x *idIndex) forgetBefore(next int) {
	for x.head < len(x.runs) && x.runs[x.head].pos+x.runs[x.head].n <= next {
		x.runs[x.head] = idRun{}
		x.head++
	}
	if x.head == len(x.runs) {
		x.runs, x.head = x.runs[:0], 0
	} else if x.head > 64 && x.head > len(x.runs)/2 {
		n := copy(x.runs, x.runs[x.head:])
		x.runs, x.head = x.runs[:n], 0
	}
}
