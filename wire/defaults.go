package wire

import "time"

// The defaults both sides of a connection share; a zero field of
// wire.Config or master.Config means these.
const (
	// DefaultMaxMessageSize bounds one frame.
	DefaultMaxMessageSize = 64 << 20
	// DefaultHandshakeTimeout bounds authentication and the preamble.
	DefaultHandshakeTimeout = 5 * time.Second
	// DefaultKeepAliveInterval is yamux's keep-alive period: a peer that
	// stops answering is noticed within about this long.
	DefaultKeepAliveInterval = 10 * time.Second
)
