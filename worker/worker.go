package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/wire"
)

// Run takes tasks from cfg.Tasks and runs cfg.Handler on each, at most
// cfg.Concurrency at a time, until one of:
//
//   - ctx is cancelled: Run drains (takes no new task, lets the running
//     handlers finish and completes them) and returns nil;
//   - the worker has had no task for cfg.IdleExit, or has handled
//     cfg.MaxTasks: Run returns nil;
//   - an error that retrying cannot fix, such as a wrong authkey (it wraps
//     auth.ErrAuthFailed) or a bad queue name.
//
// Run reconnects, with exponential backoff and jitter, whenever it cannot
// reach the master or the connection drops. The results of tasks still
// running when a connection drops are discarded, since the master has
// requeued those tasks; their handlers' ctx is cancelled with cause
// ErrLeaseLost. Every goroutine Run starts has ended when it returns.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.setDefaults()
	r := newRunner(ctx, cfg)
	err := r.run(ctx)
	r.stop()
	if err == nil { // an error is the caller's to report
		r.log.Info("worker stopped", "handled", r.handledCount())
	}
	return err
}

// maxBatch bounds the completions sent in one Complete call.
const maxBatch = 256

// completeTimeout bounds one Complete call; a master that takes longer is
// treated as gone for those tasks, whose leases then run out.
const completeTimeout = 30 * time.Second

// errConnLost is why a session ended when its connection dropped while
// no call was in progress to report the error.
var errConnLost = errors.New("connection dropped")

// errStop tells run that the worker should stop cleanly: ctx was
// cancelled, or IdleExit passed while it waited.
var errStop = errors.New("stop")

// runner is the state of one Run. The goroutine that called Run drives it:
// it connects, takes tasks and drains. Handlers run in goroutines started
// by goRun; one completer goroutine sends their results.
type runner struct {
	cfg  Config
	log  *slog.Logger
	base context.Context // Run's ctx without its cancellation: handlers outlive the drain
	bo   backoff         // used by the Run goroutine only

	results       chan finished // handlers to completer
	completerDone chan struct{}
	// changed is signalled whenever inflight drops, so that the Run
	// goroutine can take more tasks, or notice it is idle or done.
	changed chan struct{}

	mu        sync.Mutex
	inflight  int       // tasks taken and not yet completed or dropped
	running   int       // tasks whose handler has not returned yet
	handled   int       // tasks completed, failed ones included
	idleSince time.Time // when inflight last became 0
	stopping  bool      // no new goroutines
	wg        sync.WaitGroup
}

// finished is one handler's outcome, to be sent on its session.
type finished struct {
	s *session
	l *lease
	c wire.Completion
}

func newRunner(ctx context.Context, cfg Config) *runner {
	r := &runner{
		cfg:           cfg,
		log:           cfg.Logger.With("worker", cfg.Name),
		base:          context.WithoutCancel(ctx),
		bo:            backoff{min: cfg.ReconnectMin, max: cfg.ReconnectMax},
		results:       make(chan finished, cfg.Concurrency),
		completerDone: make(chan struct{}),
		changed:       make(chan struct{}, 1),
		idleSince:     time.Now(),
	}
	go r.completer()
	return r
}

// goRun starts f as a goroutine that stop waits for, unless stop has begun.
func (r *runner) goRun(f func()) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
	return true
}

// stop waits for every handler and then for the completer.
func (r *runner) stop() {
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	r.wg.Wait()
	close(r.results)
	<-r.completerDone
}

// run connects and serves sessions until the worker should stop.
func (r *runner) run(ctx context.Context) error {
	afterLoss := false
	for {
		c, err := r.connect(ctx, afterLoss)
		if errors.Is(err, errStop) {
			r.drain(ctx)
			return nil
		}
		if err != nil {
			return err
		}
		s := r.newSession(c)
		r.log.Info("connected to master", "server", r.cfg.Server, "queue", r.cfg.Tasks, "concurrency", r.cfg.Concurrency)
		stop, err := r.serve(ctx, s)
		if !stop {
			r.log.Warn("connection to master lost; reconnecting", "server", r.cfg.Server, "err", err, "dropped", s.count())
		}
		s.close()
		if stop {
			return err
		}
		afterLoss = true
	}
}

