package wire

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/qm-dev/qm/internal/msgp"
	"github.com/vmihailenco/msgpack/v5"
)

// Hand-written msgpack, built with internal/msgp, for the messages of the
// hot path (put, get, complete): msgpack's reflection spent a third of the
// master's time and most of its allocations on them. The encodings are
// exactly those of the struct tags in message.go with compact ints, as a
// Codec has always written them, so either side may still use
// reflection; tests check both ways. A Codec appends and reads these
// messages itself; the EncodeMsgpack and DecodeMsgpack methods serve
// msgpack.Marshal and msgpack.Unmarshal. The admin fields of a Response
// (stats, clients, queues) are rare and keep reflection.

// appendMessage appends v: a Request or Response by hand, anything else
// by reflection.
func appendMessage(b []byte, v any) ([]byte, error) {
	switch m := v.(type) {
	case *Request:
		if m != nil {
			return appendRequest(slices.Grow(b, m.payloadSize()), m), nil
		}
	case *Response:
		if m != nil {
			return appendResponse(slices.Grow(b, m.payloadSize()), m)
		}
	}
	return appendReflect(b, v)
}

// payloadSize is a little more than the bytes r's items and results take
// encoded: appendMessage grows its buffer by that much at once, so that a
// put of 1,000 4 KiB items is appended with no copy as the buffer grows.
func (r *Request) payloadSize() int {
	n := 0
	for r != nil {
		for _, it := range r.Items {
			n += len(it)
		}
		for i := range r.Results {
			n += len(r.Results[i].Value) + len(r.Results[i].Error) + 24
		}
		n += 9*len(r.IDs) + 64
		r = r.Then
	}
	return n
}

// payloadSize is a little more than the bytes r's tasks take encoded.
func (r *Response) payloadSize() int {
	n := 0
	for r != nil {
		for i := range r.Tasks {
			t := &r.Tasks[i]
			n += len(t.Payload) + len(t.Queue) + len(t.ReplyTo) + len(t.LastError) + 100
		}
		n += 9*len(r.IDs) + 64
		r = r.Then
	}
	return n
}

// decodeMessage decodes the frame body b into v, which must be zeroed
// first: fields b does not name are left untouched. b must be exactly one
// value within msgp's bounds. A Request or Response is read by hand, with
// a Reader, which checks each length before acting on it (walking the
// frame first as well, with msgp.Validate, was a tenth of a worker's
// time), and zeroed again if it fails. Anything else is checked whole,
// before reflection may allocate from a length. Every error wraps
// ErrBadRequest, but a Response's, which wraps ErrBadResponse.
func decodeMessage(b []byte, v any) error {
	switch m := v.(type) {
	case *Request:
		if m != nil {
			rd := msgp.NewReader(b)
			if err := wholly(rd, m.decode(rd, false)); err != nil {
				*m = Request{Op: m.Op} // as far as it was read, for the error's metrics
				return badRequest(err)
			}
			return nil
		}
	case *Response:
		if m != nil {
			rd := msgp.NewReader(b)
			if err := wholly(rd, m.decode(rd, false)); err != nil {
				*m = Response{}
				return fmt.Errorf("%w: %v", ErrBadResponse, err)
			}
			return nil
		}
	}
	return badRequest(Unmarshal(b, v))
}

// Unmarshal decodes b into v by reflection, as msgpack.Unmarshal does,
// for bytes from another process: b must be exactly one well-formed value
// within msgp's bounds (checked before reflection may allocate from a
// length), and a panic of the decoder is an error. (msgpack v5 panics on
// a nil for a time.Time field: "reflect: call of reflect.Value.IsNil on
// struct Value".)
func Unmarshal(b []byte, v any) error {
	if err := msgp.Validate(b); err != nil {
		return err
	}
	return unmarshalChecked(b, v)
}

// unmarshalChecked is Unmarshal of b already checked.
func unmarshalChecked(b []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: msgpack could not decode it: %v", msgp.ErrMalformed, p)
		}
	}()
	return msgpack.Unmarshal(b, v)
}

// wholly is err, or an error if rd has bytes left after the one message
// it was read for.
func wholly(rd *msgp.Reader, err error) error {
	if err == nil && rd.Len() > 0 {
		err = fmt.Errorf("%w: %d trailing bytes", msgp.ErrMalformed, rd.Len())
	}
	return err
}

// badRequest wraps a decoding error in ErrBadRequest.
func badRequest(err error) error {
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadRequest, err)
	}
	return nil
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

