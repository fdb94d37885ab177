package auth

import "errors"

var (
	// ErrAuthFailed is returned when a peer fails to prove that it knows the
	// authkey, or rejects our proof. Errors wrap it with the detail, as in
	// "authentication failed: master rejected the authkey".
	ErrAuthFailed = errors.New("authentication failed")

	// ErrBadHandshake is returned when a peer sends a malformed challenge or
	// response, or names a digest that the handshake does not support.
	ErrBadHandshake = errors.New("malformed handshake")

	// ErrEmptyKey is returned by Server and Client when the authkey is empty:
	// anyone can compute an HMAC under an empty key, so it would prove nothing.
	ErrEmptyKey = errors.New("empty authkey")

	// ErrRefused is returned by Client when the master refused the
	// connection before authenticating it (see Refuse), e.g. because too
	// many connections are waiting to authenticate. Retrying later may work.
	ErrRefused = errors.New("master refused the connection")
)