// connect dials the master until it answers, backing off between
// attempts. It returns errStop if the worker should stop meanwhile, and at
// once an error that retrying cannot fix.
func (r *runner) connect(ctx context.Context, afterLoss bool) (*wire.Client, error) {
	var delay time.Duration
	if afterLoss {
		delay = r.bo.next()
	}
	for attempt := 1; ; attempt++ {
		if delay > 0 && r.pause(ctx, delay) {
			return nil, errStop
		}
		if ctx.Err() != nil {
			return nil, errStop
		}
		c, err := wire.Dial(ctx, wire.Config{
			Addr:    r.cfg.Server,
			Authkey: r.cfg.Authkey,
			Role:    "worker",
			Name:    r.cfg.Name,
			TLS:     r.cfg.TLS,
		})
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, errStop
		}
		if permanent(err) {
			return nil, err
		}
		delay = r.bo.next()
		r.log.Warn("cannot connect to master; retrying", "server", r.cfg.Server, "attempt", attempt,
			"retry_in", delay.Round(time.Millisecond), "err", err)
	}
}

// permanent reports whether a dial error is one that retrying cannot fix:
// a wrong key, a master's certificate this worker does not trust, or a
// protocol mismatch.
func permanent(err error) bool {
	var cve *tls.CertificateVerificationError
	return errors.Is(err, auth.ErrAuthFailed) ||
		errors.As(err, &cve) ||
		errors.Is(err, auth.ErrBadHandshake) ||
		errors.Is(err, wire.ErrBadPreamble) ||
		errors.Is(err, wire.ErrUnsupportedVersion)
}

// serve takes tasks on s until the worker should stop (stop is true, and
// err says why if it is an error) or the connection is lost (stop is
// false). Before it returns to stop, it drains.
func (r *runner) serve(ctx context.Context, s *session) (stop bool, err error) {
	for {
		if ctx.Err() != nil {
			r.drain(ctx)
			return true, nil
		}
		inflight, handled := r.counts()
		if r.cfg.MaxTasks > 0 && handled >= r.cfg.MaxTasks {
			r.log.Info("handled the maximum number of tasks; stopping", "max_tasks", r.cfg.MaxTasks)
			return true, nil
		}
		// A slot is free once its handler returns, while its result is
		// still on the way to the master: the next get overlaps the
		// complete. Results waiting to be sent stay bounded by Concurrency.
		n := min(r.cfg.Concurrency-r.runningCount(), 2*r.cfg.Concurrency-inflight)
		if r.cfg.MaxTasks > 0 {
			n = min(n, r.cfg.MaxTasks-handled-inflight)
		}
		if n <= 0 { // every slot is busy: wait for one
			select {
			case <-ctx.Done():
			case <-s.ctx.Done():
				return false, errConnLost
			case <-r.changed:
			}
			continue
		}
		timeout := r.cfg.GetTimeout
		if r.cfg.IdleExit > 0 {
			left, idle := r.idleLeft()
			if idle && left <= 0 {
				r.log.Info("idle; stopping", "idle_exit", r.cfg.IdleExit)
				return true, nil
			}
			if !idle {
				left = r.cfg.IdleExit
			}
			timeout = min(timeout, left)
		}
		tasks, err := s.c.Get(ctx, r.cfg.Tasks, wire.GetOptions{Max: n, Timeout: timeout, Lease: r.cfg.Lease})
		r.start(s, tasks)
		switch {
		case err == nil:
			r.bo.reset() // the connection works
		case ctx.Err() != nil:
			// Draining; the next round says so.
		case errors.Is(err, wire.ErrBadRequest) || errors.Is(err, wire.ErrUnknownOp):
			r.drain(ctx)
			return true, fmt.Errorf("get from queue %q: %w", r.cfg.Tasks, err)
		default:
			return false, err
		}
	}
}

// drain waits until no task is in flight. Handlers on a live connection
// finish and are completed; those of lost connections finish and are
// dropped.
func (r *runner) drain(ctx context.Context) {
	inflight, _ := r.counts()
	if inflight == 0 {
		return
	}
	if ctx.Err() != nil {
		r.log.Info("draining: taking no new tasks, waiting for running ones", "running", inflight)
	}
	for {
		if n, _ := r.counts(); n == 0 {
			return
		}
		<-r.changed
	}
}

// start runs a handler for each task.
func (r *runner) start(s *session, tasks []Task) {
	for _, t := range tasks {
		r.mu.Lock()
		r.inflight++
		r.running++
		r.mu.Unlock()
		l := s.track(t)
		if !r.goRun(func() { r.runTask(s, l, t) }) {
			// Unreachable: stop begins only after the last start.
			s.untrack([]finished{{s: s, l: l}})
			r.mu.Lock()
			r.running--
			r.mu.Unlock()
			r.finish(1, 0)
		}
	}
}

