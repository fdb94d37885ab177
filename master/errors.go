package master

import "errors"

var (
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("master: server closed")
	// ErrNoAuthkey is returned by New when no authkey is set and
	// InsecureNoAuth is not.
	ErrNoAuthkey = errors.New("no authkey: set one, or InsecureNoAuth to serve without authentication")
)
