package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Hand-written msgpack for the messages of the hot path (put, get,
// complete): msgpack's reflection spent a third of the master's time and
// most of its allocations on them. The encodings are exactly those of the
// struct tags in message.go with compact ints, as a Codec has always
// written them, so either side may still use reflection; tests check both
// ways. The encoders append with internal/msgp (a Codec appends these
// messages itself; EncodeMsgpack serves msgpack.Marshal); the decoders
// read field by field through msgpack's Decoder. The admin fields of a
// Response (stats, clients, queues) are rare and keep reflection.

// appendMessage appends v: a Request or Response by hand, anything else
// by reflection.
func appendMessage(b []byte, v any) ([]byte, error) {
	switch m := v.(type) {
	case *Request:
		if m != nil {
			return appendRequest(b, m), nil
		}
	case *Response:
		if m != nil {
			return appendResponse(b, m)
		}
	}
	return appendReflect(b, v)
}

// appendReflect appends v encoded by reflection, with compact ints as a
// Codec has always written it.
func appendReflect(b []byte, v any) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	enc := msgpack.GetEncoder()
	enc.Reset(buf)
	enc.UseCompactInts(true)
	err := enc.Encode(v)
	msgpack.PutEncoder(enc)
	return buf.Bytes(), err
}

// encodeTo is where an EncodeMsgpack method appends its message: in place
// into a bytes.Buffer (msgpack.Marshal's), then written by writeEncoded.
func encodeTo(enc *msgpack.Encoder) []byte {
	if buf, ok := enc.Writer().(*bytes.Buffer); ok {
		return buf.AvailableBuffer()
	}
	return nil
}

func writeEncoded(enc *msgpack.Encoder, b []byte) error {
	_, err := enc.Writer().Write(b)
	return err
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (t Task) EncodeMsgpack(enc *msgpack.Encoder) error {
	return writeEncoded(enc, appendTask(encodeTo(enc), &t))
}

// appendTask appends t; a get response carries up to thousands.
func appendTask(b []byte, t *Task) []byte {
	n := 5
	if t.ReplyTo != "" {
		n++
	}
	if t.LastError != "" {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	b = msgp.AppendStr(b, "id")
	b = msgp.AppendUint(b, t.ID)
	b = msgp.AppendStr(b, "q")
	b = msgp.AppendStr(b, t.Queue)
	b = msgp.AppendStr(b, "payload")
	b = msgp.AppendRaw(b, t.Payload)
	if t.ReplyTo != "" {
		b = msgp.AppendStr(b, "reply_to")
		b = msgp.AppendStr(b, t.ReplyTo)
	}
	b = msgp.AppendStr(b, "attempt")
	b = msgp.AppendInt(b, int64(t.Attempt))
	if t.LastError != "" {
		b = msgp.AppendStr(b, "last_err")
		b = msgp.AppendStr(b, t.LastError)
	}
	return msgp.AppendTime(msgp.AppendStr(b, "enqueued"), t.Enqueued)
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
	return writeEncoded(enc, appendCompletion(encodeTo(enc), &c))
}

func appendCompletion(b []byte, c *Completion) []byte {
	n := 1
	if len(c.Value) > 0 {
		n++
	}
	if c.Error != "" {
		n++
	}
	b = msgp.AppendMapHeader(b, n)
	b = msgp.AppendStr(b, "id")
	b = msgp.AppendUint(b, c.ID)
	if len(c.Value) > 0 {
		b = msgp.AppendStr(b, "value")
		b = msgp.AppendRaw(b, c.Value)
	}
	if c.Error != "" {
		b = msgp.AppendStr(b, "err")
		b = msgp.AppendStr(b, c.Error)
	}
	return b
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
	return writeEncoded(enc, appendRequest(encodeTo(enc), &r))
}

func appendRequest(b []byte, r *Request) []byte {
	n := 1
	for _, set := range [...]bool{r.Queue != "", len(r.Items) > 0, r.ReplyTo != "", r.Max != 0,
		r.Timeout != 0, r.Lease != 0, r.NoAck, len(r.IDs) > 0, r.Error != "", len(r.Results) > 0,
		r.ResultQueue != "", r.Role != "", r.Name != "", r.Then != nil} {
		if set {
			n++
		}
	}
	b = msgp.AppendMapHeader(b, n)
	b = msgp.AppendStr(b, "op")
	b = msgp.AppendUint(b, uint64(r.Op))
	if r.Queue != "" {
		b = msgp.AppendStr(b, "q")
		b = msgp.AppendStr(b, r.Queue)
	}
	if len(r.Items) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "items"), len(r.Items))
		for _, it := range r.Items {
			b = msgp.AppendRaw(b, it)
		}
	}
	if r.ReplyTo != "" {
		b = msgp.AppendStr(b, "reply_to")
		b = msgp.AppendStr(b, r.ReplyTo)
	}
	if r.Max != 0 {
		b = msgp.AppendStr(b, "max")
		b = msgp.AppendInt(b, int64(r.Max))
	}
	if r.Timeout != 0 {
		b = msgp.AppendStr(b, "timeout")
		b = msgp.AppendInt(b, int64(r.Timeout))
	}
	if r.Lease != 0 {
		b = msgp.AppendStr(b, "lease")
		b = msgp.AppendInt(b, int64(r.Lease))
	}
	if r.NoAck {
		b = msgp.AppendBool(msgp.AppendStr(b, "no_ack"), true)
	}
	if len(r.IDs) > 0 {
		b = appendUints(msgp.AppendStr(b, "ids"), r.IDs)
	}
	if r.Error != "" {
		b = msgp.AppendStr(b, "err")
		b = msgp.AppendStr(b, r.Error)
	}
	if len(r.Results) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "results"), len(r.Results))
		for i := range r.Results {
			b = appendCompletion(b, &r.Results[i])
		}
	}
	if r.ResultQueue != "" {
		b = msgp.AppendStr(b, "result_q")
		b = msgp.AppendStr(b, r.ResultQueue)
	}
	if r.Role != "" {
		b = msgp.AppendStr(b, "role")
		b = msgp.AppendStr(b, r.Role)
	}
	if r.Name != "" {
		b = msgp.AppendStr(b, "name")
		b = msgp.AppendStr(b, r.Name)
	}
	if r.Then != nil {
		b = appendRequest(msgp.AppendStr(b, "then"), r.Then)
	}
	return b
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
	b, err := appendResponse(encodeTo(enc), &r)
	if err != nil {
		return err
	}
	return writeEncoded(enc, b)
}

