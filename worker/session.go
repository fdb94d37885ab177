package worker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/wire"
)

// session is one connection to the master and the leases held on it. Its
// keeper goroutine renews the leases of running tasks and notices when the
// connection drops; close stops and joins it.
//
// The Run goroutine makes it, tracks each task it takes (track) and closes
// it. The getter and the completer mark and forget the leases of the
// results they send (completing, untrack), and so do whoever drops
// results (drop). mu guards leases and wakeAt, and the renewed and
// completing fields of each lease.
type session struct {
	r *runner
	c *wire.Client
	// maxValue bounds an encoded result: the master refuses a larger
	// message.
	maxValue int
	// ctx is the parent of the handlers' contexts. It is cancelled with
	// cause ErrLeaseLost when the connection drops or serve finds it lost,
	// and when the session is closed. Once it is, the handlers of the
	// session drop their results.
	ctx    context.Context
	cancel context.CancelCauseFunc
	kick   chan struct{} // buffered 1: a lease was added
	done   chan struct{} // closed when keep returns

	mu     sync.Mutex
	leases map[uint64]*lease
	// wakeAt is when keep next looks at the leases; track wakes it
	// earlier only for a lease due before then, not for every task.
	wakeAt time.Time
}

// lease is one delivery of a task to this worker. The same task may come
// back on the same session (after a failed attempt) while the completion
// of the previous delivery is still being accounted for, so a lease, not
// a task ID, identifies a delivery.
//
// A lease is also its handler's context: a child of the session's, ended
// with cause ErrLeaseLost when the lease is lost. The context.Context
// behind it is made only when the handler first uses it, since quick
// handlers that never look at their context are the common case and a
// cancellable context per task was a fifth of a quick task's cost.
//
// Its handler's goroutine uses that context; the keeper ends it when the
// lease is lost, and whoever sends or drops the result when it is done
// (session.untrack). l.mu guards the context; renewed, completing and
// adopted are under the session's mu (adopt sets the last two when another
// session takes the lease over); the rest is set by track and then only
// read.
type lease struct {
	s          *session
	id         uint64
	attempt    int           // the delivery's, as the master counts them
	length     time.Duration // as granted by the master
	renewed    time.Time     // when the last grant or renewal was asked for
	completing bool          // its completion is on the way; losing it now is no news
	// returned is set once its handler has returned: its outcome is on
	// its way to the master (giveUp leaves it).
	returned atomic.Bool
	// handover is set for a delivery with a token (wire.Task.Token): a
	// gateway of a cluster handed it out, and another can take its
	// completion. Such a lease outlives its session: when the connection
	// drops, its handler runs on and its result goes through the next
	// session (session.handOver, adopt). adopted is set once it has moved:
	// the next gateway renews it by its token.
	handover bool
	adopted  bool
	token    string

	mu     sync.Mutex
	ctx    context.Context // made on first use
	cancel context.CancelCauseFunc
	ended  bool  // end was called before ctx was made
	cause  error // end's cause then
}

// context returns the context behind l, making it on first use.
func (l *lease) context() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx == nil {
		parent := l.s.ctx
		if l.handover {
			// Not ended with its session: see handover.
			parent = l.s.r.base
		}
		l.ctx, l.cancel = context.WithCancelCause(parent)
		if l.ended {
			l.cancel(l.cause)
		}
	}
	return l.ctx
}

func (l *lease) Deadline() (time.Time, bool) { return l.context().Deadline() }
func (l *lease) Done() <-chan struct{}       { return l.context().Done() }
func (l *lease) Err() error                  { return l.context().Err() }
func (l *lease) Value(key any) any           { return l.context().Value(key) }

// end cancels the handler's context with cause (context.Canceled if nil).
func (l *lease) end(cause error) {
	l.mu.Lock()
	if l.ctx == nil {
		if !l.ended {
			l.ended, l.cause = true, cause
		}
		l.mu.Unlock()
		return
	}
	cancel := l.cancel
	l.mu.Unlock()
	cancel(cause)
}

