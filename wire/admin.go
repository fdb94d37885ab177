package wire

import "context"

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