// decodeFrom reads the value at dec whole, for a DecodeMsgpack method to
// read it as a Codec does.
func decodeFrom(dec *msgpack.Decoder) (*msgp.Reader, error) {
	raw, err := dec.DecodeRaw()
	if err != nil {
		return nil, err
	}
	return msgp.NewReader(raw), nil
}

// EncodeMsgpack implements msgpack.CustomEncoder.
func (t Task) EncodeMsgpack(enc *msgpack.Encoder) error {
	return writeEncoded(enc, appendTask(encodeTo(enc), &t))
}

// TaskSizeBound is at least the length appendTask appends for t: its
// strings' and payload's lengths, and at most 200 bytes of keys, headers,
// numbers and times.
func TaskSizeBound(t *Task) int {
	return 200 + len(t.Queue) + len(t.Payload) + len(t.ReplyTo) + len(t.LastError) + len(t.Token)
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
	if t.Priority != 0 {
		n++
	}
	if !t.Due.IsZero() {
		n++
	}
	if t.Token != "" {
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
	if t.Priority != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "pri"), int64(t.Priority))
	}
	if !t.Due.IsZero() {
		b = msgp.AppendTime(msgp.AppendStr(b, "due"), t.Due)
	}
	if t.Token != "" {
		b = msgp.AppendStr(msgp.AppendStr(b, "tok"), t.Token)
	}
	return msgp.AppendTime(msgp.AppendStr(b, "enqueued"), t.Enqueued)
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (t *Task) DecodeMsgpack(dec *msgpack.Decoder) error {
	rd, err := decodeFrom(dec)
	if err != nil {
		return err
	}
	return t.decode(rd, nil, 1)
}

