package msgp

import (
	"errors"
	"fmt"
)

var (
	// ErrMalformed is returned for input that is not well-formed msgpack:
	// truncated, an invalid type byte, a length the input cannot hold,
	// bytes after the value.
	ErrMalformed = errors.New("malformed msgpack")
	// ErrTooDeep is returned for a value with more than MaxDepth nested
	// non-empty arrays and maps.
	ErrTooDeep = fmt.Errorf("msgpack nested more than %d arrays and maps deep", MaxDepth)
	// ErrType is returned by a typed read when the value is well formed
	// but of a type it cannot read as the one asked for.
	ErrType = errors.New("unexpected msgpack type")
)

// errTruncated is built once: hostile input makes it often.
var errTruncated = fmt.Errorf("%w: truncated value", ErrMalformed)
