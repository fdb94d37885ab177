package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/qm-dev/qm/internal/msgp"
)

// FuzzDecodeRequest feeds arbitrary frame bodies to the decoder the master
// runs on untrusted input: it must never panic, and what it accepts must
// survive a round trip.
func FuzzDecodeRequest(f *testing.F) {
	for _, r := range sampleRequests() {
		f.Add(mustMarshal(f, r))
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})                                      // a map claiming 4G entries
	f.Add([]byte{0x81, 0xa5, 'i', 't', 'e', 'm', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff}) // a huge array
	f.Add([]byte{0x81, 0xa4, 't', 'o', 'k', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})      // a huge array of tokens
	f.Add([]byte{0x81, 0xa4, 'a', 't', 't', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})      // a huge array of attempts
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := DecodeRequest(b)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not wrap ErrBadRequest", err)
			}
			return
		}
		// Read by hand, with no walk of the whole first: what decodes
		// must still be exactly one well-formed value.
		if err := msgp.Validate(b); err != nil {
			t.Fatalf("decoded %x, which is not one well-formed value: %v", b, err)
		}
		var buf bytes.Buffer
		if err := NewCodec(&buf, 0).Write(req); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var again Request
		if err := NewCodec(&buf, 0).Read(&again); err != nil {
			t.Fatalf("decode of re-encoded request: %v", err)
		}
	})
}

// FuzzDecodeResponse: a client decodes whatever a master (or something
// posing as one) sends, as its Codec reads a frame. Any input either
// decodes or fails, without a panic or a huge allocation; what decodes
// is one well-formed value, and encodes and decodes again.
//
// It fuzzes the Codec's path, not msgpack.Unmarshal of a Response, which
// no client uses: msgpack's DecodeRaw, under every DecodeMsgpack method,
// allocates whatever an ext's length claims (808 MB for the six bytes
// c9 30 30 30 30 30), and fuzzing that path ran out of memory in a
// minute.
func FuzzDecodeResponse(f *testing.F) {
	for _, r := range sampleResponses() {
		f.Add(mustMarshal(f, r))
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})                                         // a map claiming 4G entries
	f.Add([]byte{0x81, 0xa5, 't', 'a', 's', 'k', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})    // a huge array
	f.Add([]byte{0x81, 0xa4, 't', 'h', 'e', 'n', 0x81, 0xa4, 't', 'h', 'e', 'n', 0x80}) // a Then within a Then
	f.Add([]byte{0x81, 0xa3, 'e', 'r', 'r', 0xc9, 0x30, 0x30, 0x30, 0x30, 0x30})        // an ext claiming 808 MB
	f.Add([]byte{0xc9, 0x30, 0x30, 0x30, 0x30, 0x30})
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp Response
		if err := decodeMessage(b, &resp); err != nil {
			if !errors.Is(err, ErrBadResponse) {
				t.Fatalf("error %v does not wrap ErrBadResponse", err)
			}
			return
		}
		// Read by hand, with no walk of the whole first: what decodes
		// must still be exactly one well-formed value.
		if err := msgp.Validate(b); err != nil {
			t.Fatalf("decoded %x, which is not one well-formed value: %v", b, err)
		}
		var buf bytes.Buffer
		if err := NewCodec(&buf, 0).Write(&resp); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var back Response
		if err := NewCodec(&buf, 0).Read(&back); err != nil {
			t.Fatalf("decode of re-encoded response: %v", err)
		}
	})
}

// FuzzCodecStream feeds an arbitrary byte stream, cut at byte k into two
// reads, to the frame reader: no panic, no allocation beyond the limit.
func FuzzCodecStream(f *testing.F) {
	var buf bytes.Buffer
	c := NewCodec(&buf, 0)
	for _, r := range sampleRequests() {
		_ = c.Write(&r)
	}
	f.Add(buf.Bytes(), uint16(7))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint16(2))
	f.Add([]byte{0, 0, 0, 3, 0x81, 0xa2}, uint16(5))
	f.Fuzz(func(t *testing.T, stream []byte, k uint16) {
		cut := int(k) % (len(stream) + 1)
		r := &splitReader{parts: [][]byte{stream[:cut], stream[cut:]}}
		c := NewCodec(rw{r, &bytes.Buffer{}}, 1<<16)
		for range 64 {
			var req Request
			if err := c.Read(&req); err != nil && !errors.Is(err, ErrBadRequest) {
				return
			}
		}
	})
}

// splitReader returns its parts in separate reads, as a network would.
type splitReader struct{ parts [][]byte }

func (s *splitReader) Read(p []byte) (int, error) {
	for len(s.parts) > 0 && len(s.parts[0]) == 0 {
		s.parts = s.parts[1:]
	}
	if len(s.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.parts[0])
	s.parts[0] = s.parts[0][n:]
	return n, nil
}