// decode reads a task, whose map depth arrays and maps hold, itself
// counted (1 for a message of its own). The tasks of one response mostly
// share their queue and reply-to names: given the task before it as prev,
// a name equal to prev's is prev's string rather than a new one.
func (t *Task) decode(rd *msgp.Reader, prev *Task, depth int) error {
	var prevQueue, prevReplyTo string
	if prev != nil {
		prevQueue, prevReplyTo = prev.Queue, prev.ReplyTo
	}
	f := rd.Fields()
	for {
		key, ok := f.Next(rd)
		if !ok {
			return f.Err()
		}
		var err error
		switch string(key) {
		case "id":
			t.ID, err = rd.Uint()
		case "q":
			t.Queue, err = strOrSame(rd, prevQueue)
		case "payload":
			t.Payload, err = readRaw(rd, depth)
		case "reply_to":
			t.ReplyTo, err = strOrSame(rd, prevReplyTo)
		case "attempt":
			t.Attempt, err = readInt(rd)
		case "last_err":
			t.LastError, err = rd.Str()
		case "enqueued":
			t.Enqueued, err = rd.Time()
		case "pri":
			t.Priority, err = readInt(rd)
		case "due":
			t.Due, err = rd.Time()
		case "tok":
			t.Token, err = rd.Str()
		default:
			err = rd.SkipIn(depth)
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
	if c.RetryAfter != 0 {
		n++
	}
	if c.NoRetry {
		n++
	}
	if c.Token != "" {
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
	if c.RetryAfter != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "retry_after"), int64(c.RetryAfter))
	}
	if c.NoRetry {
		b = msgp.AppendBool(msgp.AppendStr(b, "no_retry"), true)
	}
	if c.Token != "" {
		b = msgp.AppendStr(msgp.AppendStr(b, "tok"), c.Token)
	}
	return b
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (c *Completion) DecodeMsgpack(dec *msgpack.Decoder) error {
	rd, err := decodeFrom(dec)
	if err != nil {
		return err
	}
	return c.decode(rd, 1)
}

// decode reads a completion, whose map depth arrays and maps hold, itself
// counted.
func (c *Completion) decode(rd *msgp.Reader, depth int) error {
	f := rd.Fields()
	for {
		key, ok := f.Next(rd)
		if !ok {
			return f.Err()
		}
		var err error
		switch string(key) {
		case "id":
			c.ID, err = rd.Uint()
		case "value":
			c.Value, err = readRaw(rd, depth)
		case "err":
			c.Error, err = rd.Str()
		case "retry_after":
			c.RetryAfter, err = readDuration(rd)
		case "no_retry":
			c.NoRetry, err = rd.Bool()
		case "tok":
			c.Token, err = rd.Str()
		default:
			err = rd.SkipIn(depth)
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
		r.ResultQueue != "", r.Role != "", r.Name != "", r.Then != nil,
		r.Delay != 0, !r.At.IsZero(), r.Priority != 0, len(r.Keys) > 0, r.RequestID != "", r.Resent, r.RetryAfter != 0,
		r.MaxAttempts != 0, r.BackoffMin != 0, r.BackoffMax != 0, len(r.Tokens) > 0, len(r.Attempts) > 0, r.CancelTasks, r.NoRetry} {
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
	if r.Delay != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "delay"), int64(r.Delay))
	}
	if !r.At.IsZero() {
		b = msgp.AppendTime(msgp.AppendStr(b, "at"), r.At)
	}
	if r.Priority != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "pri"), int64(r.Priority))
	}
	if len(r.Tokens) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "toks"), len(r.Tokens))
		for _, t := range r.Tokens {
			b = msgp.AppendStr(b, t)
		}
	}
	if len(r.Attempts) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "atts"), len(r.Attempts))
		for _, a := range r.Attempts {
			b = msgp.AppendInt(b, int64(a))
		}
	}
	if r.CancelTasks {
		b = msgp.AppendBool(msgp.AppendStr(b, "cancel_tasks"), true)
	}
	if len(r.Keys) > 0 {
		b = msgp.AppendArrayHeader(msgp.AppendStr(b, "keys"), len(r.Keys))
		for _, k := range r.Keys {
			b = msgp.AppendStr(b, k)
		}
	}
	if r.RequestID != "" {
		b = msgp.AppendStr(msgp.AppendStr(b, "rid"), r.RequestID)
	}
	if r.Resent {
		b = msgp.AppendBool(msgp.AppendStr(b, "resent"), true)
	}
	if r.RetryAfter != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "retry_after"), int64(r.RetryAfter))
	}
	if r.NoRetry {
		b = msgp.AppendBool(msgp.AppendStr(b, "no_retry"), true)
	}
	if r.MaxAttempts != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "max_attempts"), int64(r.MaxAttempts))
	}
	if r.BackoffMin != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "backoff_min"), int64(r.BackoffMin))
	}
	if r.BackoffMax != 0 {
		b = msgp.AppendInt(msgp.AppendStr(b, "backoff_max"), int64(r.BackoffMax))
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
func (r *Request) DecodeMsgpack(dec *msgpack.Decoder) error {
	rd, err := decodeFrom(dec)
	if err != nil {
		return err
	}
	return r.decode(rd, false)
}

// decode reads a request: a message, or with chained its Then, whose map
// is one deeper.
func (r *Request) decode(rd *msgp.Reader, chained bool) error {
	depth := 1
	if chained {
		depth = 2
	}
	f := rd.Fields()
	for {
		key, ok := f.Next(rd)
		if !ok {
			return f.Err()
		}
		var err error
		switch string(key) {
		case "op":
			var op uint64
			op, err = rd.Uint()
			r.Op = Op(op)
		case "q":
			r.Queue, err = rd.Str()
		case "items":
			var n int
			if n, err = arrayHeader(rd); err == nil && n > 0 {
				r.Items = make([]msgpack.RawMessage, n)
				for i := 0; i < n && err == nil; i++ {
					// Held to the depth a get's payload may have, which
					// is deeper than its put's own.
					if r.Items[i], err = readRaw(rd, msgp.MaxDepth-MaxPayloadDepth); errors.Is(err, msgp.ErrTooDeep) {
						err = fmt.Errorf("item %d nests more than %d arrays and maps, the most a task's payload may", i+1, MaxPayloadDepth)
					}
				}
			}
		case "reply_to":
			r.ReplyTo, err = rd.Str()
		case "max":
			r.Max, err = readInt(rd)
		case "timeout":
			r.Timeout, err = readDuration(rd)
		case "lease":
			r.Lease, err = readDuration(rd)
		case "no_ack":
			r.NoAck, err = rd.Bool()
		case "ids":
			r.IDs, err = readUints(rd)
		case "err":
			r.Error, err = rd.Str()
		case "results":
			var n int
			if n, err = arrayHeader(rd); err == nil && n > 0 {
				r.Results = make([]Completion, n)
				for i := 0; i < n && err == nil; i++ {
					err = r.Results[i].decode(rd, depth+2)
				}
			}
		case "result_q":
			r.ResultQueue, err = rd.Str()
		case "role":
			r.Role, err = rd.Str()
		case "name":
			r.Name, err = rd.Str()
		case "delay":
			r.Delay, err = readDuration(rd)
		case "at":
			r.At, err = rd.Time()
		case "pri":
			r.Priority, err = readInt(rd)
		case "keys":
			r.Keys, err = readStrs(rd)
		case "rid":
			r.RequestID, err = rd.Str()
		case "resent":
			r.Resent, err = rd.Bool()
		case "toks":
			r.Tokens, err = readStrs(rd)
		case "atts":
			r.Attempts, err = readInts(rd)
		case "cancel_tasks":
			r.CancelTasks, err = rd.Bool()
		case "retry_after":
			r.RetryAfter, err = readDuration(rd)
		case "no_retry":
			r.NoRetry, err = rd.Bool()
		case "max_attempts":
			r.MaxAttempts, err = readInt(rd)
		case "backoff_min":
			r.BackoffMin, err = readDuration(rd)
		case "backoff_max":
			r.BackoffMax, err = readDuration(rd)
		case "then":
			if chained {
				return errNestedThen
			}
			r.Then = new(Request)
			err = r.Then.decode(rd, true)
		default:
			err = rd.SkipIn(depth)
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
		len(r.Stats) > 0, len(r.Clients) > 0, len(r.Queues) > 0, r.Count != 0, r.Lease != 0, r.ClientID != 0,
		r.MaxMessageSize != 0, r.QueuesOutlive, r.NoAdmin, r.MaxStreams != 0, r.StreamClosed, r.Note != "", r.Repeats != 0, r.Then != nil} {
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
	if r.MaxMessageSize != 0 {
		b = msgp.AppendStr(b, "max_msg")
		b = msgp.AppendInt(b, int64(r.MaxMessageSize))
	}
	if r.QueuesOutlive {
		b = msgp.AppendStr(b, "outlive")
		b = msgp.AppendBool(b, true)
	}
	if r.NoAdmin {
		b = msgp.AppendStr(b, "no_admin")
		b = msgp.AppendBool(b, true)
	}
	if r.MaxStreams != 0 {
		b = msgp.AppendStr(b, "max_streams")
		b = msgp.AppendInt(b, int64(r.MaxStreams))
	}
	if r.StreamClosed {
		b = msgp.AppendStr(b, "stream_closed")
		b = msgp.AppendBool(b, true)
	}
	if r.Note != "" {
		b = msgp.AppendStr(b, "note")
		b = msgp.AppendStr(b, r.Note)
	}
	if r.Repeats != 0 {
		b = msgp.AppendStr(b, "repeats")
		b = msgp.AppendInt(b, int64(r.Repeats))
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
func (r *Response) DecodeMsgpack(dec *msgpack.Decoder) error {
	rd, err := decodeFrom(dec)
	if err != nil {
		return err
	}
	return r.decode(rd, false)
}

// decode reads a response: a message, or with chained its Then, whose map
// is one deeper.
func (r *Response) decode(rd *msgp.Reader, chained bool) error {
	depth := 1
	if chained {
		depth = 2
	}
	f := rd.Fields()
	for {
		key, ok := f.Next(rd)
		if !ok {
			return f.Err()
		}
		var err error
		switch string(key) {
		case "code":
			var c uint64
			c, err = rd.Uint()
			r.Code = Code(c)
		case "err":
			r.Error, err = rd.Str()
		case "ids":
			r.IDs, err = readUints(rd)
		case "tasks":
			var n int
			if n, err = arrayHeader(rd); err == nil && n > 0 {
				r.Tasks = make([]Task, n)
				for i := 0; i < n && err == nil; i++ {
					var prev *Task
					if i > 0 {
						prev = &r.Tasks[i-1]
					}
					err = r.Tasks[i].decode(rd, prev, depth+2)
				}
			}
		case "stats":
			err = readReflect(rd, depth, &r.Stats)
		case "clients":
			err = readReflect(rd, depth, &r.Clients)
		case "queues":
			err = readReflect(rd, depth, &r.Queues)
		case "count":
			r.Count, err = readInt(rd)
		case "lease":
			r.Lease, err = readDuration(rd)
		case "client_id":
			r.ClientID, err = rd.Uint()
		case "max_msg":
			r.MaxMessageSize, err = readInt(rd)
		case "outlive":
			r.QueuesOutlive, err = rd.Bool()
		case "no_admin":
			r.NoAdmin, err = rd.Bool()
		case "max_streams":
			r.MaxStreams, err = readInt(rd)
		case "stream_closed":
			r.StreamClosed, err = rd.Bool()
		case "note":
			r.Note, err = rd.Str()
		case "repeats":
			r.Repeats, err = readInt(rd)
		case "then":
			if chained {
				return errNestedThen
			}
			r.Then = new(Response)
			err = r.Then.decode(rd, true)
		default:
			err = rd.SkipIn(depth)
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

// fieldError names the field whose value failed to decode; it copies the
// key, so that the key need not escape in the common case.
func fieldError(key []byte, err error) error {
	return fmt.Errorf("field %q: %w", string(key), err)
}

// readRaw reads one value, which depth arrays and maps of its message
// enclose, as raw bytes, a slice of the frame rather than a copy; nil
// reads as empty, as msgpack's RawMessage decoding does.
func readRaw(rd *msgp.Reader, depth int) (msgpack.RawMessage, error) {
	if rd.SkipNil() {
		return nil, nil
	}
	return rd.RawIn(depth)
}

// readReflect decodes one value, which depth arrays and maps of its
// message enclose, into v by reflection. RawIn has checked the value's
// lengths, so none can make reflection over-allocate.
func readReflect(rd *msgp.Reader, depth int, v any) error {
	raw, err := rd.RawIn(depth)
	if err != nil {
		return err
	}
	return unmarshalChecked(raw, v)
}

// strOrSame reads a string, returning prev rather than a copy when it is
// the same text.
func strOrSame(rd *msgp.Reader, prev string) (string, error) {
	b, err := rd.StrBytes()
	if err != nil || len(b) == 0 {
		return "", err
	}
	if string(b) == prev {
		return prev, nil
	}
	return string(b), nil
}

func readInt(rd *msgp.Reader) (int, error) {
	n, err := rd.Int()
	return int(n), err
}

func readDuration(rd *msgp.Reader) (time.Duration, error) {
	n, err := rd.Int()
	return time.Duration(n), err
}

// MaxPayloadDepth is how deep a task's payload may nest arrays and maps.
// A message nests at most msgp.MaxDepth, its own included, and the
// deepest one holding a payload, a get's response chained to a complete,
// holds it inside four: its map, the Then's, the tasks array and the
// task's. A put of a deeper item is refused: no client, of any version,
// could read a get of it, and it would fail every get it came in.
const MaxPayloadDepth = msgp.MaxDepth - 4

// MaxResultDepth is how deep a completion's value may nest: the result
// the master publishes (AppendResult) is a map around it, and is a
// payload. A deeper value is stored as a failure instead.
const MaxResultDepth = MaxPayloadDepth - 1

// CheckDepth reports whether the payload or value b, well-formed, nests
// at most limit arrays and maps. One of limit bytes or fewer cannot nest
// deeper, and is not walked: most payloads and results.
func CheckDepth(b []byte, limit int) error {
	if len(b) <= limit {
		return nil
	}
	if _, err := msgp.NewReader(b).RawIn(msgp.MaxDepth - limit); errors.Is(err, msgp.ErrTooDeep) {
		return fmt.Errorf("nests more than %d arrays and maps", limit)
	} else if err != nil {
		return fmt.Errorf("is not one msgpack value: %w", err)
	}
	return nil
}

// MaxElements bounds the elements of any one array of a message (a put's
// items, a complete's results, ids). msgpack lets an array claim one
// element per byte left, and an element can take many times its encoded
// size in memory (a one-byte nil becomes a 48-byte Completion), so a
// 64 MiB frame could otherwise cost gigabytes to decode. At this bound a
// message costs at most some 50 MB of elements.
const MaxElements = 1 << 20

// arrayHeader reads an array header of at most MaxElements elements.
func arrayHeader(rd *msgp.Reader) (int, error) {
	n, err := rd.ArrayHeader()
	if err == nil && n > MaxElements {
		return 0, fmt.Errorf("%w: %d elements in one array, more than %d", ErrBadRequest, n, MaxElements)
	}
	return n, err
}

// readStrs reads an array of at most MaxElements strings; nil if empty.
func readStrs(rd *msgp.Reader) ([]string, error) {
	n, err := arrayHeader(rd)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]string, n)
	for i := range out {
		if out[i], err = rd.Str(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readInts reads an array of at most MaxElements integers.
func readInts(rd *msgp.Reader) ([]int, error) {
	n, err := arrayHeader(rd)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]int, n)
	for i := range out {
		if out[i], err = readInt(rd); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readUints reads an array of at most MaxElements integers.
func readUints(rd *msgp.Reader) ([]uint64, error) {
	n, err := arrayHeader(rd)
	if err != nil || n == 0 {
		return nil, err
	}
	out := make([]uint64, n)
	for i := range out {
		if out[i], err = rd.Uint(); err != nil {
			return nil, err
		}
	}
	return out, nil
}
