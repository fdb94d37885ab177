package wire

import "github.com/qm-dev/qm/internal/msgp"

// ResultSize is at least the length AppendResult appends for r, so that
// a buffer of the sum for a batch is filled with no copy as it grows (for
// 4 KiB results, growing one copied each byte three times over).
func ResultSize(r *Result) int {
	// The map header, the five keys, two ints and two string headers take
	// at most 64 bytes, an empty value 1.
	return 65 + len(r.Worker) + len(r.Value) + len(r.Error)
}

// AppendResult appends r, msgpack-encoded as msgpack.Marshal(r) would
// decode it, to b. The master publishes every result through it: it
// needs no reflection and no allocation beyond growing b.
func AppendResult(b []byte, r *Result) []byte {
	n := 4
	if r.Error != "" {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	b = msgp.AppendStr(b, "task_id")
	b = msgp.AppendUint(b, r.TaskID)
	b = msgp.AppendStr(b, "worker")
	b = msgp.AppendStr(b, r.Worker)
	b = msgp.AppendStr(b, "attempt")
	b = msgp.AppendInt(b, int64(r.Attempt))
	b = msgp.AppendStr(b, "value")
	b = msgp.AppendRaw(b, r.Value)
	if r.Error != "" {
		b = msgp.AppendStr(b, "error")
		b = msgp.AppendStr(b, r.Error)
	}
	return b
}
