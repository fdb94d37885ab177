package wire

import (
	"fmt"
	"io"
)

// Version is the protocol version this package speaks.
const Version = 1

// Magic starts the preamble a native client sends after authentication.
// Read as a Python frame length it is far above any sane size, so the
// master can tell a native client from a Python one by its first bytes.
const Magic = "QMW"

// PreambleLen is the length of the client preamble and of the master's reply.
const PreambleLen = len(Magic) + 1

// preamble replies: Magic, the master's version, then one status byte.
const (
	preambleOK          = 0
	preambleUnsupported = 1
	preambleFull        = 2 // the master is at --max-conns
)

// WritePreamble sends the client preamble.
func WritePreamble(w io.Writer) error {
	_, err := w.Write([]byte(Magic + string(rune(Version))))
	return err
}

// CheckPreamble validates a client preamble (PreambleLen bytes) read by the
// master and writes the reply. It returns ErrBadPreamble or
// ErrUnsupportedVersion when the connection must be closed.
func CheckPreamble(w io.Writer, p []byte) error {
	if len(p) != PreambleLen || string(p[:len(Magic)]) != Magic {
		return ErrBadPreamble
	}
	if p[len(Magic)] != Version {
		_, _ = w.Write(preambleReply(preambleUnsupported))
		return fmt.Errorf("%w: client speaks %d, master %d", ErrUnsupportedVersion, p[len(Magic)], Version)
	}
	_, err := w.Write(preambleReply(preambleOK))
	return err
}

// RefusePreamble reads nothing more and answers a valid client preamble
// with "master full: too many connections", which Dial reports as an
// error wrapping ErrMasterFull. The caller closes the connection.
func RefusePreamble(w io.Writer) error {
	_, err := w.Write(preambleReply(preambleFull))
	return err
}

func preambleReply(status byte) []byte {
	return []byte{Magic[0], Magic[1], Magic[2], Version, status}
}

// readPreambleReply reads the master's reply to the client preamble.
func readPreambleReply(r io.Reader) error {
	var b [PreambleLen + 1]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return fmt.Errorf("read preamble reply: %w", err)
	}
	if string(b[:len(Magic)]) != Magic {
		if b[frameHeaderLen] == '#' { // a #CHALLENGE# frame: the master wants an authkey
			return fmt.Errorf("%w: the master requires an authkey", ErrBadPreamble)
		}
		return fmt.Errorf("%w: unexpected reply from the master", ErrBadPreamble)
	}
	switch b[PreambleLen] {
	case preambleOK:
		return nil
	case preambleFull:
		return fmt.Errorf("%w: too many connections; try again later", ErrMasterFull)
	default:
		return fmt.Errorf("%w: master speaks %d, client %d", ErrUnsupportedVersion, b[len(Magic)], Version)
	}
}
