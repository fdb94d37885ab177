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

// The default queues: where qworker takes tasks and puts the results of
// tasks that name no reply queue, where qmaster map puts its tasks, and
// what the classic Python scripts' get_task_queue and get_result_queue
// serve.
const (
	DefaultTaskQueue   = "tasks"
	DefaultResultQueue = "results"
)
