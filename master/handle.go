package master

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/qm-dev/qm/acl"
	"github.com/qm-dev/qm/master/queue"
	"github.com/qm-dev/qm/store"
	"github.com/qm-dev/qm/wire"
)

// defaultPeek is how many tasks a peek shows when it names no count.
const defaultPeek = 10

// callBuffers hold what a get or a complete is built from; a stream
// reuses them from call to call instead of allocating them for each.
type callBuffers struct {
	items []queue.Item // a put's items
	taken []queue.Task // a get's tasks
	tasks []wire.Task  // what a get's response carries

	// A complete's acks, and the results it publishes for them.
	ids     []uint64
	tokens  []string // tokens[i] is the delivery token of ids[i], if any has one
	values  [][]byte // values[i] is the result of ids[i]
	acked   []queue.Task
	results []wire.Result
	dests   []string // dests[i] is the queue of results[i]
	// resultsOf[i] is the task of results[i] (queue.PutRequest.ResultsOf)
	// when some acked tasks have no result; unpublished are those.
	resultsOf, unpublished []queue.Task
}

// maxReusedTasks bounds the buffers a stream keeps between calls.
const maxReusedTasks = 4096

// reset readies b for the next call: it drops the payloads the buffers
// point to, and buffers grown too large.
func (b *callBuffers) reset() {
	clear(b.items)
	clear(b.taken)
	clear(b.tasks)
	clear(b.values)
	clear(b.acked)
	clear(b.results)
	clear(b.dests)
	clear(b.tokens)
	clear(b.resultsOf)
	clear(b.unpublished)
	*b = callBuffers{items: b.items[:0], taken: b.taken[:0], tasks: b.tasks[:0], ids: b.ids[:0], tokens: b.tokens[:0], values: b.values[:0],
		acked: b.acked[:0], results: b.results[:0], dests: b.dests[:0], resultsOf: b.resultsOf[:0], unpublished: b.unpublished[:0]}
	if max(cap(b.items), cap(b.taken), cap(b.tasks), cap(b.ids), cap(b.acked), cap(b.results), cap(b.unpublished)) > maxReusedTasks {
		*b = callBuffers{}
	}
}

