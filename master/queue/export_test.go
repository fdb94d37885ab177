package queue

import (
	"errors"
	"fmt"
	"testing"
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
	if q.order.len() != len(q.leases) {
		return fmt.Errorf("deadline order has %d leases, map %d", q.order.len(), len(q.leases))
	}
	inLists := 0
	for _, ll := range q.order.lists {
		var before *lease
		for l := ll.first; l != nil; l = l.after {
			if l.before != before || l.list != ll {
				return fmt.Errorf("deadline list broken at task %d", l.task.ID)
			}
			if q.leases[l.task.ID] != l {
				return fmt.Errorf("lease %d in deadline list, not in map", l.task.ID)
			}
			if before != nil && earlier(l, before) {
				return fmt.Errorf("deadline order broken at task %d", l.task.ID)
			}
			before = l
			inLists++
		}
		if ll.last != before {
			return fmt.Errorf("deadline list's last is not its end")
		}
	}
	for i, l := range q.order.spill {
		if l.index != i || l.list != nil || q.leases[l.task.ID] != l {
			return fmt.Errorf("spilled lease %d at %d broken", l.task.ID, i)
		}
		if i > 0 && q.order.spill.Less(i, (i-1)/2) {
			return fmt.Errorf("spill heap order broken at %d", i)
		}
	}
	if inLists+len(q.order.spill) != len(q.leases) {
		return fmt.Errorf("deadline lists hold %d leases and the spill %d, map %d", inLists, len(q.order.spill), len(q.leases))
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

// SetMaxDeletionsKept bounds the deletions a Manager keeps to n until the
// test ends.
func SetMaxDeletionsKept(t interface{ Cleanup(func()) }, n int) {
	old := maxDeletionsKept
	maxDeletionsKept = n
	t.Cleanup(func() { maxDeletionsKept = old })
}

// SetIDBlock makes the managers made until the test ends reserve task
// IDs n at a time.
func SetIDBlock(t testing.TB, n uint64) {
	old := idBlock
	idBlock = n
	t.Cleanup(func() { idBlock = old })
}
