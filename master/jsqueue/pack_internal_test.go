package jsqueue

import (
	"bytes"
	"slices"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go"
)

func TestPackCodec(t *testing.T) {
	payloads := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte("x"), 300), []byte("last")}
	b := encodePack(payloads)
	got, err := decodePack(b, "4")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(got, payloads, bytes.Equal) {
		t.Fatalf("got %q, want %q", got, payloads)
	}
	for _, c := range []struct {
		name, count string
		body        []byte
	}{
		{"count too high", "5", b},
		{"count too low", "3", b},
		{"count not a number", "four", b},
		{"count over MaxPack", strconv.Itoa(MaxPack + 1), b},
		{"empty", "1", nil},
		{"length past the end", "1", []byte{5, 'a'}},
		{"truncated varint", "1", []byte{0x80}},
	} {
		if _, err := decodePack(c.body, c.count); err == nil {
			t.Errorf("%s: decoded", c.name)
		}
	}
	// A payload may not grow into the next one's bytes.
	before := bytes.Clone(b)
	_ = append(got[0], 'z')
	if !bytes.Equal(b, before) {
		t.Errorf("appending to a payload changed the pack: %q", b)
	}
	// A length written in more bytes than it needs is refused, so that a
	// pack has one encoding.
	if _, err := decodePack([]byte{0x81, 0x00, 'a'}, "1"); err == nil {
		t.Errorf("an overlong length decoded")
	}
}

func TestPackMsgs(t *testing.T) {
	msg := func(data, replyTo, key string) *nats.Msg {
		m := &nats.Msg{Subject: "s", Data: []byte(data)}
		if replyTo != "" || key != "" {
			m.Header = nats.Header{}
		}
		if replyTo != "" {
			m.Header.Set(hdrReplyTo, replyTo)
		}
		if key != "" {
			m.Header.Set("Nats-Msg-Id", key)
		}
		return m
	}
	msgs := []*nats.Msg{
		msg("1", "", ""), msg("2", "", ""), msg("3", "", ""), // a pack of 2, then a pack of 1 is plain
		msg("4", "r", ""), msg("5", "r", ""), // a pack with its reply queue
		msg("6", "", "k"), // keyed: plain
		msg("7", "", ""),  // alone between keyed ones: plain
		msg("8", "", "k2"),
	}
	out, counts := packMsgs("s", msgs, 2)
	if want := []int{2, 0, 2, 0, 0, 0}; !slices.Equal(counts, want) {
		t.Fatalf("counts %v, want %v", counts, want)
	}
	if got, _ := decodePack(out[0].Data, out[0].Header.Get(hdrPack)); len(got) != 2 || string(got[1]) != "2" {
		t.Errorf("first pack %q", got)
	}
	if out[2].Header.Get(hdrReplyTo) != "r" || out[1].Header.Get(hdrPack) != "" || string(out[1].Data) != "3" {
		t.Errorf("reply queue or plain message lost: %v, %v", out[2].Header, out[1])
	}
	ids := packedIDs([]uint64{10, 11, 12, 13, 14, 15}, counts, len(msgs))
	want := []uint64{packedID(10, 0), packedID(10, 1), 11, packedID(12, 0), packedID(12, 1), 13, 14, 15}
	if !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
}

// FuzzDecodePack: a pack read from JetStream is decoded without a panic,
// and what decodes encodes back to the same bytes.
func FuzzDecodePack(f *testing.F) {
	f.Add(encodePack([][]byte{[]byte("a"), []byte("bc")}), "2")
	f.Add([]byte{0x80}, "1")
	f.Add([]byte{}, "0")
	f.Fuzz(func(t *testing.T, body []byte, count string) {
		payloads, err := decodePack(body, count)
		if err != nil {
			return
		}
		if !bytes.Equal(encodePack(payloads), body) {
			t.Fatalf("%q decoded to %q, which encodes differently", body, payloads)
		}
	})
}
