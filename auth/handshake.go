package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"crypto/subtle"
	"fmt"
	"hash"
	"io"
	"net"
	"time"

	"github.com/qm-dev/qm/pyproto"
)

const (
	// maxHandshakeMessage bounds every frame read during the handshake;
	// Python reads each with recv_bytes(256).
	maxHandshakeMessage = 256
	// nonceLen is the length of the random part of our challenge, Python's
	// MESSAGE_LENGTH.
	nonceLen = 40
	// legacyChallengeLen is the length of a Python <= 3.11 challenge (no
	// digest prefix) and the shortest challenge that Python answers.
	legacyChallengeLen = 20
	// maxDigestNameLen is the longest name in digests; like Python, we look
	// no further for the closing brace of "{name}".
	maxDigestNameLen = 8
)

var (
	challengeTag = []byte("#CHALLENGE#")
	welcome      = []byte("#WELCOME#")
	failure      = []byte("#FAILURE#")
	sha256Tag    = []byte("{sha256}")
	refusedTag   = []byte("#REFUSED#")
)

// Refuse tells a client, in place of the challenge, why the master will
// not serve its connection: Client returns ErrRefused with reason. A
// Python client reports it as a protocol error that shows the message.
// The caller closes conn.
func Refuse(w io.Writer, reason string) error {
	return pyproto.WriteMessage(w, append(refusedTag[:len(refusedTag):len(refusedTag)], reason...))
}

// printable returns b with anything but printable ASCII replaced, so that
// a peer's text cannot forge log lines or terminal escapes.
func printable(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		out[i] = c
	}
	return string(out)
}

// digests are the HMAC hashes that a peer's challenge may name, as Python's
// _ALLOWED_DIGESTS; the names are Python's hashlib names.
var digests = map[string]func() hash.Hash{
	"md5":      md5.New,
	"sha256":   sha256.New,
	"sha384":   sha512.New384,
	"sha3_256": func() hash.Hash { return sha3.New256() },
	"sha3_384": func() hash.Hash { return sha3.New384() },
}

// Server runs the listening side of the handshake on conn: it challenges the
// peer with "{sha256}" and 40 random bytes, accepts either "{sha256}" and the
// HMAC-SHA256 of that challenge or a raw HMAC-MD5 of it (Python <= 3.11 clients
// send that for any challenge), and replies #WELCOME# or #FAILURE#. It then
// answers the peer's challenge in the peer's style and reads the peer's
// verdict.
//
// The whole exchange runs under one deadline, timeout from now, which is
// cleared on success; a timeout <= 0 sets none. A wrong key gives an error
// satisfying errors.Is(err, ErrAuthFailed), and a silent peer a net.Error
// whose Timeout() is true. Server never closes conn: on error the caller
// should.
func Server(conn net.Conn, key []byte, timeout time.Duration) error {
	_, err := server(conn, ServerConfig{Keys: [][]byte{key}, Timeout: timeout}, rand.Reader)
	return err
}

// ServerConfig configures ServerKeys.
type ServerConfig struct {
	// Keys are the secrets a client may prove; none may be empty.
	Keys [][]byte
	// Timeout is the deadline of the whole exchange, as for Server.
	Timeout time.Duration
	// BeforeFailure, if not nil, is called when a client failed to prove
	// any key, before it is told so: it may wait, to slow down guessing.
	BeforeFailure func()
}

// ServerKeys is Server for a master with several keys: the client may
// prove any one of cfg.Keys, and ServerKeys returns its index. Every key
// is tried against the client's answer, in constant time each, so the
// exchange costs the same whichever key matches, or none.
func ServerKeys(conn net.Conn, cfg ServerConfig) (int, error) {
	return server(conn, cfg, rand.Reader)
}

// Client runs the connecting side of the handshake on conn: it answers the
// master's challenge in the master's style (a legacy 20-byte challenge with a
// raw HMAC-MD5), requires #WELCOME#, then challenges the master with
// "{sha256}" and 40 random bytes. Unlike Server it accepts only a "{sha256}"
// answer, so our own check is never downgraded: a Python >= 3.12 Listener or
// BaseManager server passes, but a Python <= 3.11 one, which can only answer
// with HMAC-MD5, is refused.
//
// Deadline, errors and ownership of conn are as for Server.
func Client(conn net.Conn, key []byte, timeout time.Duration) error {
	return client(conn, key, timeout, rand.Reader)
}