func appendResponse(b []byte, r *Response) ([]byte, error) {
	n := 0
	for _, set := range [...]bool{r.Code != 0, r.Error != "", len(r.IDs) > 0, len(r.Tasks) > 0,
		len(r.Stats) > 0, len(r.Clients) > 0, len(r.Queues) > 0, r.Count != 0, r.Lease != 0, r.ClientID != 0, r.Then != nil} {
		if set {
			n++
		}
	}
	b = msgp.AppendMapHeader(b, n)
	if r.Code != 0 {
		b = msgp.AppendStr(b, "code")
		b = msgp.AppendUint(b, uint64(r.Code))
	}
	if r.Error != "" {
		b = msgp.AppendStr(b, "err")
		b = msgp.AppendStr(b, r.Error)
	}
	if len(r.IDs) > 0 {
		b = appendUints(msgp.AppendStr(b, "ids"), r.IDs)
	}
	if len(r.Tasks) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "tasks"), len(r.Tasks))
		for i := range r.Tasks {
			b = appendTask(b, &r.Tasks[i])
		}
	}
	if len(r.Stats) > 0 || len(r.Clients) > 0 || len(r.Queues) > 0 {
		var err error
		if b, err = appendAdmin(b, r); err != nil {
			return b, err
		}
	}
	if r.Count != 0 {
		b = msgp.AppendStr(b, "count")
		b = msgp.AppendInt(b, int64(r.Count))
	}
	if r.Lease != 0 {
		b = msgp.AppendStr(b, "lease")
		b = msgp.AppendInt(b, int64(r.Lease))
	}
	if r.ClientID != 0 {
		b = msgp.AppendStr(b, "client_id")
		b = msgp.AppendUint(b, r.ClientID)
	}
	if r.Then != nil {
		return appendResponse(msgp.AppendStr(b, "then"), r.Then)
	}
	return b, nil
}

// appendAdmin appends the fields of the admin calls' responses, rare
// enough for reflection.
func appendAdmin(b []byte, r *Response) ([]byte, error) {
	var err error
	if len(r.Stats) > 0 {
		if b, err = appendReflect(msgp.AppendStr(b, "stats"), r.Stats); err != nil {
			return b, err
		}
	}
	if len(r.Clients) > 0 {
		if b, err = appendReflect(msgp.AppendStr(b, "clients"), r.Clients); err != nil {
			return b, err
		}
	}
	if len(r.Queues) > 0 {
		b, err = appendReflect(msgp.AppendStr(b, "queues"), r.Queues)
	}
	return b, err
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

// appendUints appends vs as an array of integers.
func appendUints(b []byte, vs []uint64) []byte {
	b = msgp.AppendArrayHeader(b, len(vs))
	for _, v := range vs {
		b = msgp.AppendUint(b, v)
	}
	return b
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
