package master

import (
	"context"
	"errors"
	"time"

	"github.com/qm-dev/qm/wire"
)

// A get waiting for tasks, or a put for room, may be ended before its
// time by a reload of the ACL that takes the key's right (endDeniedGets),
// and by its client: a call whose context ends is cancelled with
// wire.OpCancel, naming its stream, so that a get given up by its client
// takes nothing more (a task it took would be handed to nobody: lost if
// taken for good, an attempt spent if leased).

// streamCall is the call in progress on a stream, if it waits: a call of
// op on queue, which cancel ends.
type streamCall struct {
	op     wire.Op
	queue  string
	cancel context.CancelCauseFunc // nil while no call waits
	// cancelled says the client cancelled the stream's call before it
	// began to wait (the cancel overtook it, or came while a chained
	// call's first part ran): it does not wait. The client closes a
	// stream whose call it cancelled, so no later call sees it.
	cancelled bool
	// early is when a cancel came for a stream not served yet (its
	// goroutine had not begun when the cancel's stream was served): the
	// mark waits for it, for earlyKept. Zero once the stream is served.
	early time.Time
}

// earlyKept is how long the mark of a cancel that came before its stream
// was served is kept: a stream is served within moments of opening, and
// the mark of one already over (its call answered, the stream closed)
// must not stay for ever.
const earlyKept = 10 * time.Second

// errCancelled is the cause of a wait its client cancelled.
var errCancelled = errors.New("cancelled by the client")

// openStream and closeStream bracket the serving of a stream, so that
// its calls can be cancelled.
func (c *clientConn) openStream(stream uint32) {
	c.waitMu.Lock()
	if c.calls == nil {
		c.calls = make(map[uint32]*streamCall)
	}
	if sc := c.calls[stream]; sc != nil {
		sc.early = time.Time{} // cancelled before it was served
	} else {
		c.calls[stream] = &streamCall{}
	}
	c.waitMu.Unlock()
}

func (c *clientConn) closeStream(stream uint32) {
	c.waitMu.Lock()
	delete(c.calls, stream)
	c.waitMu.Unlock()
}

// watchWait returns ctx for a call of op on queue on stream that may
// wait, which its client (cancelWait) or a reload of the ACL may end
// before its time, and a func to call when the call is done. A call that
// may not wait gets ctx as it is.
func (c *clientConn) watchWait(ctx context.Context, stream uint32, op wire.Op, queue string) (context.Context, func()) {
	if ctx.Err() != nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	c.waitMu.Lock()
	sc := c.calls[stream]
	if sc == nil { // not served by serveStream (a test's call)
		sc = &streamCall{}
	}
	sc.op, sc.queue, sc.cancel = op, queue, cancel
	if sc.cancelled {
		cancel(errCancelled)
	}
	c.waitMu.Unlock()
	return ctx, func() {
		c.waitMu.Lock()
		sc.cancel = nil
		c.waitMu.Unlock()
		cancel(nil)
	}
}

// cancelWait ends the wait of the call on stream, or, if it does not
// wait yet, keeps it from waiting.
func (c *clientConn) cancelWait(stream uint32) {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	sc := c.calls[stream]
	if sc == nil {
		// Not served yet (its cancel overtook it), or over already (its
		// call answered, the stream closed): marked, for the first. Stream
		// IDs are not used twice, so a mark of the second does nothing.
		now := time.Now()
		for id, old := range c.calls {
			if !old.early.IsZero() && now.Sub(old.early) > earlyKept {
				delete(c.calls, id)
			}
		}
		if c.calls == nil {
			c.calls = make(map[uint32]*streamCall)
		}
		c.calls[stream] = &streamCall{cancelled: true, early: now}
		return
	}
	sc.cancelled = true
	if sc.cancel != nil {
		sc.cancel(errCancelled)
	}
}
