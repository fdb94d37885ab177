package worker

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/qm-dev/qm/internal/bytesize"
	"github.com/qm-dev/qm/wire"
)

// runTask runs the handler on a job's task, on a handler goroutine, and
// hands the outcome on. It returns when the handler returned, and takes
// when it starts if the pool knows (see pool.run).
func (r *runner) runTask(j job, start time.Time) (end time.Time) {
	s, l, t := j.s, j.l, j.t
	if r.cfg.Concurrency == 1 && l.lost() {
		// It waited in the pool (runWaiting) while its lease, or its
		// connection, was lost: the master gives it to another worker.
		r.res.dropUnrun(s, l)
		return time.Time{}
	}
	var ctx context.Context = l
	// A prefetched task may have waited since it was taken: its handler
	// time, which sets the prefetch, counts from here.
	if start.IsZero() {
		start = time.Now()
	}
	r.res.progress.Store(start.UnixNano())
	log := r.log
	debug := log.Enabled(ctx, slog.LevelDebug)
	if debug {
		log = log.With("queue", t.Queue, "task", t.ID, "attempt", t.Attempt)
		log.Debug("task started")
	}
	returned := false
	defer func() {
		if returned {
			return
		}
		// The handler ended its goroutine (runtime.Goexit, as a test's
		// t.FailNow does), which goes on past here: the attempt fails,
		// rather than the task staying leased for ever, and the pool
		// has another goroutine come for its queue (pool.handle).
		c := wire.Completion{ID: t.ID, Token: t.Token, Error: "the handler ended its goroutine (runtime.Goexit) without returning"}
		r.finish(s, l, t, c, start, log, debug)
	}()
	c := r.outcome(ctx, t, s.maxValue)
	returned = true
	return r.finish(s, l, t, c, start, log, debug)
}

// outcome runs the handler, and returns the completion it makes: the
// result encoded, or the failure. A panic counts as an error, whether
// in the handler or in what it returned as it is encoded or read (a
// result whose MarshalMsgpack panics, a nil *T error whose Error method
// reads through it).
func (r *runner) outcome(ctx context.Context, t Task, maxValue int) (c wire.Completion) {
	c = wire.Completion{ID: t.ID, Token: t.Token}
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("handler panicked", "queue", t.Queue, "task", t.ID, "err", p, "stack", string(debug.Stack()))
			c = wire.Completion{ID: t.ID, Token: t.Token, Error: fmt.Sprintf("panic: %v", p)}
		}
	}()
	v, err := r.cfg.Handler(ctx, t)
	if err == nil {
		// A result that cannot be sent would fail every attempt alike.
		c.Value, err = wire.Encode(v)
		switch {
		case err != nil:
			err = NoRetry(fmt.Errorf("result: %w", err))
		case len(c.Value) > maxValue:
			err = NoRetry(fmt.Errorf("result of %s is over the largest the master takes (%s)",
				bytesize.Format(int64(len(c.Value))), bytesize.Format(int64(maxValue))))
		default:
			// A master stores a result nested deeper as a failure; one
			// older than that refuses the whole completion it comes in.
			if derr := wire.CheckDepth(c.Value, wire.MaxResultDepth); derr != nil {
				err = NoRetry(fmt.Errorf("result %w, the most a result may", derr))
			}
		}
	}
	if err != nil {
		c.Value, c.Error, c.RetryAfter, c.NoRetry = nil, errorText(err), retryAfterOf(err), isNoRetry(err)
	}
	return c
}

// finish logs how t's attempt, started at start, ended, c, and hands c
// on. It reads the clock once: a read is 50-60 ns on a VM's kvm-clock,
// worth a few per cent of a worker's time per task of an echo.
func (r *runner) finish(s *session, l *lease, t Task, c wire.Completion, start time.Time, log *slog.Logger, debug bool) (end time.Time) {
	end = time.Now()
	took := end.Sub(start)
	r.res.progress.Store(end.UnixNano())
	logged := true
	switch {
	case l.lost():
		log.Debug("task ended after its lease was lost; result dropped", "err", c.Error)
	case c.Error != "" && c.NoRetry:
		log.Warn("task failed, not to be retried", "queue", t.Queue, "task", t.ID, "attempt", t.Attempt, "took", took, "err", c.Error)
	case c.Error != "":
		log.Warn("task failed", "queue", t.Queue, "task", t.ID, "attempt", t.Attempt, "took", took, "err", c.Error)
	case debug:
		log.Debug("task done", "took", took)
	default:
		logged = false
	}
	l.returned.Store(true)
	r.res.add(finished{s: s, l: l, c: c}, took)
	if logged {
		// A log line may take long (a full pipe): the next task, if its
		// goroutine goes straight to it, reads the clock itself.
		return time.Time{}
	}
	return end
}

// errorText is the error of a failed attempt; never empty, since an empty
// error would mean success.
func errorText(err error) string {
	if s := err.Error(); s != "" {
		return s
	}
	return fmt.Sprintf("error %T", err)
}