// lost reports whether the handler's context ended because the lease
// was lost (or the session ended), without making a context for it.
func (l *lease) lost() bool {
	l.mu.Lock()
	ctx, ended, cause := l.ctx, l.ended, l.cause
	l.mu.Unlock()
	if ctx != nil {
		return errors.Is(context.Cause(ctx), ErrLeaseLost)
	}
	if ended {
		return errors.Is(cause, ErrLeaseLost)
	}
	if l.handover {
		return false // ended only by end
	}
	return errors.Is(context.Cause(l.s.ctx), ErrLeaseLost)
}

// newSession starts a session on c that takes over the leases handed over
// by an earlier one. They are its before its keeper starts: a keeper that
// looked first would find no lease, and sleep until a new task came.
func (r *runner) newSession(c *wire.Client, handedOver []*lease) *session {
	ctx, cancel := context.WithCancelCause(r.base)
	s := &session{
		r:   r,
		c:   c,
		ctx: ctx,
		// What a completion carries besides its value is far below this.
		maxValue: c.MaxMessageSize() - 4<<10,
		cancel:   cancel,
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		leases:   make(map[uint64]*lease),
	}
	s.adopt(handedOver)
	go s.keep()
	return s
}

// close cancels what still runs on s, joins the keeper and closes the
// connection.
func (s *session) close() {
	s.cancel(ErrLeaseLost)
	<-s.done
	s.c.Close()
}

// track records the tasks of a get, just taken, and returns their
// leases, in order; each task's handler runs under its lease's context.
// A lease counts from now, a little after the master granted it, which
// the renewal margin covers. The leases of a get are made in one
// allocation, under one lock: made one by one they were a tenth of a
// worker's time per quick task. A lease still held (a task running long,
// a context kept by its handler) keeps its get's others in memory, some
// 150 bytes each, as its task's payload keeps the get's whole response.
func (s *session) track(ts []Task, now time.Time) []lease {
	ls := make([]lease, len(ts))
	early := false
	s.mu.Lock()
	for i := range ts {
		t, l := &ts[i], &ls[i]
		l.s, l.id, l.attempt, l.length, l.renewed = s, t.ID, t.Attempt, t.Lease, now
		l.handover, l.token = t.Token != "", t.Token
		s.leases[t.ID] = l
		early = early || l.length > 0 && l.renewed.Add(l.length/3).Before(s.wakeAt)
	}
	s.mu.Unlock()
	if early {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return ls
}

// completing returns the completions of those of fs whose leases s still
// holds, and marks those as being sent, and when the first of these
// leases runs out, as last granted or renewed (the zero time for none).
// The others were lost: another worker has their tasks now.
func (s *session) completing(fs []finished) (held []wire.Completion, until time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held = make([]wire.Completion, 0, len(fs))
	for _, f := range fs {
		if s.leases[f.l.id] == f.l {
			f.l.completing = true
			held = append(held, f.c)
			if f.l.length <= 0 {
				continue
			}
			if end := f.l.renewed.Add(f.l.length); until.IsZero() || end.Before(until) {
				until = end
			}
		}
	}
	return held, until
}

// gone reports whether the connection has dropped or the session ended.
func (s *session) gone() bool {
	select {
	case <-s.c.Done():
		return true
	default:
		return s.ctx.Err() != nil
	}
}

// untrack forgets finished deliveries.
func (s *session) untrack(fs []finished) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fs {
		f.l.end(nil)
		if s.leases[f.l.id] == f.l {
			delete(s.leases, f.l.id)
		}
	}
}

// handOver removes from s, whose connection is gone, the leases that can
// be completed through another session, and returns them.
func (s *session) handOver() []*lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ls []*lease
	for id, l := range s.leases {
		if l.handover {
			ls = append(ls, l)
			delete(s.leases, id)
		}
	}
	return ls
}

// adopt takes over leases handed over by an earlier session: their
// results go through s.
func (s *session) adopt(ls []*lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range ls {
		l.adopted = true
		l.completing = false
		s.leases[l.id] = l
	}
}

// count is how many tasks s holds.
func (s *session) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// keep renews leases as they fall due until the session ends, and cancels
// the session when the connection drops.
func (s *session) keep() {
	defer close(s.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		timer.Reset(s.renewDue())
		select {
		case <-s.c.Done():
			s.cancel(ErrLeaseLost)
			return
		case <-s.ctx.Done():
			return
		case <-s.kick:
		case <-timer.C:
		}
	}
}

