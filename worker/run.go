package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
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
// it connects, takes tasks and drains. Handlers run on the pool's
// goroutines. Their results go back with the Run goroutine's next get, in
// one round trip (wire.Client.CompleteThenGet), when it is about to make
// one; while a get waits at the master, they go at once on their own.
//
// The Run goroutine is the one that sends results: in serve it takes the
// handlers' outcomes from pending and decides where each goes, with the
// next get or on its own. It never waits on the network there: it hands
// each get to the getter goroutine and each batch that goes on its own to
// the completer goroutine, which make the calls, one at a time each, and
// account for the results before they reply.
type runner struct {
	cfg  Config
	log  *slog.Logger
	base context.Context // Run's ctx without its cancellation: handlers outlive the drain
	bo   backoff         // used by the Run goroutine only
	// noChain is set, by the getter, once the master has shown it does not
	// run chained requests: completes and gets go separately.
	noChain bool

	pool    *pool // runs the handlers
	started []job // start's scratch; the Run goroutine's

	gets      chan getCall  // to the getter; closed by stop
	got       chan gotReply // buffered 1: from the getter
	completes chan sendCall // to the completer; closed by stop
	sent      chan struct{} // buffered 1: from the completer
	callers   sync.WaitGroup
	// changed is signalled whenever a handler returns, or drops its result,
	// so that the Run goroutine can take more tasks, send results, or
	// notice it is idle or done.
	changed chan struct{}

	mu        sync.Mutex
	inflight  int       // tasks taken and not yet completed or dropped
	running   int       // tasks whose handler has not returned yet
	handled   int       // tasks completed, failed ones included
	idleSince time.Time // when inflight last became 0
	// pending holds handlers' outcomes until serve takes them. All are of
	// the session serve is on: a handler whose session has ended drops its
	// outcome itself.
	pending []finished
}

// finished is one handler's outcome, to be sent on its session.
type finished struct {
	s *session
	l *lease
	c wire.Completion
}

// getCall is a get that serve hands the getter; fs go with it.
type getCall struct {
	ctx  context.Context
	s    *session
	fs   []finished
	opts wire.GetOptions
}

// gotReply is the getter's reply to a getCall.
type gotReply struct {
	tasks []Task
	err   error
}

// sendCall is a batch of outcomes that serve hands the completer.
type sendCall struct {
	s  *session
	fs []finished
}

func newRunner(ctx context.Context, cfg Config) *runner {
	r := &runner{
		cfg:       cfg,
		log:       cfg.Logger.With("worker", cfg.Name),
		base:      context.WithoutCancel(ctx),
		bo:        backoff{min: cfg.ReconnectMin, max: cfg.ReconnectMax},
		gets:      make(chan getCall),
		got:       make(chan gotReply, 1),
		completes: make(chan sendCall),
		sent:      make(chan struct{}, 1),
		changed:   make(chan struct{}, 1),
		idleSince: time.Now(),
	}
	r.pool = newPool(r.runTask)
	r.callers.Add(2)
	go r.getter()
	go r.completer()
	return r
}

