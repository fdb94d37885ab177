package seglog

import (
	"reflect"
	"testing"
	"time"

	"github.com/qm-dev/qm/store"
)

func seedRecords() [][]byte {
	ops := []store.Op{
		{Kind: store.Add, Task: store.Task{ID: 1, Queue: "tasks", Seq: 7, Payload: []byte("0123456789abcdef"), ReplyTo: "results", Enqueued: time.Unix(1700000000, 5)}},
		{Kind: store.Delete, Task: store.Task{ID: 1}},
		{Kind: store.Attempts, Task: store.Task{ID: 1, Attempts: 2}},
		{Kind: store.Requeue, Task: store.Task{ID: 1, Seq: -3, Attempts: 2, LastError: "lease expired"}},
		{Kind: store.Move, Task: store.Task{ID: 9, Queue: "tasks.dead", Seq: 8, Payload: []byte{0xc0}, Attempts: 3, LastError: "boom"}},
		{Kind: kindMeta, Task: store.Task{ID: 9, Seq: 8, Attempts: 1}},
		{Kind: store.Add, Task: store.Task{ID: 2, Queue: "tasks", Seq: 9, Payload: []byte{0x01}, Enqueued: time.Unix(1700000000, 0),
			Due: time.Unix(1700000060, 0), Priority: 7, Key: "order-17"}},
		{Kind: store.Requeue, Task: store.Task{ID: 2, Seq: -4, Attempts: 1, LastError: "503", Due: time.Unix(1700000090, 0)}},
		{Kind: store.Key, Task: store.Task{ID: 2, Queue: "tasks", Key: "order-17", Enqueued: time.Unix(1700000000, 0)}},
		{Kind: store.SetPolicy, Task: store.Task{Queue: "tasks"}, Policy: store.Policy{MaxAttempts: 10, BackoffMin: time.Second, BackoffMax: time.Hour}},
		{Kind: store.ForgetKeys, Task: store.Task{Queue: "tasks"}},
		{Kind: store.Deleted, Task: store.Task{Queue: "map-1f2e", Enqueued: time.Unix(1700000000, 0), Due: time.Unix(1700000000, 0)}},
		{Kind: kindGroup, Task: store.Task{ID: 2}},
	}
	var seeds [][]byte
	var all []byte
	for i := range ops {
		r := appendRecord(nil, &ops[i])
		seeds = append(seeds, r, r[:len(r)-1])
		all = append(all, r...)
	}
	return append(seeds, all)
}

// FuzzDecode feeds arbitrary bytes to the record decoder, as recovery
// does with a damaged file: it must never panic, never read past its
// input, and every record it accepts must encode back to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, s := range seedRecords() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var d decoder
		var op store.Op
		for off := 0; off < len(b); {
			n, err := d.decode(b[off:], &op)
			if err != nil {
				return
			}
			if n <= 0 || off+n > len(b) {
				t.Fatalf("decode consumed %d of %d bytes", n, len(b)-off)
			}
			// What was accepted survives a round trip.
			again := appendRecord(nil, &op)
			var op2 store.Op
			if _, err := d.decode(again, &op2); err != nil {
				t.Fatalf("record %x decodes to %+v, which encodes to %x, which does not decode: %v", b[off:off+n], op, again, err)
			}
			if op.Task.Enqueued.UnixNano() != op2.Task.Enqueued.UnixNano() {
				t.Fatalf("enqueued %v became %v", op.Task.Enqueued, op2.Task.Enqueued)
			}
			op.Task.Enqueued, op2.Task.Enqueued = time.Time{}, time.Time{}
			if !reflect.DeepEqual(op, op2) {
				t.Fatalf("record %x decodes to %+v, which round-trips to %+v", b[off:off+n], op, op2)
			}
			off += n
		}
	})
}
