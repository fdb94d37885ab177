package pyproto_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/qm-dev/qm/pyproto"
	"github.com/qm-dev/qm/wire"
)

// FuzzUnpickle feeds the restricted unpickler. Seeds: the real pickles of
// testdata/pickles (protocols 2 to 5, malicious ones included) and
// hand-made hostile ones. Whatever decodes must convert to msgpack and
// come back through Pickle unchanged.
func FuzzUnpickle(f *testing.F) {
	for _, b := range readCorpus(f) {
		f.Add(b)
	}
	f.Add(billionLaughs(40))
	f.Add([]byte("\x80\x04]\x94h\x00a.")) // a list holding itself
	f.Add([]byte("\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R."))
	f.Add([]byte("\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}(K\x01K\x02u."))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = pyproto.DecodeRequest(data)
		v, err := pyproto.Unpickle(data)
		if err != nil {
			return
		}
		mp, err := pyproto.ToMsgpack(v, 1<<16)
		if err != nil {
			if !errors.Is(err, pyproto.ErrTooDeep) && !errors.Is(err, pyproto.ErrTooLarge) {
				t.Fatalf("ToMsgpack: unexpected %v", err)
			}
			return
		}
		p, err := pyproto.Pickle(pyproto.Msgpack(mp))
		if err != nil {
			t.Fatalf("Pickle of our own msgpack %x: %v", mp, err)
		}
		v2, err := pyproto.Unpickle(p)
		if err != nil {
			t.Fatalf("Unpickle of our own pickle %x: %v", p, err)
		}
		mp2, err := pyproto.ToMsgpack(v2, 1<<16)
		if err != nil || !bytes.Equal(mp, mp2) {
			t.Fatalf("round trip: %x became %x (%v)", mp, mp2, err)
		}
	})
}

// FuzzMsgpackToPickle feeds the msgpack reader that pickles task payloads
// for Python. What it pickles must unpickle.
func FuzzMsgpackToPickle(f *testing.F) {
	for _, v := range []any{
		nil, true, int64(-1), uint64(1 << 63), 1.5, float32(2.5), "x", []byte{0},
		[]any{int64(1), []any{"a"}}, map[string]any{"k": []any{nil}},
		wire.Result{TaskID: 1, Worker: "w", Attempt: 1, Value: []byte{0x01}},
	} {
		b, err := wire.Encode(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(b))
	}
	f.Add([]byte{0x81, 0x92, 0x01, 0x02, 0xa1, 'x'}) // {[1, 2]: "x"}
	f.Add([]byte{0xd6, 0xff, 0, 0, 0, 0})            // a timestamp extension
	f.Fuzz(func(t *testing.T, data []byte) {
		pyproto.MapFields(data)
		p, err := pyproto.Pickle(pyproto.Msgpack(data))
		if err != nil {
			return
		}
		v, err := pyproto.Unpickle(p)
		if err != nil {
			t.Fatalf("Unpickle of our own pickle %x (from %x): %v", p, data, err)
		}
		if _, err := pyproto.ToMsgpack(v, 2*len(data)+64); err != nil {
			t.Fatalf("ToMsgpack of %x: %v", data, err)
		}
	})
}

// FuzzReadMessage reads one multiprocessing.connection frame, as the
// handshake and a Python client's every request do; whatever it reads
// must write back and read again unchanged. Seeds: the short and long
// forms, an empty frame, lengths over the limit and negative ones.
func FuzzReadMessage(f *testing.F) {
	const limit = 256
	frame := func(msg string) []byte {
		var buf bytes.Buffer
		if err := pyproto.WriteMessage(&buf, []byte(msg)); err != nil {
			f.Fatal(err)
		}
		return buf.Bytes()
	}
	f.Add(frame("#WELCOME#"))
	f.Add(frame(""))
	f.Add(append(frame("#CHALLENGE#{sha256}0123456789abcdefghij0123456789ab"), frame("#WELCOME#")...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{0x40, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xfe})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := pyproto.ReadMessage(bytes.NewReader(data), limit)
		if err != nil {
			return
		}
		if len(msg) > limit {
			t.Fatalf("read %d bytes, over the limit", len(msg))
		}
		var buf bytes.Buffer
		if err := pyproto.WriteMessage(&buf, msg); err != nil {
			t.Fatal(err)
		}
		again, err := pyproto.ReadMessage(&buf, limit)
		if err != nil || !bytes.Equal(again, msg) {
			t.Fatalf("re-read %q, %v; want %q", again, err, msg)
		}
	})
}