// handle runs one request and returns its response. What a get or a
// complete is built from is kept in buf, which the caller resets once the
// response is written.
func (c *clientConn) handle(req *wire.Request, stream uint32, buf *callBuffers) *wire.Response {
	if c.s.isClosing() && req.Op != wire.OpAck && req.Op != wire.OpComplete && req.Op != wire.OpNack && req.Op != wire.OpRelease {
		// Acks still count during shutdown: they finish work already
		// done (and releases hand back work not begun).
		return errorResponse(wire.ErrShuttingDown)
	}
	// The key as authorized: a reload of the ACL swaps it (SetACL).
	key := c.key.Load()
	if err := c.authorize(key, req); err != nil { // acl.go
		return errorResponse(err)
	}
	q := c.s.queues
	resp := &wire.Response{}
	var err error
	switch req.Op {
	case wire.OpHello:
		c.setIdentity(req.Role, req.Name)
		resp.ClientID = c.id
		resp.MaxMessageSize = c.s.cfg.MaxMessageSize
		resp.MaxStreams = c.s.cfg.MaxStreams
		resp.QueuesOutlive = c.s.cfg.DataDir != "" || c.s.cfg.OpenQueues != nil
		resp.NoAdmin = key != nil && !key.Admin
	case wire.OpPut:
		resp.IDs, resp.Repeats, err = c.put(req, stream, buf)
	case wire.OpGet:
		resp.Tasks, err = c.get(req, stream, buf, key)
		resp.Lease = c.s.cfg.DefaultLease
		if req.Lease > 0 {
			resp.Lease = req.Lease
		}
	case wire.OpAck:
		_, err = q.Ack(queue.AckRequest{Queue: req.Queue, Owner: c.id, IDs: req.IDs}, nil)
	case wire.OpNack:
		if len(req.IDs) != 1 {
			err = fmt.Errorf("%w: nack takes one task id", wire.ErrBadRequest)
			break
		}
		err = q.Nack(queue.NackRequest{Queue: req.Queue, Owner: c.id, ID: req.IDs[0], Error: cutError(req.Error), RetryAfter: req.RetryAfter, NoRetry: req.NoRetry})
	case wire.OpRelease:
		err = c.release(req)
	case wire.OpCancel:
		if len(req.IDs) != 1 || req.IDs[0] > math.MaxUint32 {
			err = fmt.Errorf("%w: cancel takes one stream id", wire.ErrBadRequest)
			break
		}
		c.cancelWait(uint32(req.IDs[0])) // wait.go
	case wire.OpExtend:
		if len(req.Tokens) > 0 {
			err = c.extendDeliveries(req)
			break
		}
		err = q.Extend(req.Queue, c.id, req.IDs, req.Lease)
	case wire.OpComplete:
		err = c.complete(req, buf)
	case wire.OpStats:
		resp.Stats, err = c.stats(req.Queue)
	case wire.OpPeek, wire.OpDelayed:
		n := req.Max
		if n <= 0 {
			n = defaultPeek
		}
		peek := q.Peek
		if req.Op == wire.OpDelayed {
			peek = q.PeekDelayed
		}
		var ts []queue.Task
		ts, err = peek(req.Queue, n)
		resp.Tasks = wireTasks(req.Queue, ts)
		if k := fitMessage(resp.Tasks, c.s.cfg.MaxMessageSize); k < len(resp.Tasks) {
			if k == 0 {
				err = c.s.tooLargeTask(req.Queue, ts[0].ID, wire.TaskSizeBound(&resp.Tasks[0]))
			}
			resp.Tasks = resp.Tasks[:k] // what fits a message
		}
	case wire.OpPurge:
		resp.Count, err = q.Purge(req.Queue)
		c.audit(req, resp.Count, err) // admin.go
	case wire.OpDelete:
		// A name no queue can have is refused before it is remembered
		// (and kept, with a data directory) as a deletion.
		if err = queue.CheckName(req.Queue); err != nil {
			break
		}
		at := time.Now() // tasks put from now on name a queue made anew
		err = q.Delete(req.Queue)
		if err == nil || req.CancelTasks && (errors.Is(err, queue.ErrUnknownQueue) || errors.Is(err, store.ErrDiskFull)) {
			// Tasks may reply to a queue not made yet (a map stopped
			// before its first get of results), or one a full disk keeps
			// from being deleted: they are cancelled all the same, in
			// memory (their results, stored or not, go nowhere).
			c.s.noteDeleted(c.ctx, req.Queue, at, req.CancelTasks)
			c.s.keepDeletion(req.Queue)
			if req.CancelTasks {
				resp.Count = 1 // said so: an older master does not
			}
		}
		if err == nil || errors.Is(err, queue.ErrUnknownQueue) {
			c.s.forgetResultQueue(req.Queue)
		}
		c.audit(req, 0, err)
	case wire.OpQueues:
		resp.Queues, err = q.Queues()
	case wire.OpClients:
		resp.Clients, resp.Note = c.s.allClients(c.ctx)
	case wire.OpPause, wire.OpResume, wire.OpRequeue, wire.OpDrop, wire.OpRunNow:
		resp.Count, err = c.operate(req) // admin.go
	case wire.OpConfig:
		err = q.SetPolicy(req.Queue, queue.Policy{MaxAttempts: req.MaxAttempts, BackoffMin: req.BackoffMin, BackoffMax: req.BackoffMax})
		c.audit(req, 0, err)
	default:
		err = fmt.Errorf("%w: %d", wire.ErrUnknownOp, req.Op)
	}
	if err != nil {
		e := errorResponse(err)
		e.Tasks = resp.Tasks // a get may fail after taking tasks; never lose them
		e.Count = resp.Count // a requeue or drop may fail for some tasks only
		e.IDs = resp.IDs     // a put refused by the disk may have had some tasks taken already
		return e
	}
	return resp
}

