package pyproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// WriteMessage writes msg as one multiprocessing.connection frame: a 4-byte
// big-endian signed length, or -1 and then an 8-byte big-endian unsigned
// length when msg is longer than math.MaxInt32, followed by msg itself.
// Header and body go out in a single Write, so a frame costs one syscall and
// is never interleaved with another writer's.
func WriteMessage(w io.Writer, msg []byte) error {
	buf := appendHeader(make([]byte, 0, 12+len(msg)), len(msg))
	buf = append(buf, msg...)
	_, err := w.Write(buf)
	return err
}

// appendHeader appends the length prefix of an n-byte frame to b.
func appendHeader(b []byte, n int) []byte {
	if n > math.MaxInt32 {
		b = binary.BigEndian.AppendUint32(b, math.MaxUint32) // -1 as int32
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// ReadMessage reads one frame, as written by WriteMessage or by Python's
// Connection.send_bytes, and returns its body.
//
// A frame longer than limit is refused with a *TooLargeError (it matches
// ErrMessageTooLarge) before anything is allocated for it; its body is
// left unread. Within the limit, the body's buffer grows as its bytes
// arrive (doubling from readChunk), so a peer cannot make us allocate from a
// length it chose either: a header that claims 64 MiB and sends nothing more
// costs readChunk, not 64 MiB. A negative length other than -1 gives
// ErrBadFrame. A stream that ends before the frame gives io.EOF, and one that
// ends inside it io.ErrUnexpectedEOF.
func ReadMessage(r io.Reader, limit int) ([]byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:4]); err != nil {
		return nil, err
	}
	var size uint64
	switch n := int32(binary.BigEndian.Uint32(hdr[:4])); {
	case n == -1:
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, midFrame(err)
		}
		size = binary.BigEndian.Uint64(hdr[:])
	case n < 0:
		return nil, fmt.Errorf("%w: %d", ErrBadFrame, n)
	default:
		size = uint64(n)
	}
	if limit < 0 || size > uint64(limit) {
		return nil, &TooLargeError{Size: size, Limit: limit}
	}
	return readBody(r, int(size))
}

// readChunk is the first buffer ReadMessage allocates for a body; a body
// of at most this size is read in one allocation.
const readChunk = 64 << 10

// readBody reads an n-byte body into a buffer that doubles as it fills,
// so that what is allocated follows what was received.
func readBody(r io.Reader, n int) ([]byte, error) {
	msg := make([]byte, 0, min(n, readChunk))
	for len(msg) < n {
		if len(msg) == cap(msg) {
			msg = slices.Grow(msg, min(n-len(msg), cap(msg)))
		}
		m, err := io.ReadFull(r, msg[len(msg):min(n, cap(msg))])
		msg = msg[:len(msg)+m]
		if err != nil {
			return nil, midFrame(err)
		}
	}
	return msg, nil
}

// midFrame reports a clean EOF inside a frame as the truncation it is.
func midFrame(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