// runTask runs the handler on t and hands the outcome to the completer.
func (r *runner) runTask(s *session, l *lease, t Task) {
	ctx := l.ctx
	start := time.Now()
	log := r.log.With("queue", t.Queue, "task", t.ID, "attempt", t.Attempt)
	log.Debug("task started")
	v, err := r.call(ctx, t)
	r.mu.Lock()
	r.running--
	r.mu.Unlock()
	r.signal()
	c := wire.Completion{ID: t.ID}
	if err == nil {
		c.Value, err = wire.Encode(v)
		if err != nil {
			err = fmt.Errorf("result: %w", err)
		}
	}
	switch {
	case errors.Is(context.Cause(ctx), ErrLeaseLost):
		log.Debug("task ended after its lease was lost; result dropped", "err", err)
	case err != nil:
		c.Value, c.Error = nil, errorText(err)
		log.Warn("task failed", "took", time.Since(start), "err", c.Error)
	default:
		log.Debug("task done", "took", time.Since(start))
	}
	r.results <- finished{s: s, l: l, c: c}
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

// completer sends the handlers' outcomes to the master, batching those
// that are ready together.
func (r *runner) completer() {
	defer close(r.completerDone)
	batch := make([]finished, 0, maxBatch)
	for f := range r.results {
		batch = append(batch[:0], f)
	more:
		for len(batch) < maxBatch {
			select {
			case f, ok := <-r.results:
				if !ok {
					break more
				}
				batch = append(batch, f)
			default:
				break more
			}
		}
		// Completions go back on the session their tasks came from.
		for len(batch) > 0 {
			s := batch[0].s
			var same []finished
			rest := batch[:0]
			for _, f := range batch {
				if f.s == s {
					same = append(same, f)
				} else {
					rest = append(rest, f)
				}
			}
			r.send(s, same)
			batch = rest
		}
	}
}

// send completes fs on s, or drops them if s has lost its connection.
func (r *runner) send(s *session, fs []finished) {
	handled := 0
	if held := s.completing(fs); len(held) > 0 && !s.gone() {
		ctx, cancel := context.WithTimeout(s.ctx, completeTimeout)
		err := s.c.Complete(ctx, r.cfg.Tasks, r.cfg.Results, held)
		cancel()
		switch {
		case err == nil:
			handled = len(held)
		case s.gone() || errors.Is(err, wire.ErrClosed):
			r.log.Debug("connection lost; results dropped", "queue", r.cfg.Tasks, "tasks", len(held), "err", err)
		case errors.Is(err, wire.ErrNotLeased):
			// The others in the batch were completed.
			handled = len(held)
			r.log.Warn("lease lost before completion; the master gave the task to another worker",
				"queue", r.cfg.Tasks, "err", err)
		default:
			r.log.Warn("complete failed; the tasks will be redelivered when their leases run out",
				"queue", r.cfg.Tasks, "tasks", len(held), "err", err)
		}
	} else if len(held) > 0 {
		r.log.Debug("connection lost; results dropped", "queue", r.cfg.Tasks, "tasks", len(held))
	}
	s.untrack(fs)
	r.finish(len(fs), handled)
}

// finish accounts for n tasks that are no longer in flight, of which
// handled were completed.
func (r *runner) finish(n, handled int) {
	r.mu.Lock()
	r.inflight -= n
	r.handled += handled
	if r.inflight == 0 {
		r.idleSince = time.Now()
	}
	r.mu.Unlock()
	r.signal()
}

// signal wakes the Run goroutine to look at the counts again.
func (r *runner) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *runner) runningCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running
}

func (r *runner) counts() (inflight, handled int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.inflight, r.handled
}

func (r *runner) handledCount() int {
	_, h := r.counts()
	return h
}

// idleLeft reports how long until IdleExit ends the worker; idle is false
// while tasks are in flight.
func (r *runner) idleLeft() (left time.Duration, idle bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight > 0 {
		return 0, false
	}
	return time.Until(r.idleSince.Add(r.cfg.IdleExit)), true
}

// pause waits for d and reports true if the worker should stop instead:
// ctx was cancelled, or IdleExit passed.
func (r *runner) pause(ctx context.Context, d time.Duration) (stop bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		idle.Stop()
		if r.cfg.IdleExit > 0 {
			left, ok := r.idleLeft()
			if ok && left <= 0 {
				r.log.Info("idle; stopping", "idle_exit", r.cfg.IdleExit)
				return true
			}
			if ok {
				idle.Reset(left)
			}
		}
		select {
		case <-ctx.Done():
			return true
		case <-timer.C:
			return false
		case <-r.changed:
		case <-idle.C:
		}
	}
}

// backoff yields exponentially growing delays with jitter.
type backoff struct {
	min, max, cur time.Duration
}

// next returns the next delay: the current one, doubled each call up to
// max, less a random part of up to half, so that workers that lost the
// same master do not all come back at once.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := b.cur / 2
	return b.cur - half + rand.N(half+1)
}

func (b *backoff) reset() { b.cur = 0 }
