package wire

import (
	"encoding/binary"
	"fmt"
)

// maxNesting bounds how deep arrays and maps may nest in one message.
const maxNesting = 100

// checkBounds walks one msgpack value in b without decoding it and fails
// if a length claims more elements or bytes than b holds, or if containers
// nest deeper than maxNesting. The msgpack decoder allocates a typed slice
// from the length header alone (v5.4.1 ignores its own limit there), so a
// 12-byte frame could otherwise ask for gigabytes.
func checkBounds(b []byte) error {
	n, err := valueLen(b)
	if err != nil {
		return err
	}
	if n != len(b) {
		return fmt.Errorf("%d trailing bytes", len(b)-n)
	}
	return nil
}

// valueLen is the length in bytes of the msgpack value at the start of b,
// with the checks of checkBounds.
func valueLen(b []byte) (int, error) {
	pos := 0
	pending := 1 // values still to read in the innermost open container
	var shallow [8]int
	stack := shallow[:0] // pending counts of the enclosing containers
	for {
		if pending == 0 {
			if len(stack) == 0 {
				break
			}
			pending = stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			continue
		}
		pending--
		if pos >= len(b) {
			return 0, errTruncated
		}
		c := b[pos]
		pos++
		var (
			skip      int // bytes of data that follow
			container int // elements of an array or map that follow
			isCont    bool
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		case c&0xf0 == 0x80: // fixmap
			container, isCont = 2*int(c&0x0f), true
		case c&0xf0 == 0x90: // fixarray
			container, isCont = int(c&0x0f), true
		case c&0xe0 == 0xa0: // fixstr
			skip = int(c & 0x1f)
		default:
			var err error
			skip, container, isCont, pos, err = lengthOf(c, b, pos)
			if err != nil {
				return 0, err
			}
		}
		if skip > len(b)-pos {
			return 0, errTruncated
		}
		pos += skip
		if isCont && container > 0 {
			if container > len(b)-pos {
				return 0, fmt.Errorf("container of %d elements in %d bytes", container, len(b)-pos)
			}
			if len(stack) >= maxNesting {
				return 0, fmt.Errorf("nested deeper than %d", maxNesting)
			}
			stack = append(stack, pending)
			pending = container
		}
	}
	return pos, nil
}

var errTruncated = fmt.Errorf("truncated value")

// lengthOf decodes the length that follows type byte c at b[pos:].
func lengthOf(c byte, b []byte, pos int) (skip, container int, isCont bool, next int, err error) {
	readN := func(size int) (int, error) {
		if size > len(b)-pos {
			return 0, errTruncated
		}
		var n uint64
		switch size {
		case 1:
			n = uint64(b[pos])
		case 2:
			n = uint64(binary.BigEndian.Uint16(b[pos:]))
		case 4:
			n = uint64(binary.BigEndian.Uint32(b[pos:]))
		}
		pos += size
		if n > uint64(len(b)) {
			return 0, errTruncated
		}
		return int(n), nil
	}
	switch c {
	case 0xc0, 0xc2, 0xc3: // nil, false, true
	case 0xcc, 0xd0:
		skip = 1
	case 0xcd, 0xd1:
		skip = 2
	case 0xca, 0xce, 0xd2:
		skip = 4
	case 0xcb, 0xcf, 0xd3:
		skip = 8
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext: type byte + 1, 2, 4, 8, 16
		skip = 1 + 1<<(c-0xd4)
	case 0xc4, 0xd9: // bin8, str8
		skip, err = readN(1)
	case 0xc5, 0xda:
		skip, err = readN(2)
	case 0xc6, 0xdb:
		skip, err = readN(4)
	case 0xc7, 0xc8, 0xc9: // ext8/16/32: length, then a type byte
		skip, err = readN(1 << (c - 0xc7))
		skip++
	case 0xdc:
		container, err = readN(2)
		isCont = true
	case 0xdd:
		container, err = readN(4)
		isCont = true
	case 0xde:
		container, err = readN(2)
		container, isCont = 2*container, true
	case 0xdf:
		container, err = readN(4)
		container, isCont = 2*container, true
	default: // 0xc1 is never used
		err = fmt.Errorf("invalid type byte 0x%02x", c)
	}
	return skip, container, isCont, pos, err
}
