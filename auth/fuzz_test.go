package auth

import (
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/qm-dev/qm/pyproto"
)

// The fuzz targets replay what a peer sends, with our challenge made
// predictable by zeros, so that a recorded peer's responses stay valid and the
// fuzzer can reach every step. testdata/fuzz holds such recordings of real
// Python 3.8 to 3.13 clients (for the server targets) and listeners (for the
// client target), taken with fuzzKey.

// fuzzKey is the authkey of every fuzzed handshake.
var fuzzKey = []byte("qm-fuzz-key")

// zeros is a source of challenges that makes ours "{sha256}" and 40 zeros.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// memConn is a net.Conn that reads a fixed input and discards what is
// written, so a fuzzed handshake never waits on a peer.
type memConn struct {
	in       io.Reader
	deadline time.Time
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *memConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *memConn) SetDeadline(t time.Time) error    { c.deadline = t; return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// handshakeFunc is serverOneKey or client.
type handshakeFunc func(net.Conn, []byte, time.Duration, io.Reader) error

// serverOneKey is server with one key, as Server calls it.
func serverOneKey(conn net.Conn, key []byte, timeout time.Duration, rnd io.Reader) error {
	_, err := server(conn, ServerConfig{Keys: [][]byte{key}, Timeout: timeout}, rnd)
	return err
}

// replay runs handshake against a peer that sends in, read in two pieces cut
// at cut, and checks the outcome: success with the deadline cleared, or an
// error that a peer may cause.
func replay(t *testing.T, handshake handshakeFunc, in []byte, cut int) error {
	t.Helper()
	cut = min(cut, len(in))
	c := &memConn{in: io.MultiReader(bytes.NewReader(in[:cut]), bytes.NewReader(in[cut:]))}
	err := handshake(c, fuzzKey, time.Minute, zeros{})
	if err == nil {
		if !c.deadline.IsZero() {
			t.Fatal("handshake succeeded but left its deadline set")
		}
		return nil
	}
	for _, want := range []error{ErrAuthFailed, ErrBadHandshake, pyproto.ErrMessageTooLarge, pyproto.ErrBadFrame, io.EOF, io.ErrUnexpectedEOF} {
		if errors.Is(err, want) {
			return err
		}
	}
	t.Fatalf("handshake error %q is not one a peer should cause", err)
	return nil
}

// frames returns msgs framed one after the other.
func frames(msgs ...[]byte) []byte {
	var b bytes.Buffer
	for _, m := range msgs {
		_ = pyproto.WriteMessage(&b, m)
	}
	return b.Bytes()
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// transcript is what a peer sends, and the error it should cause.
type transcript struct {
	name string
	data []byte
	want error
}

// transcripts returns what good and bad peers send: clients if ofClient,
// else masters.
func transcripts(ofClient bool) []transcript {
	ours := cat(sha256Tag, make([]byte, nonceLen)) // our challenge from zeros
	theirs := bytes.Repeat([]byte{7}, nonceLen)
	legacy := cat(challengeTag, theirs[:legacyChallengeLen])
	modern := cat(challengeTag, sha256Tag, theirs)
	md5Proof := sign(md5.New, fuzzKey, ours)
	sha256Proof := cat(sha256Tag, sign(sha256.New, fuzzKey, ours))
	wrongProof := cat(sha256Tag, sign(sha256.New, []byte("other"), ours))
	if ofClient {
		return []transcript{
			{"legacy client", frames(md5Proof, legacy, welcome), nil},
			{"modern client", frames(sha256Proof, modern, welcome), nil},
			{"sha3_384 client", frames(sha256Proof, cat(challengeTag, []byte("{sha3_384}"), theirs), welcome), nil},
			{"client rejects master", frames(sha256Proof, modern, failure), ErrAuthFailed},
			{"wrong key", frames(wrongProof), ErrAuthFailed},
			{"oversized long form", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0}, pyproto.ErrMessageTooLarge},
		}
	}
	return []transcript{
		{"modern master", frames(modern, welcome, sha256Proof), nil},
		{"legacy challenge", frames(legacy, welcome, sha256Proof), nil},
		{"legacy master", frames(legacy, welcome, md5Proof), ErrAuthFailed},
		{"master rejects client", frames(modern, failure), ErrAuthFailed},
		{"impostor master", frames(modern, welcome, wrongProof), ErrAuthFailed},
	}
}

func FuzzServerHandshake(f *testing.F) {
	for _, t := range transcripts(true) {
		f.Add(t.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		replay(t, serverOneKey, data, len(data))
	})
}

// FuzzServerHandshakeSplit delivers the input in two reads cut at k and
// requires the same outcome as in one piece: the handshake must not depend on
// how the peer's bytes arrive.
func FuzzServerHandshakeSplit(f *testing.F) {
	for _, t := range transcripts(true) {
		for _, k := range []uint16{1, 5, 30} {
			f.Add(t.data, k)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, k uint16) {
		whole := replay(t, serverOneKey, data, len(data))
		split := replay(t, serverOneKey, data, int(k))
		if errString(whole) != errString(split) {
			t.Fatalf("in one piece: %v; cut at %d: %v", whole, k, split)
		}
	})
}

func FuzzClientHandshake(f *testing.F) {
	for _, t := range transcripts(false) {
		f.Add(t.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		replay(t, client, data, len(data))
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestTranscripts checks that the synthetic seeds reach the outcomes they
// were written for, so that the fuzzers start from every step.
func TestTranscripts(t *testing.T) {
	for _, side := range []struct {
		handshake handshakeFunc
		peers     []transcript
	}{{serverOneKey, transcripts(true)}, {client, transcripts(false)}} {
		for _, tt := range side.peers {
			t.Run(tt.name, func(t *testing.T) {
				if err := replay(t, side.handshake, tt.data, len(tt.data)); !errors.Is(err, tt.want) {
					t.Fatalf("got %v, want %v", err, tt.want)
				}
			})
		}
	}
}
