package jsqueue

import (
	"context"
	"testing"
	"time"
)

// A write of a record sent again after its answer was lost (the stream's
// leader died just after storing it) is taken as itself: not as another
// gateway's write that won the race, which would refuse the completion
// that made it, its task marked done with no result stored. Here the
// second call stands for the send again: the same write, from the same
// revision, under the same message ID. A node alone compares the revision
// first, and answers that race lost; a cluster answers it as a duplicate.
func TestRecordWriteSentAgainIsItself(t *testing.T) {
	q := openQueues(t, startTestNode(t), Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key, stored := packRecordKey("jobs", 7), time.Now()
	// As takeHandout's: the task not done yet, or the completion refused.
	var refused bool
	markFirst := func(r packRecord) (packRecord, bool) {
		if refused = r.done&1 != 0; refused {
			return r, false
		}
		return packRecord{done: r.done | 1, delivered: 1}, true
	}

	// Both writes below carry one ID, as one write and its send again do.
	q.writeID = func() string { return "qm-w-test-1" }
	first, err := q.updateRecord(ctx, key, stored, nil, true, markFirst)
	if err != nil || first.rev == 0 || first.done != 1 {
		t.Fatalf("first write: %+v, %v", first, err)
	}
	again, err := q.updateRecord(ctx, key, stored, &recordState{}, true, markFirst)
	if err != nil || refused || again.rev != first.rev || again.done != 1 || !again.fresh {
		t.Fatalf("the write sent again: %+v (refused %v), %v; want it taken as the first, at revision %d", again, refused, err, first.rev)
	}
	// Another write from the same old revision lost the race: it is
	// applied to what is there, a write of its own.
	q.writeID = newWriteID
	other, err := q.updateRecord(ctx, key, stored, &recordState{}, true, func(r packRecord) (packRecord, bool) {
		return packRecord{done: r.done | 2, delivered: r.delivered}, true
	})
	if err != nil || other.rev <= first.rev || other.done != 3 {
		t.Fatalf("another gateway's write: %+v, %v; want both tasks done, after revision %d", other, err, first.rev)
	}
}

// The same for the record of deliveries (a key-value bucket): a write
// sent again is itself, another from the same revision lost the race, and
// one over a deleted entry writes over its marker.
func TestDeliveryWriteSentAgainIsItself(t *testing.T) {
	q := openQueues(t, startTestNode(t), Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := q.deliveries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const key = "JOBS.7"
	q.writeID = func() string { return "qm-w-test-2" }
	if again, err := q.casPut(ctx, key, nil, []byte("1")); again || err != nil {
		t.Fatalf("first write: again %v, %v", again, err)
	}
	if again, err := q.casPut(ctx, key, nil, []byte("1")); again || err != nil {
		t.Fatalf("the write sent again: again %v, %v; want it taken as the first", again, err)
	}
	q.writeID = newWriteID
	if again, err := q.casPut(ctx, key, nil, []byte("2")); !again || err != nil {
		t.Fatalf("another write from no entry: again %v, %v; want the race lost", again, err)
	}
	if err := kv.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if again, err := q.casPut(ctx, key, nil, []byte("3")); again || err != nil {
		t.Fatalf("a write over the deleted entry: again %v, %v", again, err)
	}
	if e, err := kv.Get(ctx, key); err != nil || string(e.Value()) != "3" {
		t.Fatalf("the entry: %v, %v; want 3", e, err)
	}
}

// A write of marks whose outcome is not known (its answer lost) is taken
// back if it was stored and is still the record's last write: its tasks'
// results were not stored, and marked done nobody would run them. After
// another write, the marks may have been counted, and stay.
func TestUnconfirmedMarksAreTakenBack(t *testing.T) {
	q := openQueues(t, startTestNode(t), Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := &stream{queue: "jobs"}
	h := &packedHandout{s: s, tok: ackToken{seq: 7, delivered: 1}, index: 0, tasks: 4, stored: time.Now()}
	mark := func(bits uint64) func(packRecord) (packRecord, bool) {
		return func(r packRecord) (packRecord, bool) {
			return packRecord{done: r.done | bits, delivered: 1}, true
		}
	}
	done := func() uint64 {
		t.Helper()
		r, err := q.readRecord(ctx, h.key(), h.stored)
		if err != nil {
			t.Fatal(err)
		}
		return r.done
	}

	q.writeID = func() string { return "qm-w-test-3" }
	if _, err := q.updateRecord(ctx, h.key(), h.stored, nil, true, mark(0b011)); err != nil {
		t.Fatal(err)
	}
	q.writeID = newWriteID
	q.undoWrite(h, "qm-w-test-3", 0b011)
	if got := done(); got != 0 {
		t.Fatalf("marks %b after the write was taken back, want none", got)
	}

	q.writeID = func() string { return "qm-w-test-4" }
	if _, err := q.updateRecord(ctx, h.key(), h.stored, nil, true, mark(0b011)); err != nil {
		t.Fatal(err)
	}
	q.writeID = newWriteID
	if _, err := q.updateRecord(ctx, h.key(), h.stored, nil, true, mark(0b100)); err != nil {
		t.Fatal(err)
	}
	q.undoWrite(h, "qm-w-test-4", 0b011)
	if got := done(); got != 0b111 {
		t.Fatalf("marks %b after a write over the unconfirmed one, want 111: they stay", got)
	}
}