// stop waits for every handler goroutine, and then ends the getter and the
// completer. By then no result is left to send: serve returned with none
// in flight, or dropped them with its session, and the handlers of ended
// sessions dropped their own.
func (r *runner) stop() {
	r.pool.stop()
	close(r.gets)
	close(r.completes)
	r.callers.Wait()
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
// false, see lose). Before it returns to stop, it drains.
//
// It is the one place results are sent from. An outcome taken from pending
// goes with the next get if serve is about to make one; otherwise (every
// slot is busy, a get is waiting at the master, or it drains) it goes on
// its own, through the completer, at once unless the completer is busy
// with a batch: then it goes with the next batch or get.
func (r *runner) serve(ctx context.Context, s *session) (stop bool, err error) {
	var (
		held       []finished // taken from pending, not yet handed on
		getting    bool       // the getter has a get of ours
		completing bool       // the completer has a batch of ours
		draining   bool       // no more gets: wait until nothing is in flight
		stopErr    error      // why serve stops once drained, if for an error
	)
	// quit returns, once nothing is in flight, after the completer's reply.
	quit := func(err error) (bool, error) {
		if completing {
			<-r.sent
		}
		return true, err
	}
	cancelled := ctx.Done()
	for {
		r.mu.Lock()
		if len(held) == 0 {
			held, r.pending = r.pending, nil
		} else {
			held = append(held, r.pending...)
			clear(r.pending)
			r.pending = r.pending[:0]
		}
		inflight, handled, running := r.inflight, r.handled, r.running
		r.mu.Unlock()
		n := 0 // tasks to get now
		if !getting {
			switch {
			case draining || ctx.Err() != nil:
				if !draining && ctx.Err() != nil && inflight > 0 {
					r.log.Info("draining: taking no new tasks, waiting for running ones", "running", inflight)
				}
				draining = true
				if inflight == 0 {
					return quit(stopErr)
				}
			case r.cfg.MaxTasks > 0 && handled >= r.cfg.MaxTasks:
				r.log.Info("handled the maximum number of tasks; stopping", "max_tasks", r.cfg.MaxTasks)
				return quit(nil)
			default:
				// A slot is free once its handler returns, while its result
				// is still on the way to the master: the next get carries
				// it. Results waiting to be sent stay bounded by
				// Concurrency.
				n = min(r.cfg.Concurrency-running, 2*r.cfg.Concurrency-(inflight-len(held)))
				if r.cfg.MaxTasks > 0 {
					n = min(n, r.cfg.MaxTasks-handled-inflight)
				}
			}
		}
		if n > 0 {
			timeout := r.cfg.GetTimeout
			if r.cfg.IdleExit > 0 {
				left, idle := r.idleLeft()
				if idle && left <= 0 {
					r.log.Info("idle; stopping", "idle_exit", r.cfg.IdleExit)
					return quit(nil)
				}
				if !idle {
					left = r.cfg.IdleExit
				}
				timeout = min(timeout, left)
			}
			r.gets <- getCall{ctx: ctx, s: s, fs: held, opts: wire.GetOptions{Max: n, Timeout: timeout, Lease: r.cfg.Lease}}
			held, getting = nil, true
		} else if len(held) > 0 && !completing {
			r.completes <- sendCall{s: s, fs: held}
			held, completing = nil, true
		}
		var lost <-chan struct{}
		if !getting && !draining {
			lost = s.ctx.Done()
		}
		select {
		case <-r.changed:
			// Let the handlers that are ready to run finish first, so that
			// their results go in one message rather than one each.
			runtime.Gosched()
		case <-r.sent:
			completing = false
		case g := <-r.got:
			getting = false
			r.start(s, g.tasks)
			if len(g.tasks) > 0 {
				// Let the handlers just started run first: quick ones
				// finish, and their results go with the next get instead
				// of one by one.
				runtime.Gosched()
			}
			switch err := g.err; {
			case err == nil:
				r.bo.reset() // the connection works
			case ctx.Err() != nil:
				// Draining; the next round says so.
			case errors.Is(err, wire.ErrBadRequest) || errors.Is(err, wire.ErrUnknownOp):
				draining, stopErr = true, fmt.Errorf("get from queue %q: %w", r.cfg.Tasks, err)
			default:
				return r.lose(s, held, completing, err)
			}
		case <-cancelled:
			cancelled = nil // the next round drains
		case <-lost:
			return r.lose(s, held, completing, errConnLost)
		}
	}
}

// lose ends serve when s has lost its connection (err says how): it
// cancels the session, which ends the completer's call on it at once,
// waits for the completer, and drops the results still held. From then on
// the handlers of s drop their own.
func (r *runner) lose(s *session, held []finished, completing bool, err error) (stop bool, _ error) {
	r.log.Warn("connection to master lost; reconnecting", "server", r.cfg.Server, "err", err, "dropped", s.count())
	s.cancel(ErrLeaseLost)
	if completing {
		<-r.sent
	}
	r.mu.Lock()
	held = append(held, r.pending...)
	r.pending = nil
	r.mu.Unlock()
	r.drop(s, held)
	return false, nil
}

// drain waits, between sessions, until no task is in flight: the handlers
// drop their results as they return, since their sessions have ended.
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

// start hands tasks to the handler pool. At most Concurrency run: serve
// takes no more than there are free slots.
func (r *runner) start(s *session, tasks []Task) {
	if len(tasks) == 0 {
		return
	}
	now := time.Now()
	r.started = r.started[:0] // only the Run goroutine starts tasks
	for _, t := range tasks {
		r.started = append(r.started, job{s: s, l: s.track(t, now), t: t})
	}
	r.mu.Lock()
	r.inflight += len(tasks)
	r.running += len(tasks)
	r.mu.Unlock()
	r.pool.add(r.started)
	clear(r.started)
}

// handlerDone queues a handler's outcome for serve, or drops it if its
// session has ended: serve is done with that session, and no one else
// sends results. The check and the queueing are under mu, which lose takes
// after it cancels the session, so that no outcome is left behind.
func (r *runner) handlerDone(f finished) {
	r.mu.Lock()
	r.running--
	if f.s.ctx.Err() != nil {
		r.mu.Unlock()
		r.drop(f.s, []finished{f})
	} else {
		r.pending = append(r.pending, f)
		r.mu.Unlock()
	}
	r.signal()
}

// getter makes the gets serve hands it, with the results that go with
// them, until stop.
func (r *runner) getter() {
	defer r.callers.Done()
	for c := range r.gets {
		tasks, err := r.completeThenGet(c.ctx, c.s, c.fs, c.opts)
		r.got <- gotReply{tasks: tasks, err: err}
	}
}

// completer sends the batches of results serve hands it, on their own,
// until stop.
func (r *runner) completer() {
	defer r.callers.Done()
	for c := range r.completes {
		r.send(c.s, c.fs)
		r.sent <- struct{}{}
	}
}

// send completes fs on s, at most maxBatch per call, or drops them if s
// has lost its connection, and accounts for them. It runs on the
// completer, or on the getter for results that cannot go with a get.
func (r *runner) send(s *session, fs []finished) {
	for len(fs) > 0 {
		k := min(len(fs), maxBatch)
		sent := time.Now()
		handled := r.completeHeld(s, s.completing(fs[:k]), false)
		s.untrack(fs[:k])
		r.finish(k, handled, sent)
		fs = fs[k:]
	}
}

// completeHeld sends the completions held, whose leases s holds, and
// returns how many the master took. again says they may have been taken
// already, by a chained call whose reply never came.
func (r *runner) completeHeld(s *session, held []wire.Completion, again bool) (handled int) {
	if len(held) == 0 {
		return 0
	}
	if s.gone() {
		r.log.Debug("connection lost; results dropped", "queue", r.cfg.Tasks, "tasks", len(held))
		return 0
	}
	ctx, cancel := context.WithTimeout(s.ctx, completeTimeout)
	err := s.c.Complete(ctx, r.cfg.Tasks, r.cfg.Results, held)
	cancel()
	return r.completed(s, held, err, again)
}

// completed interprets the outcome err of completing held and returns how
// many tasks the master took.
func (r *runner) completed(s *session, held []wire.Completion, err error, again bool) (handled int) {
	switch {
	case err == nil:
		return len(held)
	case s.gone() || errors.Is(err, wire.ErrClosed):
		r.log.Debug("connection lost; results dropped", "queue", r.cfg.Tasks, "tasks", len(held), "err", err)
	case errors.Is(err, wire.ErrNotLeased):
		// The others in the batch were completed.
		if !again {
			r.log.Warn("lease lost before completion; the master gave the task to another worker",
				"queue", r.cfg.Tasks, "err", err)
		}
		return len(held)
	default:
		r.log.Warn("complete failed; the tasks will be redelivered when their leases run out",
			"queue", r.cfg.Tasks, "tasks", len(held), "err", err)
	}
	return 0
}

// completeThenGet sends the outcomes fs (all of session s) and takes up
// to opts.Max tasks, in one round trip when there are outcomes to send.
// It runs on the getter, and accounts for fs before it returns.
func (r *runner) completeThenGet(ctx context.Context, s *session, fs []finished, opts wire.GetOptions) ([]Task, error) {
	if len(fs) > maxBatch || r.noChain {
		r.send(s, fs)
		fs = nil
	}
	held := s.completing(fs)
	if len(held) == 0 || s.gone() {
		r.drop(s, fs)
		return s.c.Get(ctx, r.cfg.Tasks, opts)
	}
	sent := time.Now()
	tasks, completeErr, err := s.c.CompleteThenGet(ctx, r.cfg.Tasks, r.cfg.Results, held, opts)
	handled := len(held)
	switch {
	case completeErr != nil:
		handled = r.completed(s, held, completeErr, false)
	case errors.Is(err, wire.ErrChainIgnored):
		r.noChain = true
		r.log.Info("the master does not take a complete and a get in one call; sending them apart")
		err = nil
	case err != nil && ctx.Err() != nil:
		// Cancelled (a drain) before the reply: the master may or may not
		// have the results. Send them again on their own; those it took
		// already come back as not leased, and no result is published twice.
		handled = r.completeHeld(s, held, true)
		err = ctx.Err()
	case err != nil && (s.gone() || errors.Is(err, wire.ErrClosed)):
		handled = 0
	}
	s.untrack(fs)
	r.finish(len(fs), handled, sent)
	return tasks, err
}

// finish accounts for n tasks that are no longer in flight, of which
// handled were completed; at is when their results were sent, from which
// the worker counts as idle if nothing else is in flight.
func (r *runner) finish(n, handled int, at time.Time) {
	r.mu.Lock()
	r.inflight -= n
	r.handled += handled
	if r.inflight == 0 {
		r.idleSince = at
	}
	r.mu.Unlock()
}

// drop forgets the results fs of s, whose connection is gone.
func (r *runner) drop(s *session, fs []finished) {
	if len(fs) > 0 {
		s.untrack(fs)
		r.finish(len(fs), 0, time.Now())
	}
}

// signal wakes the Run goroutine to look at the counts again.
func (r *runner) signal() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
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
