package pyproto_test

import (
	"bytes"
	"encoding/hex"
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
	// The allowlisted globals, applied as Python does and as it does not.
	for _, s := range []string{
		"\x80\x04" + sg("datetime", "datetime") + "C\x0a\x07\xe8\x01\x02\x03\x04\x05\x00\x00\x06" +
			sg("datetime", "timezone") + sg("datetime", "timedelta") + "J\xff\xff\xff\xffJ(\x04\x01\x00K\x00\x87R\x8c\x01X\x86R\x86R.",
		"\x80\x04" + sg("datetime", "datetime") + "C\x0a\x07\xe8\x01\x02\x03\x04\x05\x00\x00\x06" + sg("datetime", "timedelta") + "K\x00K\x00K\x00\x87R\x86R.",
		"\x80\x02c__builtin__\nset\n](K\x01\x8f\x94e\x85R.",
		"\x80\x04(\x8f\x94(h\x00\x90\x91.",
		"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R.",
		"\x80\x04" + sg("builtins", "eval") + "\x8c\x012\x85R.",
		"\x80\x04" + sg("builtins", "set") + "\x94h\x00\x85R.",
		"\x80\x04" + sg("decimal", "Decimal") + "\x8c\x08-1.50E+3\x85R.",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = pyproto.DecodeRequest(data)
		v, err := pyproto.Unpickle(data)
		if err != nil {
			return
		}
		mp, err := pyproto.ToMsgpack(v, 1<<16)
		if err != nil {
			// A class or a timezone left as a value has no msgpack form.
			if !errors.Is(err, pyproto.ErrTooDeep) && !errors.Is(err, pyproto.ErrTooLarge) && !errors.Is(err, pyproto.ErrUnsupported) {
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
	// The extension types of docs/VALUES.md.
	for _, h := range []string{
		"c70901010000000000000001", "c70901feffffffffffffffff", "c70302920102", "c70c0292d503910392019202c40178",
		"c7050391d5039102", "81d5039101a36f6e65", "d5046162", "c70a0707e80102030405000006", "d7ff00005dc065937d25",
		"c70cff00000000fffffff1886e0900", "d807270f0c1f173b3b0f423fffffb2a80058", "c70f0707e8010200000000000000000000000000",
		"d60507e8021d", "c70a06173b3b0f423f00000000", "c70c08ffffffff0000000500000007", "c7080931452b3330",
		"d80a3ff8000000000000c000000000000000", "81d40290c0", "d60391d40290",
	} {
		b, err := hex.DecodeString(h)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
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
