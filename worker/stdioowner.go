package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// owner is the goroutine that owns a child: it alone writes tasks to it,
// takes its answers from readLines, and stops and restarts it.
type owner struct {
	*child
	reqs <-chan *request
	quit <-chan struct{}

	pending  []*request // taken, not yet written to the child
	inflight []*request // written, not yet answered, oldest first
	timer    *time.Timer
	timerOn  bool
	// headSince is when inflight[0] became the task the child is on:
	// written to an idle child, or the answer before it came.
	headSince time.Time
}

// own serves requests with the child until quit is closed, then stops
// it and returns what stopping it reported.
func (c *child) own(reqs <-chan *request, quit <-chan struct{}) error {
	o := &owner{child: c, reqs: reqs, quit: quit, timer: time.NewTimer(time.Hour)}
	o.timer.Stop()
	defer o.timer.Stop()
	for {
		if o.writePending() {
			continue
		}
		var reqs <-chan *request
		if len(o.pending) == 0 && (c.proc == nil || len(o.inflight) < c.batchMax()) {
			reqs = o.reqs
		}
		var lines <-chan childLine
		if c.proc != nil {
			lines = c.proc.lines
		}
		var timeout <-chan time.Time
		if o.timerOn {
			timeout = o.timer.C
		}
		var headGone <-chan struct{}
		if len(o.inflight) > 0 {
			headGone = o.inflight[0].ctx.Done()
		}
		select {
		case r := <-reqs:
			o.pending = append(o.pending, r)
			// No more than the child may hold: the others are for the
			// other children (before, a child that took one task at a
			// time kept a pipeline's worth waiting here).
			for len(o.pending)+len(o.inflight) < c.batchMax() {
				select {
				case r := <-o.reqs:
					o.pending = append(o.pending, r)
					continue
				default:
				}
				break
			}
		case l, ok := <-lines:
			if ok {
				o.answer(l)
			}
		case <-timeout:
			o.timerOn = false
			o.fail(os.ErrDeadlineExceeded)
		case <-headGone:
			o.abandon()
		case <-o.quit:
			for _, r := range append(o.inflight, o.pending...) { // none, after Run
				r.done <- answer{err: errStdioClosed}
			}
			c.closeInput()
			return c.stopBy(time.Now().Add(c.cfg.StopTimeout))
		}
	}
}

// batchMax is how many tasks the child may hold at once: one, or, once
// it asked for tasks ahead, as many as it answers within aheadWindow at
// its recent pace, at most Pipeline (two until it has answered one): so
// that slow tasks do not wait at one child while another, or another
// worker, could run them.
func (c *child) batchMax() int {
	switch {
	case c.proc == nil || !c.proc.pipelined || c.suspects > 0:
		return 1
	case c.service == 0:
		return min(2, c.cfg.Pipeline)
	}
	return max(1, min(c.cfg.Pipeline, 1+int(aheadWindow/c.service)))
}

// aheadWindow is about how much work, in time, a child that takes tasks
// ahead holds beyond the one it is on.
const aheadWindow = 2 * time.Millisecond

// writePending writes the child as many pending tasks as it may hold,
// starting it first if it is stopped, and reports whether it did
// anything.
func (o *owner) writePending() bool {
	o.pending = dropEnded(o.pending)
	if len(o.pending) == 0 || (o.proc != nil && len(o.inflight) >= o.batchMax()) {
		return false
	}
	// A child that still has work gets more once it runs low, or once a
	// batch is waiting, in one write: it then wakes, reads and answers
	// once per batch rather than per task. With four Python children
	// this took about a third off the CPU time per task of both qworker
	// and the children, against writing each task as it comes.
	if quarter := o.batchMax() / 4; o.proc != nil && len(o.inflight) > quarter && len(o.pending) < quarter {
		return false
	}
	if o.proc == nil {
		counting := o.health.counting()
		if err := o.restart(o.quit); err != nil {
			if counting && !errors.Is(err, errStdioClosed) {
				// Not the task's doing either (see fail): it waits for
				// the next start, after the backoff.
				return true
			}
			o.pending[0].done <- answer{err: err}
			o.pending = o.pending[1:]
			return true
		}
	}
	n := min(len(o.pending), o.batchMax()-len(o.inflight))
	o.in = o.in[:0]
	for _, r := range o.pending[:n] {
		o.in = append(o.in, r.line...)
	}
	wasIdle := len(o.inflight) == 0
	if wasIdle {
		o.headSince = time.Now()
		o.proc.tail.mark()
	}
	o.inflight = append(o.inflight, o.pending[:n]...)
	o.pending = append(o.pending[:0], o.pending[n:]...)
	if o.cfg.TaskTimeout > 0 {
		_ = o.proc.stdin.SetWriteDeadline(time.Now().Add(o.cfg.TaskTimeout))
	}
	n, err := o.proc.stdin.Write(o.in)
	o.proc.written += int64(n)
	if err != nil {
		o.writeFailed(fmt.Errorf("write task: %w", err))
		return true
	}
	if wasIdle {
		o.armTimer()
	}
	return true
}

