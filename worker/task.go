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
// hands the outcome on.
func (r *runner) runTask(j job) {
	s, l, t := j.s, j.l, j.t
	if r.cfg.Concurrency == 1 && l.lost() {
		// It waited in the pool (runWaiting) while its lease, or its
		// connection, was lost: the master gives it to another worker.
		r.res.dropUnrun(s, l)
		return
	}
	var ctx context.Context = l
	// A prefetched task may have waited since it was taken: its handler
	// time, which sets the prefetch, counts from here.
	start := time.Now()
	r.res.progress.Store(start.UnixNano())
	log := r.log
	debug := log.Enabled(ctx, slog.LevelDebug)
	if debug {
		log = log.With("queue", t.Queue, "task", t.ID, "attempt", t.Attempt)
		log.Debug("task started")
	}
	v, err := r.call(ctx, t)
	took := time.Since(start)
	r.res.progress.Store(start.Add(took).UnixNano())
	c := wire.Completion{ID: t.ID, Token: t.Token}
	if err == nil {
		// A result that cannot be sent would fail every attempt alike.
		c.Value, err = wire.Encode(v)
		switch {
		case err != nil:
			err = NoRetry(fmt.Errorf("result: %w", err))
		case len(c.Value) > s.maxValue:
			err = NoRetry(fmt.Errorf("result of %s is over the largest the master takes (%s)",
				bytesize.Format(int64(len(c.Value))), bytesize.Format(int64(s.maxValue))))
		}
	}
	switch {
	case l.lost():
		log.Debug("task ended after its lease was lost; result dropped", "err", err)
	case err != nil:
		c.Value, c.Error, c.RetryAfter, c.NoRetry = nil, errorText(err), retryAfterOf(err), isNoRetry(err)
		if c.NoRetry {
			log.Warn("task failed, not to be retried", "queue", t.Queue, "task", t.ID, "attempt", t.Attempt, "took", took, "err", c.Error)
		} else {
			log.Warn("task failed", "queue", t.Queue, "task", t.ID, "attempt", t.Attempt, "took", took, "err", c.Error)
		}
	case debug:
		log.Debug("task done", "took", took)
	}
	l.returned.Store(true)
	r.res.add(finished{s: s, l: l, c: c}, took)
}

// call runs the handler, turning a panic into an error.
func (r *runner) call(ctx context.Context, t Task) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("handler panicked", "queue", t.Queue, "task", t.ID, "err", p, "stack", string(debug.Stack()))
			v, err = nil, fmt.Errorf("panic: %v", p)
		}
	}()
	return r.cfg.Handler(ctx, t)
}

// errorText is the error of a failed attempt; never empty, since an empty
// error would mean success.
func errorText(err error) string {
	if s := err.Error(); s != "" {
		return s
	}
	return fmt.Sprintf("error %T", err)
}
