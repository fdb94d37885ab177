package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// frameHeaderLen is the size of the big-endian length that precedes every frame.
const frameHeaderLen = 4

// maxSkippedFrame bounds the oversized frames Codec.Read reads and drops
// to keep its stream in step; a longer one ends the stream.
const maxSkippedFrame = 1 << 30

// frameChunk is the most ReadFrame allocates for a frame before its bytes
// arrive; a frame of at most this size takes one allocation.
const frameChunk = 64 << 10

// frameGrowth is the factor by which a frame's buffer grows as its bytes
// arrive. Doubling copied a 4 MiB frame's bytes once more and cleared
// twice its size; by fours, it copies a third of them and clears 1.33x.
const frameGrowth = 4

// maxReusedFrame bounds the buffer a Codec keeps from one Read to the
// next: a larger frame is rare enough that its buffer is let go.
const maxReusedFrame = 1 << 20

// ReadFrame reads one length-prefixed frame into buf (grown as needed) and
// returns it. A length above max is refused before anything is allocated;
// below it, the buffer grows as the bytes arrive, by a factor of
// frameGrowth, so that a header claiming 64 MiB costs memory only once
// 16 MiB are sent.
func ReadFrame(r io.Reader, buf []byte, max int) ([]byte, error) {
	return readFrame(r, buf, max, 0)
}

// readFrame is ReadFrame that allocates up to hint bytes before they
// arrive, rather than frameChunk, when hint is larger: the size of the
// frame before on the same stream, which did arrive, so that a stream of
// large frames takes one allocation each and no copies as they grow.
func readFrame(r io.Reader, buf []byte, limit, hint int) ([]byte, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if uint64(n) > uint64(limit) {
		return nil, &TooLargeError{Size: n, Limit: limit}
	}
	buf = buf[:0]
	want := min(n, max(frameChunk, hint))
	if n <= 2*hint {
		// The frame before on this stream, which did arrive, was at
		// least half as large: the whole frame at once, rather than
		// the hint's size and then a copy of nearly all of it.
		want = n
	}
	if cap(buf) < want {
		buf = make([]byte, 0, want)
	}
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = growFrame(buf, n)
		}
		m, err := io.ReadFull(r, buf[len(buf):min(n, cap(buf))])
		buf = buf[:len(buf)+m]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return buf, nil
}

// growFrame returns buf, full, with room for more of a frame of n bytes:
// frameGrowth times its capacity, or all n when that would leave less
// than half as much again to come. Growing by a fixed factor alone made
// a frame just over a step (4 MiB and a little: a get of 1,000 results
// of 4 KiB) take one more step, a copy of all it had and a buffer of
// 1.25 times the frame.
func growFrame(buf []byte, n int) []byte {
	next := min(n, max(frameGrowth*cap(buf), frameChunk))
	if n-next < next/2 {
		next = n
	}
	grown := make([]byte, len(buf), next)
	copy(grown, buf)
	return grown
}

// Codec reads and writes msgpack frames on one stream. It reuses its
// buffer, so it is not safe for concurrent use: each stream has one owner.
type Codec struct {
	rw      io.ReadWriter
	r       *bufio.Reader
	max     int
	wbuf    []byte
	onFrame func()

	// reuse: Read decodes into rbuf, the buffer of the frame before,
	// unless Keep gave that away.
	reuse bool
	rbuf  []byte
	last  int // the length of the last frame read: readFrame's hint
}

// ReuseReads makes every Read decode into the buffer of the frame before
// it, instead of a new one: the payloads a Read decodes (Task.Payload,
// Completion.Value, Request.Items) then stay valid only until the next
// Read, unless Keep is called after the Read that decoded them. A master
// reads completes and gets this way, which it is done with by the time it
// answers; a put's items it keeps.
func (c *Codec) ReuseReads() { c.reuse = true }

// Keep leaves the buffer of the last frame read to the payloads decoded
// from it: the next Read reads into a new one.
func (c *Codec) Keep() { c.rbuf = nil }

// OnFrame sets f to run in Read as soon as a frame's first byte has
// arrived, before the frame is read: a server counts the call as in
// progress from then on, so that a shutdown that waits for calls to end
// never misses one it was reading.
func (c *Codec) OnFrame(f func()) { c.onFrame = f }

// NewCodec returns a Codec on rw that refuses frames longer than max bytes.
func NewCodec(rw io.ReadWriter, max int) *Codec {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	return &Codec{rw: rw, r: bufio.NewReader(rw), max: max}
}

// Write encodes v as one frame: a *Request or *Response by hand, any other
// value by reflection.
func (c *Codec) Write(v any) error {
	b, err := appendMessage(append(c.wbuf[:0], 0, 0, 0, 0), v)
	c.wbuf = b
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	n := len(b) - frameHeaderLen
	if n > c.max {
		return &TooLargeError{Size: n, Limit: c.max}
	}
	binary.BigEndian.PutUint32(b, uint32(n))
	_, err = c.rw.Write(b)
	return err
}

// LastWriteSize is how many bytes the last Write gave the stream (or
// would have): its frame, header included.
func (c *Codec) LastWriteSize() int { return len(c.wbuf) }

// Read decodes one frame into v, which must be zeroed first. An error
// wrapping ErrBadRequest (ErrBadResponse for a Response) means the frame
// was read whole but its body was malformed, so the stream is still in
// step; so does a *TooLargeError with Skipped set: a frame over the
// limit but within maxSkippedFrame is read and dropped, so that a peer
// that sent it gets its answer rather than a stream that stops reading.
// Any other error leaves the stream unusable.
//
// Each frame is read into a buffer of its own (see ReuseReads for the
// exception), which the payloads decoded from it (Task.Payload,
// Completion.Value, Request.Items) share instead of each being copied out:
// one allocation per frame, not per payload.
func (c *Codec) Read(v any) error {
	if c.onFrame != nil {
		if _, err := c.r.Peek(1); err != nil {
			return err
		}
		c.onFrame()
	}
	b, err := readFrame(c.r, c.rbuf, c.max, c.last)
	if err == nil {
		c.last = len(b)
		if c.reuse && cap(b) <= maxReusedFrame {
			c.rbuf = b[:0]
		} else {
			c.rbuf = nil
		}
	}
	var tl *TooLargeError
	if errors.As(err, &tl) && tl.Size <= maxSkippedFrame {
		_, derr := c.r.Discard(tl.Size)
		tl.Skipped = derr == nil
		return tl
	}
	if err != nil {
		return err
	}
	return decodeMessage(b, v)
}

// DecodeRequest decodes one request frame body, as the master's
// Codec.Read does with what a client sends.
func DecodeRequest(b []byte) (*Request, error) {
	req := new(Request)
	if err := decodeMessage(b, req); err != nil {
		return nil, err
	}
	return req, nil
}
