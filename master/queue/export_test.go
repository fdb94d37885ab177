package queue

import (
	"errors"
	"fmt"
)

// CheckInvariants verifies every queue's internal indexes, for tests.
func (m *Manager) CheckInvariants() error {
	var errs []error
	for _, q := range m.sortedSnapshot() {
		q.mu.Lock()
		if err := q.check(); err != nil {
			errs = append(errs, fmt.Errorf("queue %q: %w", q.name, err))
		}
		q.mu.Unlock()
	}
	return errors.Join(errs...)
}

func (q *queue) check() error {
	if q.deleted {
		return nil
	}
	if q.ready.len() > 0 && q.getters.n > 0 && !q.paused {
		return fmt.Errorf("%d ready tasks and %d waiting getters", q.ready.len(), q.getters.n)
	}
	if p := q.putters.head; p != nil && q.fits(len(p.items)) {
		return errors.New("head putter fits but waits")
	}
	if len(q.heap) != len(q.leases) {
		return fmt.Errorf("heap has %d leases, map %d", len(q.heap), len(q.leases))
	}
	for i, l := range q.heap {
		if l.index != i {
			return fmt.Errorf("lease %d at heap %d says index %d", l.task.ID, i, l.index)
		}
		if q.leases[l.task.ID] != l {
			return fmt.Errorf("lease %d in heap, not in map", l.task.ID)
		}
		if i > 0 && q.heap.Less(i, (i-1)/2) {
			return fmt.Errorf("heap order broken at %d", i)
		}
	}
	total, idle := 0, 0
	for owner, h := range q.owners {
		n := 0
		var prev *lease
		for l := h.first; l != nil; l = l.next {
			if l.owner != owner || l.prev != prev || q.leases[l.task.ID] != l {
				return fmt.Errorf("owner %d list broken at task %d", owner, l.task.ID)
			}
			prev = l
			n++
		}
		if n != h.n {
			return fmt.Errorf("owner %d list has %d leases, count %d", owner, n, h.n)
		}
		if n == 0 {
			idle++
		}
		total += n
	}
	if idle != q.idleOwners {
		return fmt.Errorf("%d idle owners, counted %d", idle, q.idleOwners)
	}
	if total != len(q.leases) {
		return fmt.Errorf("owner lists hold %d leases, map %d", total, len(q.leases))
	}
	n := 0
	for g := q.getters.head; g != nil; g = g.next {
		n++
	}
	if n != q.getters.n {
		return fmt.Errorf("getter list has %d, count %d", n, q.getters.n)
	}
	return nil
}