// put puts req's items, built in buf: the queues copy what they keep.
func (c *clientConn) put(req *wire.Request, stream uint32, buf *callBuffers) (ids []uint64, repeats int, err error) {
	if len(req.Items) == 0 {
		return nil, 0, fmt.Errorf("%w: put without items", wire.ErrBadRequest)
	}
	if err := c.s.checkMemory(); err != nil {
		return nil, 0, err
	}
	if req.ReplyTo != "" {
		// Else the tasks would run and their results go nowhere.
		if err := queue.CheckName(req.ReplyTo); err != nil {
			return nil, 0, fmt.Errorf("reply queue: %w", err)
		}
	}
	items := buf.items[:0]
	for _, p := range req.Items {
		items = append(items, queue.Item{Payload: p, ReplyTo: req.ReplyTo, Priority: req.Priority})
	}
	buf.items = items
	if err := c.s.checkItemSizes(items); err != nil {
		return nil, 0, err
	}
	if err := putOptions(req, items); err != nil {
		return nil, 0, err
	}
	preq := queue.PutRequest{Queue: req.Queue, Items: items, MaxWait: max(req.Timeout, 0), RequestID: req.RequestID, Resent: req.Resent}
	if len(req.Keys) > 0 {
		preq.Repeats = new(int) // only then: it escapes
	}
	ctx, done := c.watchWait(c.waitCtx(req.Timeout), stream, req.Op, req.Queue) // wait.go
	defer done()
	ids, err = c.s.queues.Put(ctx, preq)
	if preq.Repeats != nil {
		repeats = *preq.Repeats
	}
	return ids, repeats, err
}

// putOptions sets the due time and keys of a put's items from req, or
// says what is wrong with them.
func putOptions(req *wire.Request, items []queue.Item) error {
	switch {
	case req.Delay < 0:
		return fmt.Errorf("%w: a delay must be >= 0, got %v", wire.ErrBadRequest, req.Delay)
	case req.Delay > 0 && !req.At.IsZero():
		return fmt.Errorf("%w: a put takes a delay or a time to run at, not both", wire.ErrBadRequest)
	case len(req.Keys) > 0 && len(req.Keys) != len(items):
		return fmt.Errorf("%w: a put of %d items has %d idempotency keys; give one per item (\"\" for none)", wire.ErrBadRequest, len(items), len(req.Keys))
	case len(req.Keys) > 0 && req.RequestID != "":
		return fmt.Errorf("%w: a put takes idempotency keys or a request ID, not both", wire.ErrBadRequest)
	}
	var due time.Time
	if req.Delay > 0 {
		due = time.Now().Add(req.Delay)
	} else if !req.At.IsZero() {
		due = req.At // a past time runs now
	}
	for i := range items {
		items[i].Due = due
		if len(req.Keys) > 0 {
			items[i].Key = req.Keys[i]
		}
	}
	return nil
}

// checkMemory refuses a put while the heap is above MaxMemory.
func (s *Server) checkMemory() error {
	now := time.Now()
	err := s.mem.check(now)
	if err != nil {
		s.metrics.refused("max_memory")
		if s.limitLog.ok(now) {
			s.log.Warn("put refused: master full (logged at most once a second)", "err", err)
		}
	}
	return err
}

// get takes the tasks of a get made with key (c's when it was
// authorized).
func (c *clientConn) get(req *wire.Request, stream uint32, buf *callBuffers, key *acl.Key) ([]wire.Task, error) {
	if req.Max < 0 || req.Lease < 0 {
		return nil, fmt.Errorf("%w: negative max or lease", wire.ErrBadRequest)
	}
	ctx, done := c.watchWait(c.waitCtx(req.Timeout), stream, req.Op, req.Queue) // wait.go
	defer done()
	ts, err := c.s.getTasks(ctx, getRequest(c.id, req), buf.taken)
	if len(ts) == 0 {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, acl.ErrDenied):
			c.denied(req.Op.String(), cause)
			return nil, cause
		case errors.Is(cause, errCancelled):
			return nil, nil
		}
		if err == nil && c.s.isClosing() {
			// The wait was cut short, not run out: the client goes on
			// through another master, or says why it got nothing.
			err = queue.ErrClosed
		}
		return nil, err
	}
	if now := c.key.Load(); now != key {
		// The ACL was reloaded while the get waited: its tasks go only
		// to a key that may still take them.
		if err := c.authorize(now, req); err != nil {
			c.s.queues.Unget(getRequest(c.id, req), ts)
			return nil, err
		}
	}
	buf.taken = ts
	buf.tasks = appendWireTasks(buf.tasks[:0], req.Queue, ts)
	if k := fitMessage(buf.tasks, c.s.cfg.MaxMessageSize); k < len(ts) {
		// A response over the message size is neither written nor read:
		// hand out what fits, and give the rest back for the next get.
		gr := getRequest(c.id, req)
		if k == 0 {
			return nil, c.tooLargeToHandOut(gr, ts, wire.TaskSizeBound(&buf.tasks[0]))
		}
		c.s.queues.Unget(gr, ts[k:])
		buf.tasks = buf.tasks[:k]
	}
	return buf.tasks, err
}

