package pyproto

import (
	"errors"
	"fmt"

	"github.com/qm-dev/qm/internal/bytesize"
	"github.com/qm-dev/qm/internal/msgp"
)

var (
	// ErrBadPickle is returned for input that is not a well-formed pickle:
	// truncated, an unknown opcode, a stack underflow, a memo miss.
	ErrBadPickle = errors.New("malformed pickle")

	// ErrUnsafePickle is returned for a pickle that names a global other
	// than those of the plain types (see the package doc), applies one to
	// arguments of another shape than Python's pickler writes, applies
	// anything else, or refers to external objects. Such opcodes are
	// refused as soon as they are read; nothing they name is looked up or
	// run.
	ErrUnsafePickle = errors.New("refused pickle: it would import or call code, and only plain values are accepted " +
		"(None, bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset, " +
		"decimal.Decimal, and datetime's datetime, date, time and timedelta with a datetime.timezone)")

	// ErrUnsupported is returned for a value that is well formed and safe
	// but has no msgpack counterpart: a class as a value, a timezone
	// offset of a fraction of a second, an out-of-band buffer, a msgpack
	// extension type qm does not define.
	ErrUnsupported = errors.New("unsupported value")

	// ErrTooDeep is returned when containers nest deeper than MaxDepth, or
	// refer to themselves.
	ErrTooDeep = errors.New("value nested too deeply")

	// ErrTooLarge is returned when a converted value would exceed the size
	// limit given by the caller.
	ErrTooLarge = errors.New("value too large")

	// ErrBadMsgpack is returned for a payload that is not one well-formed
	// msgpack value. It is internal/msgp's ErrMalformed, which the errors
	// of its reader wrap.
	ErrBadMsgpack = msgp.ErrMalformed

	// ErrBadRequest is returned for a pickle that is not a manager request
	// (ident, methodname, args, kwds).
	ErrBadRequest = errors.New("not a manager request")
)

// The errors of the multiprocessing.connection framing (frame.go).
var (
	// ErrMessageTooLarge is returned by ReadMessage when a frame is longer
	// than the caller's limit. Nothing is allocated for such a frame.
	ErrMessageTooLarge = errors.New("message too large")

	// ErrBadFrame is returned by ReadMessage when a frame's length prefix is
	// negative but not -1, the marker of the 8-byte form.
	ErrBadFrame = errors.New("bad frame length")
)

// TooLargeError is a frame longer than ReadMessage's limit. It matches
// ErrMessageTooLarge.
type TooLargeError struct {
	Size  uint64
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%v (%s > %s)", ErrMessageTooLarge, bytesize.Format(int64(min(e.Size, 1<<62))), bytesize.Format(int64(e.Limit)))
}

// Is reports whether target is ErrMessageTooLarge.
func (e *TooLargeError) Is(target error) bool { return target == ErrMessageTooLarge }
