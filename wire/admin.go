package wire

import (
	"context"
	"time"
)

// The operators' calls: pause and resume a queue, requeue or drop dead
// tasks. Dead tasks are listed with Peek on the dead-letter queue.

// Pause stops queue from handing out tasks (gets wait as if it were
// empty); puts still go in. Pausing a queue that does not exist creates it.
func (c *Client) Pause(ctx context.Context, queue string) error {
	return c.call(ctx, &Request{Op: OpPause, Queue: queue}, &Response{})
}

// Resume makes a paused queue hand out its tasks again.
func (c *Client) Resume(ctx context.Context, queue string) error {
	return c.call(ctx, &Request{Op: OpResume, Queue: queue}, &Response{})
}

// Requeue moves the dead tasks ids of queue (all of them if none), from
// its dead-letter queue back to the end of queue with their attempts
// anew, and returns how many it moved. An id that is not a ready task of
// the dead-letter queue gives an error matching ErrNoSuchTask; the others
// move still, and count.
func (c *Client) Requeue(ctx context.Context, queue string, ids ...uint64) (int, error) {
	var resp Response
	err := c.call(ctx, &Request{Op: OpRequeue, Queue: queue, IDs: ids}, &resp)
	return resp.Count, err
}

// Drop removes the ready tasks ids of queue (for dead tasks, name the
// dead-letter queue, QUEUE.dead) for good, and returns how many it
// removed. Errors are as for Requeue.
func (c *Client) Drop(ctx context.Context, queue string, ids ...uint64) (int, error) {
	var resp Response
	err := c.call(ctx, &Request{Op: OpDrop, Queue: queue, IDs: ids}, &resp)
	return resp.Count, err
}

// Policy is a queue's retry policy (Client.Config). MaxAttempts 0 and
// BackoffMin 0 take the master's defaults; BackoffMin -1 means no backoff.
type Policy struct {
	MaxAttempts            int
	BackoffMin, BackoffMax time.Duration
}

// Config sets the retry policy of queue; the zero Policy goes back to the
// master's defaults. Stats shows the policy in effect.
func (c *Client) Config(ctx context.Context, queue string, p Policy) error {
	return c.call(ctx, &Request{Op: OpConfig, Queue: queue, MaxAttempts: p.MaxAttempts,
		BackoffMin: p.BackoffMin, BackoffMax: p.BackoffMax}, &Response{})
}

// Delayed returns the first n delayed tasks of queue, by due time (each
// with its Due): delayed puts and failed tasks waiting out their backoff.
func (c *Client) Delayed(ctx context.Context, queue string, n int) ([]Task, error) {
	var resp Response
	err := c.call(ctx, &Request{Op: OpDelayed, Queue: queue, Max: n}, &resp)
	return resp.Tasks, err
}

// RunNow makes the delayed tasks ids of queue (all of them if none) ready
// at once, and returns how many it moved. Errors are as for Requeue.
func (c *Client) RunNow(ctx context.Context, queue string, ids ...uint64) (int, error) {
	var resp Response
	err := c.call(ctx, &Request{Op: OpRunNow, Queue: queue, IDs: ids}, &resp)
	return resp.Count, err
}