// getTasks is queues.Get but for the tasks cancelled with their reply
// queue (deletedQueues.cancelled): it drops those and waits on for others
// within the get's time; a get that may not wait passes over them for
// noWaitCancelling at most. Dead-letter queues keep theirs: each is the
// record of a failure.
func (s *Server) getTasks(ctx context.Context, req queue.GetRequest, dst []queue.Task) ([]queue.Task, error) {
	if queue.IsDeadLetterName(req.Queue) {
		return s.queues.Get(ctx, req, dst)
	}
	var deadline time.Time
	switch {
	case req.MaxWait > 0:
		deadline = time.Now().Add(req.MaxWait)
	case ctx.Err() != nil: // queue.NoWait
		deadline = time.Now().Add(noWaitCancelling)
	}
	for {
		ts, err := s.queues.Get(ctx, req, dst)
		if len(ts) == 0 || s.deleted.cancelling.Load() == 0 {
			return ts, err
		}
		// All cancelled: the next round takes the tasks behind them, or,
		// with ctx done, returns none once none is ready.
		if ts = s.dropCancelled(req, ts); len(ts) > 0 || err != nil {
			return ts, err
		}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return nil, nil
			}
			if req.MaxWait > 0 {
				req.MaxWait = left
			}
		}
	}
}

// noWaitCancelling bounds the time a get that may not wait spends
// passing over cancelled tasks: it answers empty after, and the next get
// goes on.
const noWaitCancelling = 50 * time.Millisecond

// dropCancelled returns the tasks of ts, taken by a get for req, that
// were not cancelled (deletedQueues.cancelled), in ts's array. The
// cancelled ones are acked in the background (a data directory's fsync,
// or a cluster's round trip, would hold the get up), or, taken for good,
// confirmed delivered to the queues that wait for that.
func (s *Server) dropCancelled(req queue.GetRequest, ts []queue.Task) []queue.Task {
	var cancelled []queue.Task
	var last cancelCache
	kept := ts[:0]
	for i := range ts {
		t := &ts[i]
		if !s.deleted.cancelled(t, &last) {
			kept = append(kept, *t)
			continue
		}
		cancelled = append(cancelled, *t)
		if s.deleted.firstCancel(t.ReplyTo) {
			s.log.Info("tasks cancelled: their reply queue was deleted with its tasks (counted in qm_tasks_cancelled_total; this is said once per reply queue)", "queue", req.Queue, "reply_to", t.ReplyTo)
		}
	}
	if len(cancelled) == 0 {
		return kept
	}
	if req.NoAck {
		if s.confirmer != nil {
			s.confirmer.Delivered(req, cancelled)
		}
		s.metrics.cancelled.WithLabelValues(req.Queue).Add(float64(len(cancelled)))
		return kept
	}
	ack := queue.AckRequest{Queue: req.Queue, Owner: req.Owner}
	for _, t := range cancelled {
		ack.IDs, ack.Tokens = append(ack.IDs, t.ID), append(ack.Tokens, t.Token)
	}
	// Not acked (the master stops, or the ack fails), they come back as
	// their leases run out, and are dropped then.
	s.goRun(func() {
		acked, err := s.queues.Ack(ack, nil)
		s.metrics.cancelled.WithLabelValues(req.Queue).Add(float64(len(acked)))
		if err != nil {
			s.log.Warn("cancelled tasks not acked", "queue", req.Queue, "tasks", len(ack.IDs)-len(acked), "err", err)
		}
	})
	return kept
}