// renewDue renews the leases that are a third of the way through and
// returns how long until the next one is.
func (s *session) renewDue() time.Duration {
	now := time.Now()
	next := time.Hour
	var due, dueMoved []uint64
	var tokens []string
	var shortest time.Duration
	s.mu.Lock()
	for id, l := range s.leases {
		if l.length <= 0 {
			continue
		}
		at := l.renewed.Add(l.length / 3)
		if at.After(now) {
			next = min(next, at.Sub(now))
			continue
		}
		if l.adopted {
			dueMoved, tokens = append(dueMoved, id), append(tokens, l.token)
		} else {
			due = append(due, id)
		}
		if shortest == 0 || l.length < shortest {
			shortest = l.length
		}
	}
	due = append(due, dueMoved...) // for the wake-up and the message below
	if len(due) == 0 {
		s.wakeAt = now.Add(next)
	} else {
		s.wakeAt = now // renewing now, then looking again
	}
	s.mu.Unlock()
	if len(due) == 0 {
		return next
	}
	err := s.extend(due[:len(due)-len(dueMoved)], nil, shortest)
	if err == nil {
		err = s.extend(dueMoved, tokens, shortest)
	}
	if err != nil {
		if !s.gone() {
			s.r.log.Warn("lease renewal failed; retrying", "queue", s.r.cfg.Tasks, "tasks", len(due), "err", err)
		}
		// Retry soon, well within what is left of the leases.
		return max(shortest/10, minLease)
	}
	return 0 // recompute from the new renewal times
}

// extend renews the leases of ids in one call: by their tokens if tokens
// is not nil, for leases that came over from a lost session (adopt). If
// the master no longer holds some of them for us (or a gateway has since
// handed their tasks out again), it renews them one by one to find those,
// and cancels their handlers.
func (s *session) extend(ids []uint64, tokens []string, length time.Duration) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, length)
	defer cancel()
	call := func(ids []uint64, tokens []string) error {
		if tokens != nil {
			return s.c.ExtendDeliveries(ctx, s.r.cfg.Tasks, ids, tokens)
		}
		return s.c.Extend(ctx, s.r.cfg.Tasks, s.r.cfg.Lease, ids...)
	}
	sent := time.Now()
	err := call(ids, tokens)
	if err == nil {
		s.renewed(ids, sent)
		return nil
	}
	if !errors.Is(err, wire.ErrNotLeased) {
		return err
	}
	for i, id := range ids {
		var tok []string
		if tokens != nil {
			tok = tokens[i : i+1]
		}
		sent := time.Now()
		err := call(ids[i:i+1], tok)
		switch {
		case err == nil:
			s.renewed([]uint64{id}, sent)
		case errors.Is(err, wire.ErrNotLeased):
			s.lost(id)
		default:
			return err
		}
	}
	return nil
}

func (s *session) renewed(ids []uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if l, ok := s.leases[id]; ok {
			l.renewed = at
		}
	}
}

// giveUp forgets the leases of s whose handlers have not returned (they
// run, or their tasks wait to start), ends their handlers' contexts with
// cause, and returns them in task order: their tasks are to go back to
// the master. The outcomes of the others are on their way.
func (s *session) giveUp(cause error) []*lease {
	s.mu.Lock()
	var ls []*lease
	for id, l := range s.leases {
		if !l.completing && !l.returned.Load() {
			ls = append(ls, l)
			delete(s.leases, id)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(ls, func(a, b *lease) int { return cmp.Compare(a.id, b.id) })
	for _, l := range ls {
		l.end(cause)
	}
	return ls
}

// lost cancels the handler of a task the master no longer holds for us.
func (s *session) lost(id uint64) {
	s.mu.Lock()
	l, ok := s.leases[id]
	if ok {
		delete(s.leases, id)
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	l.end(ErrLeaseLost)
	// completing is written only under s.mu and while l is in the map.
	if !l.completing {
		s.r.log.Warn("lease lost; task cancelled, the master gives it to another worker", "queue", s.r.cfg.Tasks, "task", id)
	}
}