// server is ServerKeys with the source of our challenge as a parameter, so
// that fuzz tests can replay a recorded peer.
func server(conn net.Conn, cfg ServerConfig, rnd io.Reader) (int, error) {
	if len(cfg.Keys) == 0 {
		return -1, ErrEmptyKey
	}
	for _, k := range cfg.Keys {
		if len(k) == 0 {
			return -1, ErrEmptyKey
		}
	}
	which := -1
	err := withDeadline(conn, cfg.Timeout, func() error {
		var err error
		which, err = deliverChallenge(conn, cfg.Keys, rnd, "client", true, cfg.BeforeFailure)
		if err != nil {
			return err
		}
		if err := answerChallenge(conn, cfg.Keys[which]); err != nil {
			return err
		}
		ok, err := readVerdict(conn)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: client rejected the master's answer to its challenge", ErrAuthFailed)
		}
		return nil
	})
	if err != nil {
		return -1, err
	}
	return which, nil
}

// client is Client with the source of our challenge as a parameter.
func client(conn net.Conn, key []byte, timeout time.Duration, rnd io.Reader) error {
	if len(key) == 0 {
		return ErrEmptyKey
	}
	return withDeadline(conn, timeout, func() error {
		if err := answerChallenge(conn, key); err != nil {
			return err
		}
		ok, err := readVerdict(conn)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: master rejected the authkey", ErrAuthFailed)
		}
		_, err = deliverChallenge(conn, [][]byte{key}, rnd, "master", false, nil)
		return err
	})
}

// withDeadline runs handshake under one deadline for the whole exchange, so a
// peer that trickles bytes cannot hold the connection open, and clears it on
// success so that it does not leak into whatever runs on conn next.
func withDeadline(conn net.Conn, timeout time.Duration, handshake func() error) error {
	if timeout > 0 {
		if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			return fmt.Errorf("set handshake deadline: %w", err)
		}
	}
	if err := handshake(); err != nil {
		return err
	}
	if timeout > 0 {
		if err := conn.SetDeadline(time.Time{}); err != nil {
			return fmt.Errorf("clear handshake deadline: %w", err)
		}
	}
	return nil
}

// deliverChallenge sends "#CHALLENGE#{sha256}" and a fresh nonce, checks the
// peer's response against each of keys and sends our verdict; it returns
// the index of the key the peer proved. allowLegacy admits a raw HMAC-MD5
// response over the same challenge bytes. beforeFailure, if not nil, runs
// before a failure is sent.
func deliverChallenge(conn net.Conn, keys [][]byte, rnd io.Reader, peer string, allowLegacy bool, beforeFailure func()) (int, error) {
	msg := make([]byte, len(challengeTag)+len(sha256Tag)+nonceLen)
	n := copy(msg, challengeTag)
	n += copy(msg[n:], sha256Tag)
	if _, err := io.ReadFull(rnd, msg[n:]); err != nil {
		return -1, fmt.Errorf("generate challenge: %w", err)
	}
	if err := pyproto.WriteMessage(conn, msg); err != nil {
		return -1, fmt.Errorf("send challenge: %w", err)
	}
	resp, err := pyproto.ReadMessage(conn, maxHandshakeMessage)
	if err != nil {
		return -1, fmt.Errorf("read %s response: %w", peer, err)
	}
	// The MAC covers the digest prefix too, so a peer cannot claim that we
	// asked for another digest.
	which, err := verifyResponse(keys, msg[len(challengeTag):], resp, peer, allowLegacy)
	if err != nil {
		if beforeFailure != nil {
			beforeFailure()
		}
		// Tell the peer, as Python does, so that it reports a rejected key
		// rather than a dropped connection. Our error matters more than a
		// failed write.
		_ = pyproto.WriteMessage(conn, failure)
		return -1, err
	}
	if err := pyproto.WriteMessage(conn, welcome); err != nil {
		return -1, fmt.Errorf("send welcome: %w", err)
	}
	return which, nil
}

