package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
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
// posing as one) sends. Any input either decodes or fails, without a
// panic or a huge allocation, and what decodes encodes and decodes again.
func FuzzDecodeResponse(f *testing.F) {
	for _, r := range sampleResponses() {
		f.Add(mustMarshal(f, r))
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff})                                         // a map claiming 4G entries
	f.Add([]byte{0x81, 0xa5, 't', 'a', 's', 'k', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff})    // a huge array
	f.Add([]byte{0x81, 0xa4, 't', 'h', 'e', 'n', 0x81, 0xa4, 't', 'h', 'e', 'n', 0x80}) // a Then within a Then
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp Response
		if err := msgpack.Unmarshal(b, &resp); err != nil {
			return
		}
		again, err := msgpack.Marshal(&resp)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		var back Response
		if err := msgpack.Unmarshal(again, &back); err != nil {
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