// responseHeader bounds what a get's response holds besides its tasks,
// the complete's response before it (Request.Then) included.
const responseHeader = 1 << 10

// fitMessage returns how many of ts, from the first, a response of at
// most maxMessage bytes holds.
func fitMessage(ts []wire.Task, maxMessage int) int {
	room := maxMessage - responseHeader
	for i := range ts {
		if room -= wire.TaskSizeBound(&ts[i]); room < 0 {
			return i
		}
	}
	return len(ts)
}

// tooLargeTask is the error of a task of size bytes with its fields that
// no message holds.
func (s *Server) tooLargeTask(queueName string, id uint64, size int) error {
	return fmt.Errorf("%w: task %d of %s is %d bytes with its fields, more than a message of the master's --max-message-size (%d bytes) holds",
		queue.ErrBadArgument, id, queueName, size, s.cfg.MaxMessageSize)
}

// tooLargeToHandOut answers a get whose first task, of size bytes with
// its fields, does not fit a message even alone: stored before items were
// bounded (maxItem), or under a larger --max-message-size. The others go
// back. A leased task fails its attempt, not to be retried (no client
// can take it under this --max-message-size), so that it ends in the
// dead-letter queue rather than stop its queue; one taken for good goes
// back too, and the get fails, saying why.
func (c *clientConn) tooLargeToHandOut(req queue.GetRequest, ts []queue.Task, size int) error {
	t := &ts[0]
	err := c.s.tooLargeTask(req.Queue, t.ID, size)
	c.s.log.Warn("task too large to hand out", "queue", req.Queue, "task", t.ID, "bytes", size, "max", c.s.cfg.MaxMessageSize)
	if req.NoAck {
		c.s.queues.Unget(req, ts)
		return err
	}
	c.s.queues.Unget(req, ts[1:])
	if nerr := c.s.queues.Nack(queue.NackRequest{Queue: req.Queue, Owner: req.Owner, ID: t.ID, Error: cutError(err.Error()), NoRetry: true, Token: t.Token}); nerr != nil {
		return nerr
	}
	return nil // the worker asks again, for the tasks behind it
}

// getRequest is the queue's form of a client's get.
func getRequest(owner uint64, req *wire.Request) queue.GetRequest {
	return queue.GetRequest{Queue: req.Queue, Max: max(req.Max, 1), Lease: req.Lease, Owner: owner,
		NoAck: req.NoAck, MaxWait: max(req.Timeout, 0)}
}

// waitCtx is the context a put or get with this timeout waits under: the
// connection's, which ends with it and with the master, with the timeout
// as the call's MaxWait; or, if it may not wait, queue.NoWait.
func (c *clientConn) waitCtx(timeout time.Duration) context.Context {
	if timeout <= 0 {
		return queue.NoWait
	}
	return c.ctx
}