// verifyResponse checks resp against our challenge under each of keys and
// returns the index of the key it proves.
func verifyResponse(keys [][]byte, challenge, resp []byte, peer string, allowLegacy bool) (int, error) {
	var h func() hash.Hash
	var got []byte
	switch {
	case len(resp) == md5.Size:
		// Python's rule: a 16-byte response is a raw HMAC-MD5, the only
		// thing a Python <= 3.11 peer can send.
		if !allowLegacy {
			return -1, fmt.Errorf("%w: %s answered with legacy HMAC-MD5 (Python 3.11 or older?), HMAC-SHA256 is required", ErrAuthFailed, peer)
		}
		h, got = md5.New, resp
	case bytes.HasPrefix(resp, sha256Tag):
		h, got = sha256.New, resp[len(sha256Tag):]
	default:
		return -1, fmt.Errorf("%w: %s response is neither {sha256} nor a legacy HMAC-MD5", ErrBadHandshake, peer)
	}
	which := matchKey(h, keys, challenge, got)
	if which < 0 {
		return -1, fmt.Errorf("%w: %s failed to prove it knows the authkey", ErrAuthFailed, peer)
	}
	return which, nil
}

// matchKey returns the index of the key under which got is the HMAC of
// challenge with h, or -1. It signs with every key and compares in
// constant time each, with no branch on a result, so its cost does not
// tell which key matched, or whether one did. (The cost of a key depends
// on its own length, not on the peer's answer.)
func matchKey(h func() hash.Hash, keys [][]byte, challenge, got []byte) int {
	which := -1
	// Backwards, so that the first match wins; the acl package refuses
	// two keys with one secret anyway.
	for i := len(keys) - 1; i >= 0; i-- {
		eq := subtle.ConstantTimeCompare(sign(h, keys[i], challenge), got)
		which = subtle.ConstantTimeSelect(eq, i, which)
	}
	return which
}

// answerChallenge reads the peer's challenge and sends our response.
func answerChallenge(conn net.Conn, key []byte) error {
	msg, err := pyproto.ReadMessage(conn, maxHandshakeMessage)
	if err != nil {
		return fmt.Errorf("read challenge: %w", err)
	}
	challenge, ok := bytes.CutPrefix(msg, challengeTag)
	if reason, refused := bytes.CutPrefix(msg, refusedTag); !ok && refused {
		return fmt.Errorf("%w: %s", ErrRefused, printable(reason))
	}
	if !ok {
		return fmt.Errorf("%w: expected #CHALLENGE#", ErrBadHandshake)
	}
	resp, err := respond(key, challenge)
	if err != nil {
		return err
	}
	if err := pyproto.WriteMessage(conn, resp); err != nil {
		return fmt.Errorf("send response: %w", err)
	}
	return nil
}

// respond answers challenge in the peer's style, as Python's
// _create_response does: a raw HMAC-MD5 for a 20-byte legacy challenge,
// otherwise "{name}" and the HMAC, with the digest the challenge names, of
// the whole challenge.
func respond(key, challenge []byte) ([]byte, error) {
	if len(challenge) < legacyChallengeLen {
		return nil, fmt.Errorf("%w: challenge of %d bytes is too short", ErrBadHandshake, len(challenge))
	}
	if len(challenge) == legacyChallengeLen {
		return sign(md5.New, key, challenge), nil
	}
	name, err := digestName(challenge)
	if err != nil {
		return nil, err
	}
	resp := append([]byte("{"+name+"}"), sign(digests[name], key, challenge)...)
	return resp, nil
}

// digestName returns the supported digest that a modern challenge names in
// its "{name}" prefix.
func digestName(challenge []byte) (string, error) {
	if challenge[0] != '{' {
		return "", fmt.Errorf("%w: challenge has no {digest} prefix", ErrBadHandshake)
	}
	end := bytes.IndexByte(challenge[1:min(len(challenge), maxDigestNameLen+2)], '}')
	if end < 0 {
		return "", fmt.Errorf("%w: challenge has no {digest} prefix", ErrBadHandshake)
	}
	name := string(challenge[1 : 1+end])
	if _, ok := digests[name]; !ok {
		return "", fmt.Errorf("%w: unsupported digest %q", ErrBadHandshake, name)
	}
	return name, nil
}

// readVerdict reads the peer's #WELCOME# or #FAILURE#. Like Python, it takes
// anything but #WELCOME# as a rejection.
func readVerdict(conn net.Conn) (bool, error) {
	msg, err := pyproto.ReadMessage(conn, maxHandshakeMessage)
	if err != nil {
		return false, fmt.Errorf("read verdict: %w", err)
	}
	return bytes.Equal(msg, welcome), nil
}

// sign returns the HMAC of msg under key with the hash h.
func sign(h func() hash.Hash, key, msg []byte) []byte {
	m := hmac.New(h, key)
	m.Write(msg)
	return m.Sum(nil)
}
