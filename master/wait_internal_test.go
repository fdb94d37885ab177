package master

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// A cancel that comes before its stream is served (it overtook the
// stream's first call) keeps that call from waiting; its mark is dropped
// earlyKept after, if the stream never comes (its call was over).
func TestCancelBeforeItsStreamIsServed(t *testing.T) {
	c := &clientConn{}
	c.openStream(1) // the cancel's own stream
	c.cancelWait(3)
	c.openStream(3)
	ctx, done := c.watchWait(context.Background(), 3, wire.OpGet, "jobs")
	defer done()
	if !errors.Is(context.Cause(ctx), errCancelled) {
		t.Fatalf("the call on the stream cancelled before it was served waits: cause %v", context.Cause(ctx))
	}
	c.closeStream(3)

	c.cancelWait(5) // a stream whose call was over
	c.waitMu.Lock()
	c.calls[5].early = time.Now().Add(-earlyKept - time.Second)
	c.waitMu.Unlock()
	c.cancelWait(7)
	c.waitMu.Lock()
	_, kept := c.calls[5]
	c.waitMu.Unlock()
	if kept {
		t.Fatal("the mark of a cancel whose stream never came is kept past earlyKept")
	}
}
