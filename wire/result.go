package wire

import "github.com/qm-dev/qm/internal/msgp"

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