// complete acks the tasks that succeeded and publishes their results, and
// nacks those that failed. A result is published only when its ack
// succeeds, so a task whose lease ran out and went to another worker gets
// one result, not two; and it is stored before the ack is, so a crash of
// the master between the two never leaves an acked task without one.
func (c *clientConn) complete(req *wire.Request, buf *callBuffers) error {
	q := c.s.queues
	if req.ResultQueue != "" {
		// Else its tasks would be acked and their results go nowhere.
		if err := queue.CheckName(req.ResultQueue); err != nil {
			return fmt.Errorf("%w: result queue: %w", wire.ErrBadRequest, err)
		}
	}
	// A key may publish results to the reply queue a task names, or to
	// a queue it may put to: a result queue it may not put to is not
	// used, and the results it would take are dropped, with an error.
	resultQueue, refusedResults := req.ResultQueue, 0
	denied := c.mayPublishTo(resultQueue) // acl.go
	if denied != nil {
		resultQueue = ""
	}
	var errs []error
	ended := 0 // tasks whose attempt this completion ended: it may name their queue's result queue
	worker := c.workerName()
	ids, values, tokens := buf.ids[:0], buf.values[:0], buf.tokens[:0]
	for _, r := range req.Results {
		if r.Error != "" {
			if err := q.Nack(queue.NackRequest{Queue: req.Queue, Owner: c.id, ID: r.ID, Error: cutError(r.Error), RetryAfter: r.RetryAfter, NoRetry: r.NoRetry, Token: r.Token}); err != nil {
				errs = append(errs, err)
			} else {
				ended++
			}
			continue
		}
		if r.Token != "" && len(tokens) < len(ids) {
			// The first token: the ones before it had none.
			tokens = append(tokens, make([]string, len(ids)-len(tokens))...)
		}
		if r.Token != "" || len(tokens) > 0 {
			tokens = append(tokens, r.Token)
		}
		ids = append(ids, r.ID)
		values = append(values, r.Value)
	}
	buf.ids, buf.values, buf.tokens = ids, values, tokens
	if len(tokens) == 0 {
		tokens = nil
	}
	acked, err := q.Ack(queue.AckRequest{Queue: req.Queue, Owner: c.id, IDs: ids, Tokens: tokens, Publish: func(acked []queue.Task) (unpublished []queue.Task, err error) {
		results, dests, unpublished := buf.results[:0], buf.dests[:0], buf.unpublished[:0]
		// of are the tasks of results: acked, unless some have none (then
		// a copy of the others, which copying every task would cost).
		of, filtered := acked, false
		limit := c.s.maxItem()
		var lastDest string
		var lastDeleted time.Time
		i := 0 // acked is ids in order, less those not acked
		for k, t := range acked {
			for ids[i] != t.ID {
				i++
			}
			value := values[i]
			i++
			dest := t.ReplyTo
			if dest == "" {
				dest = resultQueue
				if denied != nil {
					refusedResults++
				}
			}
			// A reply queue the task named, deleted since its put: its
			// producer is gone (a map that ended). The workers' results
			// queue, which the task did not name, is not judged so.
			if dest == "" || t.ReplyTo != "" && c.s.deleted.stale(dest, t.Enqueued, &lastDest, &lastDeleted) {
				if !filtered {
					of, filtered = append(buf.resultsOf[:0], acked[:k]...), true
				}
				unpublished = append(unpublished, t)
				continue
			}
			results = append(results, wire.Result{TaskID: t.ID, Worker: worker, Attempt: t.Attempts, Value: value})
			c.s.errorIfTooLarge(&results[len(results)-1], limit)
			c.s.errorIfTooDeep(&results[len(results)-1])
			dests = append(dests, dest)
			if filtered {
				of = append(of, t)
			}
		}
		buf.results, buf.dests, buf.unpublished = results, dests, unpublished
		if filtered {
			buf.resultsOf = of
		}
		// The puts store these tasks' acks with their results.
		return unpublished, c.s.publish(dests, results, queue.ResultsOf{Queue: req.Queue, Tasks: of}) // returns once they are in their queues
	}}, buf.acked)
	if acked != nil {
		buf.acked = acked
	}
	if err != nil {
		errs = append(errs, err)
	}
	// Only a worker that held a lease names a queue's result queue: the
	// map is kept on disk, and a client naming made-up queues would
	// rewrite it for each. (A dead task's error result that a nack above
	// made waits for it meanwhile.)
	if resultQueue != "" && ended+len(acked) > 0 {
		c.s.resultQueueKnown(req.Queue, resultQueue)
	}
	if refusedResults > 0 {
		err := fmt.Errorf("%w (%d results dropped; their tasks are done)", denied, refusedResults)
		c.denied(req.Op.String(), err)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// maxItem is the most bytes of an item the queues store: what leaves
// room for a task's envelope in a message (taskEnvelope), or less if the
// queues bound items themselves (ItemLimiter). A larger item could be
// put but never handed out.
func (s *Server) maxItem() int {
	limit := s.cfg.MaxMessageSize - taskEnvelope(s.cfg.MaxMessageSize)
	if s.limiter != nil {
		if m := s.limiter.MaxItem(); m > 0 && m < limit {
			limit = m
		}
	}
	return limit
}

// taskEnvelope is the room a message of maxMessage bytes keeps for what a
// get's response wraps around one task's payload: its fields and names
// (wire.TaskSizeBound), its last error (cut to maxErrorText) and the
// response's own header; a quarter of the message when that is smaller.
func taskEnvelope(maxMessage int) int {
	return min(8<<10, maxMessage/4)
}

// maxErrorText is the most bytes of a failed attempt's error a task
// keeps (cutError), so that the task still fits a message.
const maxErrorText = 2 << 10

// cutError cuts a failure's text to maxErrorText, keeping its start and,
// longer, its end, where a traceback names the exception.
func cutError(s string) string {
	if len(s) <= maxErrorText {
		return s
	}
	head, tail := maxErrorText/4, maxErrorText/2
	return strings.ToValidUTF8(s[:head], "") + fmt.Sprintf(" …[%d bytes cut]… ", len(s)-head-tail) + strings.ToValidUTF8(s[len(s)-tail:], "")
}

// checkItemSizes refuses a put with an item over maxItem: it would be
// stored, but no get could ever hand it out.
func (s *Server) checkItemSizes(items []queue.Item) error {
	limit := s.maxItem()
	for i := range items {
		if n := len(items[i].Payload); n > limit {
			return fmt.Errorf("%w: item %d is %d bytes; this master stores items of at most %d bytes (its --max-message-size, %d, less room for a task's fields)",
				queue.ErrBadArgument, i+1, n, limit, s.cfg.MaxMessageSize)
		}
	}
	return nil
}

// checkPayloadDepths refuses a put with an item nested deeper than a get
// could hand out (wire.MaxPayloadDepth). A native put's decoder holds its
// items to that already; a Python client's are converted from pickles.
func checkPayloadDepths(items []queue.Item) error {
	for i := range items {
		if err := wire.CheckDepth(items[i].Payload, wire.MaxPayloadDepth); err != nil {
			return fmt.Errorf("%w: item %d %w (lists, tuples, dicts), the most a task's payload may",
				queue.ErrBadArgument, i+1, err)
		}
	}
	return nil
}

// errorIfTooDeep turns r, if its value nests deeper than a result may
// (wire.MaxResultDepth), into a failure: stored, no get could hand the
// result out, and it would fail every get it came in.
func (s *Server) errorIfTooDeep(r *wire.Result) {
	if err := wire.CheckDepth(r.Value, wire.MaxResultDepth); err != nil {
		s.log.Warn("result nested too deep to store; an error result stored instead", "task", r.TaskID, "max_depth", wire.MaxResultDepth)
		r.Value = nil
		r.Error = fmt.Sprintf("result not stored: it %v, the most a result's value may", err)
	}
}

// errorIfTooLarge turns r, if it is larger than limit, the most the
// queues store (maxItem), into an error result saying so: stored, it
// would fail its whole completion, and every task of it would run again.
// Its task is done, as a handler that returns the same value each time
// would make it fail every attempt.
func (s *Server) errorIfTooLarge(r *wire.Result, limit int) {
	if size := wire.ResultSize(r); size > limit {
		s.log.Warn("result too large to store; an error result stored instead", "task", r.TaskID, "bytes", size, "max", limit)
		r.Value = nil
		r.Error = fmt.Sprintf("result of %d bytes not stored: the queues take items of at most %d bytes", size, limit)
	}
}

// release gives back leased tasks the client did not start, as a get's
// tasks whose reply was never written are given back (Unget): in front,
// their attempts not used. A task no longer leased to the client for
// that delivery is left as it is.
func (c *clientConn) release(req *wire.Request) error {
	if len(req.Attempts) != len(req.IDs) || len(req.Tokens) > 0 && len(req.Tokens) != len(req.IDs) {
		return fmt.Errorf("%w: release of %d tasks with %d attempts and %d tokens", wire.ErrBadRequest, len(req.IDs), len(req.Attempts), len(req.Tokens))
	}
	ts := make([]queue.Task, len(req.IDs))
	for i, id := range req.IDs {
		ts[i] = queue.Task{ID: id, Attempts: req.Attempts[i]}
		if len(req.Tokens) > 0 {
			ts[i].Token = req.Tokens[i]
		}
	}
	c.s.queues.Unget(queue.GetRequest{Queue: req.Queue, Owner: c.id}, ts)
	return nil
}

// extendDeliveries renews leases named by their delivery tokens: queues
// that cannot take such renewals (a single master's) hold none of them.
func (c *clientConn) extendDeliveries(req *wire.Request) error {
	if len(req.Tokens) != len(req.IDs) {
		return fmt.Errorf("%w: %d tokens for %d tasks", wire.ErrBadRequest, len(req.Tokens), len(req.IDs))
	}
	if ext, ok := c.s.queues.(DeliveryExtender); ok {
		return ext.ExtendDeliveries(req.Queue, req.IDs, req.Tokens)
	}
	return queue.TaskErrors(queue.ErrNotLeased, req.IDs)
}

func (c *clientConn) workerName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.name != "" {
		return c.name
	}
	return c.addr
}

func (c *clientConn) stats(name string) ([]wire.QueueStats, error) {
	var all []queue.Stats
	if name == "" {
		var err error
		if all, err = c.s.queues.AllStats(); err != nil {
			return nil, err
		}
	} else {
		st, err := c.s.queues.Stats(name)
		if err != nil {
			return nil, err
		}
		all = []queue.Stats{st}
	}
	out := make([]wire.QueueStats, len(all))
	for i, st := range all {
		out[i] = wireStats(st) // admin.go
	}
	return out, nil
}

func wireTasks(q string, ts []queue.Task) []wire.Task {
	if len(ts) == 0 {
		return nil
	}
	return appendWireTasks(make([]wire.Task, 0, len(ts)), q, ts)
}

func appendWireTasks(out []wire.Task, q string, ts []queue.Task) []wire.Task {
	for _, t := range ts {
		out = append(out, wire.Task{
			ID: t.ID, Queue: q, Payload: t.Payload, ReplyTo: t.ReplyTo,
			Attempt: t.Attempts, LastError: t.LastError, Enqueued: t.Enqueued,
			Priority: t.Priority, Due: t.Due, Token: t.Token,
		})
	}
	return out
}

func queueTasks(ts []wire.Task) []queue.Task {
	out := make([]queue.Task, len(ts))
	for i, t := range ts {
		out[i] = queue.Task{
			ID: t.ID, Payload: t.Payload, ReplyTo: t.ReplyTo,
			Attempts: t.Attempt, LastError: t.LastError, Enqueued: t.Enqueued,
			Priority: t.Priority,
		}
	}
	return out
}

// wireSentinels are the protocol's names for the errors of the queues and
// the store.
var wireSentinels = []struct{ local, wire error }{
	{queue.ErrUnknownQueue, wire.ErrUnknownQueue},
	{queue.ErrQueueFull, wire.ErrQueueFull},
	{queue.ErrNotLeased, wire.ErrNotLeased},
	{queue.ErrNoSuchTask, wire.ErrNoSuchTask},
	{queue.ErrBadQueueName, wire.ErrBadRequest},
	{queue.ErrBadArgument, wire.ErrBadRequest},
	{queue.ErrClosed, wire.ErrShuttingDown},
	{queue.ErrUnavailable, wire.ErrUnavailable},
	{store.ErrDiskFull, wire.ErrDiskFull},
	{acl.ErrDenied, wire.ErrPermissionDenied},
}

// errorResponse turns err into a response with its wire code: err's
// sentinels, the queues' and the store's named as the protocol names
// them, coded by wire.CodeOf's precedence.
func errorResponse(err error) *wire.Response {
	all := []error{err}
	for _, s := range wireSentinels {
		if errors.Is(err, s.local) {
			all = append(all, s.wire)
		}
	}
	msg := err.Error()
	if errors.Is(err, queue.ErrClosed) {
		// The queues' own name for it means nothing to a client.
		msg = strings.ReplaceAll(msg, queue.ErrClosed.Error(), wire.ErrShuttingDown.Error())
	}
	return &wire.Response{Code: wire.CodeOf(errors.Join(all...)), Error: msg}
}