// armTimer starts the task timeout of the oldest task in flight: from
// when it was written or, if it was written ahead, from the answer
// before it.
func (o *owner) armTimer() {
	if o.cfg.TaskTimeout <= 0 {
		return
	}
	o.stopTimer()
	o.timer.Reset(o.cfg.TaskTimeout)
	o.timerOn = true
}

func (o *owner) stopTimer() {
	if o.timerOn {
		o.timer.Stop()
		o.timerOn = false
	}
}

// answer handles a line of the child's output.
func (o *owner) answer(l childLine) {
	var ce *childError
	switch {
	case errors.Is(l.err, errPipelineHello):
		o.proc.pipelined = true
		o.holds.Store(int32(o.batchMax()))
		return
	case len(o.inflight) == 0 && l.err != nil && !errors.Is(l.err, errLineTooLong) && !errors.As(l.err, &ce) && !errors.Is(l.err, errProtocol):
		// The child exited, or closed its stdout, holding no task.
		o.stop(true)
		o.cfg.Logger.Warn("child stopped while idle; it will be restarted", "child", o.id, "err", l.err)
		o.failedWith(fmt.Errorf("child %d stopped while idle: %w", o.id, l.err))
		return
	case len(o.inflight) == 0:
		o.stop(true)
		o.cfg.Logger.Warn("child wrote a line with no task to answer; restarting it: more than one line for one task?", "child", o.id)
		o.failedWith(fmt.Errorf("child %d wrote a line with no task to answer", o.id))
		return
	case errors.Is(l.err, errProtocol):
		o.fail(l.err)
		return
	case l.err != nil && !errors.Is(l.err, errLineTooLong) && !errors.As(l.err, &ce):
		o.fail(l.err) // it exited
		return
	case l.more && !o.proc.pipelined && len(o.inflight) == 1:
		// More output than tasks: the child wrote more than one line for
		// this one, and its next answers would not match their tasks.
		o.fail(fmt.Errorf("%w: more than one line for one task", errProtocol))
		return
	case ce != nil && ce.retryAfter > 0:
		l.err = RetryAfter(ce.retryAfter, errors.New(ce.text))
	case ce != nil && ce.noRetry:
		l.err = NoRetry(errors.New(ce.text))
	case ce != nil:
		l.err = errors.New(ce.text)
	}
	o.failures = 0
	o.health.answer()
	o.suspects = max(0, o.suspects-1)
	o.inflight[0].done <- answer{v: l.v, err: l.err}
	o.inflight[0] = nil
	o.inflight = o.inflight[1:]
	o.proc.tail.mark()
	if o.proc.pipelined {
		now := time.Now()
		o.service = ewma(o.service, now.Sub(o.headSince))
		o.headSince = now
		o.holds.Store(int32(o.batchMax()))
	}
	if len(o.inflight) > 0 {
		o.armTimer()
	} else {
		o.stopTimer()
	}
}

// writeFailed handles a write to the child that failed, most likely
// because it exited: the answers it wrote before are taken first, so that
// no answered task runs again, and its exit fails the task it was on.
func (o *owner) writeFailed(err error) {
	p := o.proc
	grace := time.NewTimer(exitGrace)
	defer grace.Stop()
	for o.proc == p {
		select {
		case l, ok := <-p.lines:
			if !ok {
				o.fail(err)
				return
			}
			o.answer(l)
		case <-grace.C:
			o.fail(err)
			return
		}
	}
}

