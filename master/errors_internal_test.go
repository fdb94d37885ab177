package master

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/wire"
)

// errorResponse codes the queues' and the store's errors as the protocol
// names them, by wire.CodeOf's precedence whatever the order they were
// joined in.
func TestErrorResponseCodes(t *testing.T) {
	tests := []struct {
		err  error
		want wire.Code
	}{
		{fmt.Errorf("put: %w: log.0001: no space left on device", store.ErrDiskFull), wire.CodeDiskFull},
		{queue.ErrUnknownQueue, wire.CodeUnknownQueue},
		{&queue.TaskError{ID: 7, Err: queue.ErrNotLeased}, wire.CodeNotLeased},
		{fmt.Errorf("%w: lease must be >= 0", queue.ErrBadArgument), wire.CodeBadRequest},
		{errors.Join(queue.ErrUnknownQueue, queue.ErrClosed), wire.CodeShuttingDown},
		{errors.Join(queue.ErrClosed, wire.ErrUnknownQueue), wire.CodeShuttingDown},
		{errors.Join(store.ErrDiskFull, queue.ErrQueueFull), wire.CodeDiskFull},
		{wire.ErrTooManyStreams, wire.CodeTooManyStreams},
		{errors.New("something else"), wire.CodeInternal},
	}
	for _, tt := range tests {
		r := errorResponse(tt.err)
		// The queues' "queue manager closed" is the master's shutdown.
		text := strings.ReplaceAll(tt.err.Error(), queue.ErrClosed.Error(), "master shutting down")
		if r.Code != tt.want || r.Error != text {
			t.Errorf("errorResponse(%v) = code %d %q, want code %d and %q", tt.err, r.Code, r.Error, tt.want, text)
		}
	}
}
