package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Hand-written msgpack for the messages of the hot path (put, get,
// complete): msgpack's reflection spent a third of the master's time and
// most of its allocations on them. The encodings are exactly those of the
// struct tags in message.go, so either side may still use reflection; a
// test checks both ways.

// EncodeMsgpack implements msgpack.CustomEncoder. Into a bytes.Buffer (a
// Codec's), it appends the task in one write (appendTask); a get response
// carries up to thousands, and a dozen encoder calls per task were a tenth
// of the master's time.
func (t Task) EncodeMsgpack(enc *msgpack.Encoder) error {
	if buf, ok := enc.Writer().(*bytes.Buffer); ok && t.Attempt >= 0 {
		buf.Write(appendTask(buf.AvailableBuffer(), &t))
		return nil
	}
	n := 5
	if t.ReplyTo != "" {
		n++
	}
	if t.LastError != "" {
		n++
	}
	w := fieldWriter{enc: enc}
	w.mapLen(n)
	w.uint("id", t.ID)
	w.str("q", t.Queue)
	w.raw("payload", t.Payload)
	if t.ReplyTo != "" {
		w.str("reply_to", t.ReplyTo)
	}
	w.int("attempt", int64(t.Attempt))
	if t.LastError != "" {
		w.str("last_err", t.LastError)
	}
	w.key("enqueued")
	if w.err == nil {
		w.err = enc.EncodeTime(t.Enqueued)
	}
	return w.err
}

// appendTask appends t with the very bytes EncodeMsgpack's field writer
// gives it (for Attempt >= 0; a test compares them).
func appendTask(b []byte, t *Task) []byte {
	n := byte(5)
	if t.ReplyTo != "" {
		n++
	}
	if t.LastError != "" {
		n++
	}
	b = append(b, 0x80|n)
	b = appendStr(b, "id")
	b = appendUint(b, t.ID)
	b = appendStr(b, "q")
	b = appendStr(b, t.Queue)
	b = appendStr(b, "payload")
	if len(t.Payload) == 0 {
		b = append(b, msgpcode.Nil)
	} else {
		b = append(b, t.Payload...)
	}
	if t.ReplyTo != "" {
		b = appendStr(b, "reply_to")
		b = appendStr(b, t.ReplyTo)
	}
	b = appendStr(b, "attempt")
	b = appendUint(b, uint64(t.Attempt))
	if t.LastError != "" {
		b = appendStr(b, "last_err")
		b = appendStr(b, t.LastError)
	}
	b = appendStr(b, "enqueued")
	return appendTime(b, t.Enqueued)
}

// appendTime appends tm as msgpack's Encoder.EncodeTime does: the
// timestamp extension (type -1) in 4, 8 or 12 bytes.
func appendTime(b []byte, tm time.Time) []byte {
	const timeExt = 0xff // int8(-1)
	secs := uint64(tm.Unix())
	if secs>>34 == 0 {
		data := uint64(tm.Nanosecond())<<34 | secs
		if data&0xffffffff00000000 == 0 {
			return binary.BigEndian.AppendUint32(append(b, msgpcode.FixExt4, timeExt), uint32(data))
		}
		return binary.BigEndian.AppendUint64(append(b, msgpcode.FixExt8, timeExt), data)
	}
	b = append(b, msgpcode.Ext8, 12, timeExt)
	b = binary.BigEndian.AppendUint32(b, uint32(tm.Nanosecond()))
	return binary.BigEndian.AppendUint64(b, secs)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (t *Task) DecodeMsgpack(dec *msgpack.Decoder) error { return t.decode(dec, nil) }

// decode decodes a task; the tasks of one response share their queue and
// reply-to names through same instead of allocating each anew.
func (t *Task) decode(dec *msgpack.Decoder, same *Task) error {
	var f fields
	f.start(dec)
	for {
		key, ok := f.next()
		if !ok {
			return f.err
		}
		var err error
		switch string(key) {
		case "id":
			t.ID, err = dec.DecodeUint64()
		case "q":
			t.Queue, err = f.string(same, func(t *Task) string { return t.Queue })
		case "payload":
			t.Payload, err = decodeRaw(dec)
		case "reply_to":
			t.ReplyTo, err = f.string(same, func(t *Task) string { return t.ReplyTo })
		case "attempt":
			t.Attempt, err = dec.DecodeInt()
		case "last_err":
			t.LastError, err = dec.DecodeString()
		case "enqueued":
			t.Enqueued, err = dec.DecodeTime()
		default:
			err = dec.Skip()
		}
		if err != nil {
			return fieldError(key, err)
		}
	}
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (c Completion) EncodeMsgpack(enc *msgpack.Encoder) error {
	n := 1
	if len(c.Value) > 0 {
		n++
	}
	if c.Error != "" {
		n++
	}
	w := fieldWriter{enc: enc}
	w.mapLen(n)
	w.uint("id", c.ID)
	if len(c.Value) > 0 {
		w.raw("value", c.Value)
	}
	if c.Error != "" {
		w.str("err", c.Error)
	}
	return w.err
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (c *Completion) DecodeMsgpack(dec *msgpack.Decoder) error {
	var f fields
	f.start(dec)
	for {
		key, ok := f.next()
		if !ok {
			return f.err
		}
		var err error
		switch string(key) {
		case "id":
			c.ID, err = dec.DecodeUint64()
		case "value":
			c.Value, err = decodeRaw(dec)
		case "err":
			c.Error, err = dec.DecodeString()
		default:
			err = dec.Skip()
		}
		if err != nil {
			return fieldError(key, err)
		}
	}
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r Request) EncodeMsgpack(enc *msgpack.Encoder) error {
	n := 1
	for _, set := range [...]bool{r.Queue != "", len(r.Items) > 0, r.ReplyTo != "", r.Max != 0,
		r.Timeout != 0, r.Lease != 0, r.NoAck, len(r.IDs) > 0, r.Error != "", len(r.Results) > 0,
		r.ResultQueue != "", r.Role != "", r.Name != "", r.Then != nil} {
		if set {
			n++
		}
	}
	w := fieldWriter{enc: enc}
	w.mapLen(n)
	w.uint("op", uint64(r.Op))
	if r.Queue != "" {
		w.str("q", r.Queue)
	}
	if len(r.Items) > 0 {
		w.key("items")
		w.arrayLen(len(r.Items))
		for _, it := range r.Items {
			w.rawValue(it)
		}
	}
	if r.ReplyTo != "" {
		w.str("reply_to", r.ReplyTo)
	}
	if r.Max != 0 {
		w.int("max", int64(r.Max))
	}
	if r.Timeout != 0 {
		w.int("timeout", int64(r.Timeout))
	}
	if r.Lease != 0 {
		w.int("lease", int64(r.Lease))
	}
	if r.NoAck {
		w.key("no_ack")
		if w.err == nil {
			w.err = enc.EncodeBool(true)
		}
	}
	if len(r.IDs) > 0 {
		w.uints("ids", r.IDs)
	}
	if r.Error != "" {
		w.str("err", r.Error)
	}
	if len(r.Results) > 0 {
		w.key("results")
		w.arrayLen(len(r.Results))
		for i := range r.Results {
			if w.err == nil {
				w.err = r.Results[i].EncodeMsgpack(enc)
			}
		}
	}
	if r.ResultQueue != "" {
		w.str("result_q", r.ResultQueue)
	}
	if r.Role != "" {
		w.str("role", r.Role)
	}
	if r.Name != "" {
		w.str("name", r.Name)
	}
	if r.Then != nil {
		w.key("then")
		if w.err == nil {
			w.err = r.Then.EncodeMsgpack(enc)
		}
	}
	return w.err
}

// errNestedThen refuses a chain of more than two requests (or responses),
// so that a hostile frame cannot make the decoder recurse without bound.
var errNestedThen = errors.New("a chained request may not have a Then of its own")

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Request) DecodeMsgpack(dec *msgpack.Decoder) error { return r.decode(dec, false) }

func (r *Request) decode(dec *msgpack.Decoder, chained bool) error {
	var f fields
	f.start(dec)
	for {
		key, ok := f.next()
		if !ok {
			return f.err
		}
		var err error
		switch string(key) {
		case "op":
			var op uint8
			op, err = dec.DecodeUint8()
			r.Op = Op(op)
		case "q":
			r.Queue, err = dec.DecodeString()
		case "items":
			var n int
			if n, err = decodeArrayLen(dec); err == nil && n > 0 {
				r.Items = make([]msgpack.RawMessage, n)
				for i := 0; i < n && err == nil; i++ {
					r.Items[i], err = decodeRaw(dec)
				}
			}
		case "reply_to":
			r.ReplyTo, err = dec.DecodeString()
		case "max":
			r.Max, err = dec.DecodeInt()
		case "timeout":
			r.Timeout, err = decodeDuration(dec)
		case "lease":
			r.Lease, err = decodeDuration(dec)
		case "no_ack":
			r.NoAck, err = dec.DecodeBool()
		case "ids":
			r.IDs, err = decodeUints(dec)
		case "err":
			r.Error, err = dec.DecodeString()
		case "results":
			var n int
			if n, err = decodeArrayLen(dec); err == nil && n > 0 {
				r.Results = make([]Completion, n)
				for i := 0; i < n && err == nil; i++ {
					err = r.Results[i].DecodeMsgpack(dec)
				}
			}
		case "result_q":
			r.ResultQueue, err = dec.DecodeString()
		case "role":
			r.Role, err = dec.DecodeString()
		case "name":
			r.Name, err = dec.DecodeString()
		case "then":
			if chained {
				return errNestedThen
			}
			r.Then = new(Request)
			err = r.Then.decode(dec, true)
		default:
			err = dec.Skip()
		}
		if err != nil {
			return fieldError(key, err)
		}
	}
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (r Response) EncodeMsgpack(enc *msgpack.Encoder) error {
	n := 0
	for _, set := range [...]bool{r.Code != 0, r.Error != "", len(r.IDs) > 0, len(r.Tasks) > 0,
		len(r.Stats) > 0, len(r.Clients) > 0, len(r.Queues) > 0, r.Count != 0, r.Lease != 0, r.ClientID != 0, r.Then != nil} {
		if set {
			n++
		}
	}
	w := fieldWriter{enc: enc}
	w.mapLen(n)
	if r.Code != 0 {
		w.uint("code", uint64(r.Code))
	}
	if r.Error != "" {
		w.str("err", r.Error)
	}
	if len(r.IDs) > 0 {
		w.uints("ids", r.IDs)
	}
	if len(r.Tasks) > 0 {
		w.key("tasks")
		w.arrayLen(len(r.Tasks))
		for i := range r.Tasks {
			if w.err == nil {
				w.err = r.Tasks[i].EncodeMsgpack(enc)
			}
		}
	}
	// The rest are rare (admin calls): reflection is fine.
	if len(r.Stats) > 0 {
		w.value("stats", r.Stats)
	}
	if len(r.Clients) > 0 {
		w.value("clients", r.Clients)
	}
	if len(r.Queues) > 0 {
		w.value("queues", r.Queues)
	}
	if r.Count != 0 {
		w.int("count", int64(r.Count))
	}
	if r.Lease != 0 {
		w.int("lease", int64(r.Lease))
	}
	if r.ClientID != 0 {
		w.uint("client_id", r.ClientID)
	}
	if r.Then != nil {
		w.key("then")
		if w.err == nil {
			w.err = r.Then.EncodeMsgpack(enc)
		}
	}
	return w.err
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (r *Response) DecodeMsgpack(dec *msgpack.Decoder) error { return r.decode(dec, false) }

func (r *Response) decode(dec *msgpack.Decoder, chained bool) error {
	var f fields
	f.start(dec)
	for {
		key, ok := f.next()
		if !ok {
			return f.err
		}
		var err error
		switch string(key) {
		case "code":
			var c uint16
			c, err = dec.DecodeUint16()
			r.Code = Code(c)
		case "err":
			r.Error, err = dec.DecodeString()
		case "ids":
			r.IDs, err = decodeUints(dec)
		case "tasks":
			var n int
			if n, err = decodeArrayLen(dec); err == nil && n > 0 {
				r.Tasks = make([]Task, n)
				for i := 0; i < n && err == nil; i++ {
					var same *Task
					if i > 0 {
						same = &r.Tasks[i-1]
					}
					err = r.Tasks[i].decode(dec, same)
				}
			}
		case "stats":
			err = dec.Decode(&r.Stats)
		case "clients":
			err = dec.Decode(&r.Clients)
		case "queues":
			err = dec.Decode(&r.Queues)
		case "count":
			r.Count, err = dec.DecodeInt()
		case "lease":
			r.Lease, err = decodeDuration(dec)
		case "client_id":
			r.ClientID, err = dec.DecodeUint64()
		case "then":
			if chained {
				return errNestedThen
			}
			r.Then = new(Response)
			err = r.Then.decode(dec, true)
		default:
			err = dec.Skip()
		}
		if err != nil {
			return fieldError(key, err)
		}
	}
}

// fieldWriter writes map entries and keeps the first error.
type fieldWriter struct {
	enc *msgpack.Encoder
	err error
}

func (w *fieldWriter) mapLen(n int) {
	if w.err == nil {
		w.err = w.enc.EncodeMapLen(n)
	}
}

func (w *fieldWriter) arrayLen(n int) {
	if w.err == nil {
		w.err = w.enc.EncodeArrayLen(n)
	}
}

func (w *fieldWriter) key(k string) {
	if w.err == nil {
		w.err = w.enc.EncodeString(k)
	}
}

func (w *fieldWriter) str(k, v string) {
	w.key(k)
	if w.err == nil {
		w.err = w.enc.EncodeString(v)
	}
}

func (w *fieldWriter) uint(k string, v uint64) {
	w.key(k)
	if w.err == nil {
		w.err = w.enc.EncodeUint(v)
	}
}

func (w *fieldWriter) int(k string, v int64) {
	w.key(k)
	if w.err == nil {
		w.err = w.enc.EncodeInt(v)
	}
}

func (w *fieldWriter) uints(k string, vs []uint64) {
	w.key(k)
	w.arrayLen(len(vs))
	for _, v := range vs {
		if w.err == nil {
			w.err = w.enc.EncodeUint(v)
		}
	}
}

// raw writes an already encoded value; an empty one is nil, as msgpack's
// RawMessage encodes it.
func (w *fieldWriter) raw(k string, v msgpack.RawMessage) {
	w.key(k)
	w.rawValue(v)
}

func (w *fieldWriter) rawValue(v msgpack.RawMessage) {
	if w.err != nil {
		return
	}
	if len(v) == 0 {
		w.err = w.enc.EncodeNil()
		return
	}
	w.err = v.EncodeMsgpack(w.enc)
}

func (w *fieldWriter) value(k string, v any) {
	w.key(k)
	if w.err == nil {
		w.err = w.enc.Encode(v)
	}
}

// fields reads the entries of a map (nil counts as empty) one key at a
// time. A decoder keeps it on its stack: from a frame (frameReader) the
// keys are slices of the frame, and no closure or key escapes, so
// decoding a struct allocates nothing of its own.
type fields struct {
	dec *msgpack.Decoder
	fr  *frameReader // nil if dec reads from something else
	n   int          // entries left
	err error
}

func (f *fields) start(dec *msgpack.Decoder) {
	f.dec = dec
	f.fr, _ = dec.Buffered().(*frameReader)
	// msgpack's DecodeMapLen reads a map inside an ext value too, whose
	// bytes msgp.Validate takes as opaque: a message is a plain map.
	if c, err := dec.PeekCode(); err == nil && msgpcode.IsExt(c) {
		f.err = errExtMessage
		return
	}
	f.n, f.err = dec.DecodeMapLen()
}

// errExtMessage refuses a message wrapped in a msgpack ext value.
var errExtMessage = errors.New("a message must be a map, not an ext value")

// decodeArrayLen reads an array's length and refuses one that claims more
// elements than bytes are left to read: every element takes one at least,
// so nothing is allocated from a length the data cannot back.
func decodeArrayLen(dec *msgpack.Decoder) (int, error) {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return 0, err
	}
	if r, ok := dec.Buffered().(interface{ Len() int }); ok && n > r.Len() {
		return 0, fmt.Errorf("array of %d elements in %d bytes", n, r.Len())
	}
	return n, nil
}

// next reads the next key; the caller then consumes its value. It returns
// false at the end of the map or on an error, kept in f.err.
func (f *fields) next() (key []byte, ok bool) {
	if f.err != nil || f.n <= 0 {
		return nil, false
	}
	f.n--
	kn, err := f.dec.DecodeBytesLen()
	switch {
	case err != nil:
	case kn <= 0:
		return nil, true
	case f.fr != nil:
		if kn > f.fr.Len() {
			err = io.ErrUnexpectedEOF
			break
		}
		key = f.fr.b[f.fr.i : f.fr.i+kn]
		f.fr.i += kn
		return key, true
	default:
		key = make([]byte, kn)
		err = f.dec.ReadFull(key)
	}
	if err != nil {
		f.err = err
		return nil, false
	}
	return key, true
}

// string reads a string value. If same is not nil and its field (by
// field) holds the same text, that string is returned instead of a new one.
func (f *fields) string(same *Task, field func(*Task) string) (string, error) {
	if f.fr == nil || same == nil {
		return f.dec.DecodeString()
	}
	n, err := f.dec.DecodeBytesLen()
	if err != nil || n <= 0 {
		return "", err
	}
	if n > f.fr.Len() {
		return "", io.ErrUnexpectedEOF
	}
	b := f.fr.b[f.fr.i : f.fr.i+n]
	f.fr.i += n
	if prev := field(same); prev == string(b) {
		return prev, nil
	}
	return string(b), nil
}

// fieldError names the field whose value failed to decode; it copies the
// key, so that the key need not escape in the common case.
func fieldError(key []byte, err error) error {
	return fmt.Errorf("field %q: %w", string(key), err)
}

// decodeRaw reads one value as raw bytes; nil reads as empty, as msgpack's
// RawMessage decoding does. From a frame read by Codec (or DecodeRequest)
// it is a slice of the frame, not a copy.
func decodeRaw(dec *msgpack.Decoder) (msgpack.RawMessage, error) {
	var raw []byte
	var err error
	if fr, ok := dec.Buffered().(*frameReader); ok {
		raw, err = fr.next()
	} else {
		raw, err = dec.DecodeRaw()
	}
	if err != nil || len(raw) == 1 && raw[0] == 0xc0 {
		return nil, err
	}
	return raw, nil
}

func decodeDuration(dec *msgpack.Decoder) (time.Duration, error) {
	n, err := dec.DecodeInt64()
	return time.Duration(n), err
}

func decodeUints(dec *msgpack.Decoder) ([]uint64, error) {
	n, err := decodeArrayLen(dec)
	if err != nil || n <= 0 {
		return nil, err
	}
	out := make([]uint64, n)
	for i := range out {
		if out[i], err = dec.DecodeUint64(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