// abandon stops the child, whose task no one waits for any more (its
// lease lost, or the worker's drain timed out: it runs elsewhere, or is
// given back), so that it does not run on beside another worker's run of
// it; the tasks it held behind that one are written to it again once it
// is restarted. Not a failure of the child.
func (o *owner) abandon() {
	head := o.inflight[0]
	// The answers the child wrote already are taken first: the tasks
	// behind it that it answered do not run again.
	p := o.proc
drain:
	for o.proc == p && len(o.inflight) > 0 && o.inflight[0] == head {
		select {
		case l, ok := <-p.lines:
			if !ok {
				break drain
			}
			o.answer(l)
		default:
			break drain
		}
	}
	if o.proc != p || len(o.inflight) == 0 || o.inflight[0] != head {
		return // answered, or stopped for what it wrote
	}
	o.stopTimer()
	o.stop(false)
	o.suspects = max(0, o.suspects-1)
	o.cfg.Logger.Info("child stopped: the task it was on was given up", "child", o.id, "err", context.Cause(head.ctx))
	head.done <- answer{err: context.Cause(head.ctx)}
	rest := append(o.inflight[1:len(o.inflight):len(o.inflight)], o.pending...)
	o.inflight, o.pending = nil, rest
}

// fail stops a child that failed with err while answering the oldest task
// in flight, fails that task, and makes the others pending again, to be
// written to the child once restarted.
func (o *owner) fail(err error) {
	o.stopTimer()
	if len(o.inflight) == 0 { // it answered all it held (after a partial write)
		o.stop(true)
		o.cfg.Logger.Warn("child stopped; it will be restarted", "child", o.id, "err", err)
		o.failedWith(err)
		return
	}
	culprit := o.inflight[0]
	if o.unreadByBrokenCommand(err) {
		// The child failed without reading its task, before any child
		// answered one: most likely a command that cannot start (a
		// missing module, a syntax error), not the task's doing. No
		// attempt fails; the tasks are written again to the child
		// restarted, until the failures say the command is broken and
		// the worker gives them back (qworker).
		_ = o.broken(err) // told to health as no task's failure
		o.inflight, o.pending = nil, append(o.inflight, o.pending...)
		return
	}
	if len(o.inflight) > 1 && o.suspects == 0 && !errors.Is(err, errProtocol) {
		// It exited or hung holding several tasks written ahead, and may
		// have run the first ones already, their answers still in its
		// buffers (the Python helper writes quick answers together):
		// which it failed on is not known. They run again one at a time,
		// and the one it fails on alone pays the attempt. (A protocol
		// error is the line of the first task in flight.)
		o.cfg.Logger.Warn("child failed holding several tasks; running them again one at a time to find the one it fails on",
			"child", o.id, "tasks", len(o.inflight), "err", err)
		// Told to health as the first task's failure, as before: its run
		// alone does not count again (stdioHealth counts a task once),
		// so two bad tasks do not pass for a broken command.
		o.culprit = culprit.task
		_ = o.broken(err)
		o.culprit = 0
		o.suspects = len(o.inflight)
		o.inflight, o.pending = nil, append(o.inflight, o.pending...)
		return
	}
	o.suspects = max(0, o.suspects-1)
	o.culprit = culprit.task
	culprit.done <- answer{err: o.broken(err)}
	o.culprit = 0
	rest := append(o.inflight[1:len(o.inflight):len(o.inflight)], o.pending...)
	o.inflight, o.pending = nil, rest
}

// unreadByBrokenCommand reports whether the child, failing with err (not
// a timeout) while no child has answered a task and the Stdio's health
// still counts failures, read nothing of the task it was on. The child
// is given up to exitGrace to exit first, so that what it read is all it
// will read.
func (o *owner) unreadByBrokenCommand(err error) bool {
	if !o.health.counting() || errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	p := o.proc
	if !errors.Is(err, errProtocol) {
		p.awaitExit()
	}
	unread := pipeUnread(p.stdin)
	// No child has answered (counting), so this one has read no line it
	// answered: anything it read was of the tasks in flight.
	return unread >= 0 && unread == p.written
}

// dropEnded answers the requests whose handlers no longer wait and
// returns the others.
func dropEnded(batch []*request) []*request {
	kept := batch[:0]
	for _, r := range batch {
		if r.ctx.Err() != nil {
			r.done <- answer{err: context.Cause(r.ctx)}
			continue
		}
		kept = append(kept, r)
	}
	clear(batch[len(kept):])
	return kept
}
