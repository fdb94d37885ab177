package jsqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A task with a priority (1 to queue.MaxPriority; 0 is the default) is
// stored in its queue's stream, one to a message (never packed), on a
// subject of its level (levelSubject), which a consumer of that level
// alone takes: JetStream hands out each consumer's messages in order,
// and a work-queue stream allows one consumer per subject. A get takes
// from the highest level that has a task ready; if none has, it waits on
// level 0 a slice at a time (levelSlice), looking at the others between
// slices. A task's ID is its message's sequence, as at level 0, so IDs,
// leases, acks and tokens need nothing more.
//
// A level is made when the first task of that priority is put: the stream
// takes the subjects of every level (once), then the level's consumer is
// created (paused if the queue is). Other gateways learn of it from
// JetStream's advisory of the new consumer (followAdvisories), or when
// they next open the stream.

// hdrPriority carries a task's priority on its message, and on its copy
// in the dead-letter queue, so that a requeue puts it back at its level.
const hdrPriority = "Qm-Priority"

// level is the consumer of one priority level of a queue.
type level struct {
	p       int
	cons    jetstream.Consumer
	next    string // the subject of its pull requests
	subject string

	// JetStream acks a message before it tells the stream's consumers of
	// it, so a pull that does not wait, sent just after a put, may find
	// none. put is the last sequence this gateway stored on the level,
	// counted the last its consumer is known to have taken in (handed
	// out, or waited for): a get that finds the level empty while put is
	// ahead of counted waits a moment for it (takeLevels).
	put, counted atomic.Uint64
}

// levelSubject is the subject of the tasks of priority p of the queue on
// subj: subj itself for 0. Two tokens, so that it matches neither the
// queue's packs' subjects (packSubjects) nor its schedules'.
func levelSubject(subj string, p int) string {
	if p == 0 {
		return subj
	}
	return subj + ".p." + strconv.Itoa(p)
}

// levelConsumer is the name of the consumer of priority p.
func levelConsumer(p int) string {
	if p == 0 {
		return consumerName
	}
	return consumerName + "-p" + strconv.Itoa(p)
}

// isTaskConsumer reports whether name is a consumer of a queue's tasks,
// at any level.
func isTaskConsumer(name string) bool {
	if name == consumerName {
		return true
	}
	d, ok := strings.CutPrefix(name, consumerName+"-p")
	p, err := strconv.Atoi(d)
	return ok && err == nil && p >= 1 && p <= queue.MaxPriority && d == strconv.Itoa(p)
}

// levelsSubjects matches the subjects of every level above 0 of the queue
// on subj: the stream takes them all at once, when the first level is
// made, so that levels made later change only consumers.
func levelsSubjects(subj string) string { return subj + ".p.*" }

// levelsDesc returns s's levels above 0, highest first; nil if the queue
// has had no task with a priority.
func (s *stream) levelsDesc() []*level {
	if l := s.levels.Load(); l != nil {
		return *l
	}
	return nil
}

func (s *stream) hasLevel(p int) bool {
	return slices.ContainsFunc(s.levelsDesc(), func(lv *level) bool { return lv.p == p })
}

// openLevel makes sure s has level p (above 0): its level-0 consumer
// takes only level 0 (filterTasks), the stream takes the levels'
// subjects, and the level's consumer exists and is s's. Gets waiting on s
// here look at it after their slice (levelSlice). Those that began to wait
// before s had any level wait on level 0 for their whole wait: first says
// the level made is s's first, and the caller is to wake them (wakeAll),
// once the task it was made for is stored.
func (q *Queues) openLevel(ctx context.Context, s *stream, p int) (first bool, err error) {
	if s.hasLevel(p) {
		return false, nil
	}
	s.levelMu.Lock()
	defer s.levelMu.Unlock()
	if s.hasLevel(p) {
		return false, nil
	}
	fail := func(err error) (bool, error) {
		return false, q.engineErr("open queue "+s.queue+" for priority "+strconv.Itoa(p), err)
	}
	cfg, err := q.filterTasks(ctx, s)
	if err != nil {
		return fail(err)
	}
	if !slices.Contains(cfg.Subjects, levelsSubjects(s.subject)) {
		cfg.Subjects = append(cfg.Subjects, levelsSubjects(s.subject))
		if _, err := q.js.UpdateStream(ctx, cfg); err != nil {
			return fail(err)
		}
	}
	lv, err := q.levelConsumerOf(ctx, s, p)
	if err != nil {
		return fail(err)
	}
	first = len(s.levelsDesc()) == 0
	s.addLevelLocked(lv)
	return first, nil
}

// wakeAll wakes every get waiting on s: it has its first level, and its
// gets that waited on level 0 alone are to look at it.
func (q *Queues) wakeAll(s *stream) {
	q.mu.Lock()
	s.wakeGets(len(s.waiting))
	q.mu.Unlock()
}

// levelNames returns the levels above 0 whose consumers s's stream has,
// ascending.
func (q *Queues) levelNames(ctx context.Context, s *stream) ([]int, error) {
	var ps []int
	names := s.st.ConsumerNames(ctx)
	for name := range names.Name() {
		if name != consumerName && isTaskConsumer(name) {
			p, _ := strconv.Atoi(strings.TrimPrefix(name, consumerName+"-p"))
			ps = append(ps, p)
		}
	}
	slices.Sort(ps)
	return ps, names.Err()
}

// heldLevels returns the levels above 0 of which s's stream holds tasks,
// in no order.
// Tasks of a level with no consumer were put through a gateway that had
// the level open in an earlier stream of the queue (it missed JetStream's
// advisories of the queue made anew: see queueMade): a gateway opening the
// queue opens their levels too, so that they are handed out.
func (q *Queues) heldLevels(ctx context.Context, s *stream) ([]int, error) {
	si, err := streamInfo(ctx, s.st, jetstream.WithSubjectFilter(levelsSubjects(s.subject)))
	if err != nil {
		return nil, err
	}
	var ps []int
	for subj, n := range si.State.Subjects {
		d, ok := strings.CutPrefix(subj, s.subject+".p.")
		p, err := strconv.Atoi(d)
		if ok && err == nil && n > 0 && p >= 1 && p <= queue.MaxPriority {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// matchLevelZero pauses or resumes level consumer name, made paused or
// not, as level 0 of s is now: a pause or resume (SetPaused) that
// changed level 0 after it was read for the level, and listed the levels
// before the level was made, left it as it was (a helper's review: a
// level made during a pause handed out its tasks while the queue was
// paused).
//
// A resume or pause may go by during the match too: it is looked at
// again until level 0 stays as the level was made to be (SetPaused
// changes level 0 first on a pause, last on a resume, so it settles).
func matchLevelZero(ctx context.Context, s *stream, name string, madePaused bool) error {
	levelPaused := madePaused
	for range 4 {
		ci, err := s.cons.Info(ctx)
		if err != nil {
			return err
		}
		paused := pausedByOperator(ci)
		switch {
		case paused == levelPaused:
			return nil
		case paused:
			_, err = s.st.PauseConsumer(ctx, name, *ci.Config.PauseUntil)
		default:
			_, err = s.st.ResumeConsumer(ctx, name)
		}
		if err != nil {
			return err
		}
		levelPaused = paused
	}
	return fmt.Errorf("level 0 of %s kept changing while consumer %s was made to match it", s.queue, name)
}

// levelConsumerOf opens the consumer of level p of s, creating it (paused
// if the queue's level 0 is) if it does not exist yet.
func (q *Queues) levelConsumerOf(ctx context.Context, s *stream, p int) (*level, error) {
	name := levelConsumer(p)
	var cons jetstream.Consumer
	err := retrying(ctx, func(ctx context.Context) (err error) { cons, err = s.st.Consumer(ctx, name); return err })
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		ccfg := jetstream.ConsumerConfig{
			Durable:        name,
			AckPolicy:      jetstream.AckExplicitPolicy,
			AckWait:        s.ackWait,
			MaxDeliver:     -1,
			MaxAckPending:  -1,
			MaxWaiting:     4096,
			FilterSubjects: []string{levelSubject(s.subject, p)},
		}
		if ci, err := s.cons.Info(ctx); err != nil {
			return nil, err
		} else if pausedByOperator(ci) {
			ccfg.PauseUntil = ci.Config.PauseUntil
		}
		err = retrying(ctx, func(ctx context.Context) (err error) { cons, err = s.st.CreateConsumer(ctx, ccfg); return err })
		if errors.Is(err, jetstream.ErrConsumerExists) { // another gateway was first
			err = retrying(ctx, func(ctx context.Context) (err error) { cons, err = s.st.Consumer(ctx, name); return err })
		} else if err == nil {
			if merr := retrying(ctx, func(ctx context.Context) error { return matchLevelZero(ctx, s, name, ccfg.PauseUntil != nil) }); merr != nil {
				// The level is made: its tasks are served all the same.
				q.log.Warn("a new priority level may not be paused or resumed as its queue is; pause or resume the queue again to set it",
					"queue", s.queue, "consumer", name, "err", merr)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return &level{p: p, cons: cons, subject: levelSubject(s.subject, p), next: pullPrefix + streamName(s.queue) + "." + name}, nil
}

// addLevelLocked adds lv to s's levels, kept highest first. Called with
// s.levelMu held; the slice is replaced, never changed, so that gets read
// it without a lock.
func (s *stream) addLevelLocked(lv *level) {
	levels := append(slices.Clone(s.levelsDesc()), lv)
	slices.SortFunc(levels, func(a, b *level) int { return b.p - a.p })
	s.levels.Store(&levels)
}

// openLevels opens the levels above 0 of s not open yet, if its stream
// takes them: when a gateway opens it, and again while some could not be
// (s.levelsUnread, watchLevels). A level that cannot be opened is left
// out for the while, not the whole queue. It reports whether it opened
// them all.
func (q *Queues) openLevels(ctx context.Context, s *stream) (all bool) {
	if !slices.Contains(s.st.CachedInfo().Config.Subjects, levelsSubjects(s.subject)) {
		return true
	}
	all = true
	ps, err := q.levelNames(ctx, s)
	if err != nil {
		all = false
		q.log.Warn("the priorities of a queue not read; it is opened without them for now", "queue", s.queue, "err", err)
	}
	held, err := q.heldLevels(ctx, s)
	if err != nil {
		all = false
		q.log.Warn("the priorities holding tasks of a queue not read; read again within "+levelsLookEvery.String(), "queue", s.queue, "err", err)
	}
	for _, p := range held {
		if !slices.Contains(ps, p) {
			ps = append(ps, p)
		}
	}
	s.levelMu.Lock()
	defer s.levelMu.Unlock()
	for _, p := range ps {
		if s.hasLevel(p) {
			continue
		}
		lv, err := q.levelConsumerOf(ctx, s, p)
		if err != nil {
			all = false
			q.log.Warn("a priority of a queue not opened; opened again within "+levelsLookEvery.String(), "queue", s.queue, "priority", p, "err", err)
			continue
		}
		s.addLevelLocked(lv)
	}
	return all
}

// takeLevels takes, at once, up to req.Max tasks of s's levels above 0,
// highest first.
func (q *Queues) takeLevels(s *stream, levels []*level, req queue.GetRequest, ts []queue.Task, by time.Time) ([]queue.Task, error) {
	for _, lv := range levels {
		if len(ts) >= req.Max {
			break
		}
		put := lv.put.Load()
		rctx, cancel := q.callBy(by, pullFloor)
		msgs, err := q.pulls.pull(rctx, lv.next, req.Max-len(ts), 0)
		if err == nil && len(msgs) == 0 && put > lv.counted.Load() {
			// A task this gateway just put may not be counted yet.
			msgs, err = q.pulls.pullSoon(rctx, lv.next, req.Max-len(ts), levelCatchUp)
			if err == nil && len(msgs) == 0 {
				raise(&lv.counted, put) // taken through another gateway
			}
		}
		cancel()
		if err != nil && len(msgs) == 0 {
			if isGone(err) {
				q.forget(s.queue) // its levels are read anew
			}
			continue // at worst, none of this level now
		}
		if put > lv.counted.Load() {
			for _, m := range msgs {
				if md, err := m.Metadata(); err == nil {
					raise(&lv.counted, md.Sequence.Stream)
				}
			}
		}
		if ts, err = q.deliver(s, req, msgs, ts, by); err != nil {
			return ts, err
		}
	}
	return ts, nil
}

// levelCatchUp is how long a get waits for a level's consumer to count a
// task this gateway put on it a moment before (level.put).
const levelCatchUp = 50 * time.Millisecond

// notePuts records, on s's levels, the sequences (ids) of msgs stored on
// their subjects through this gateway.
func (s *stream) notePuts(msgs []*nats.Msg, ids []uint64) {
	levels := s.levelsDesc()
	if len(levels) == 0 {
		return
	}
	for i, m := range msgs {
		if i >= len(ids) {
			break
		}
		for _, lv := range levels {
			if lv.subject == m.Subject {
				raise(&lv.put, ids[i])
				break
			}
		}
	}
}

// raise sets v to n if n is higher.
func raise(v *atomic.Uint64, n uint64) {
	for {
		old := v.Load()
		if n <= old || v.CompareAndSwap(old, n) {
			return
		}
	}
}

// levelSlice is the longest a get waits on level 0 of a queue with
// levels before it looks at the others again: a task of another level
// put meanwhile waits that long at most for a get already waiting. (A
// pull request per level, the others given up when one level's task
// came, would cost a task then in flight to one of those an attempt.)
const levelSlice = time.Second

// waitLeft reports whether a get's wait, ending with ctx, has time left
// for another pull request.
func waitLeft(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline) > 20*time.Millisecond
}

// taskSubject is the subject a task of s is stored on again (put back,
// requeued): its level's, if s has it. A dead-letter queue has none: its
// tasks keep their priority in their header only.
func taskSubject(s *stream, t queue.Task) string {
	for _, lv := range s.levelsDesc() {
		if lv.p == t.Priority {
			return lv.subject
		}
	}
	return s.subject
}

// Advisories of JetStream that gateways follow: a consumer created (a new
// level of a queue), a stream deleted (a queue made anew is opened anew),
// a consumer paused or resumed.
const (
	consumerCreatedPrefix = "$JS.EVENT.ADVISORY.CONSUMER.CREATED."
	streamDeletedPrefix   = "$JS.EVENT.ADVISORY.STREAM.DELETED."
	consumerPausePrefix   = "$JS.EVENT.ADVISORY.CONSUMER.PAUSE."
)

// followAdvisories subscribes to the advisories gateways follow. A client
// not allowed to read them goes without: it learns of a new level when it
// next opens the queue's stream, and of a deleted stream when a call to
// it fails.
func (q *Queues) followAdvisories() {
	if sub, err := q.cfg.Conn.Subscribe(consumerCreatedPrefix+"*.*", func(m *nats.Msg) {
		stream, cons, ok := strings.Cut(strings.TrimPrefix(m.Subject, consumerCreatedPrefix), ".")
		switch {
		case !ok:
		case cons == consumerName:
			q.queueMade(stream)
		case isTaskConsumer(cons):
			p, _ := strconv.Atoi(strings.TrimPrefix(cons, consumerName+"-p"))
			q.levelMade(stream, p)
		}
	}); err == nil {
		q.advisories = append(q.advisories, sub)
	}
	if sub, err := q.cfg.Conn.Subscribe(streamDeletedPrefix+"*", func(m *nats.Msg) {
		if s := q.knownStream(strings.TrimPrefix(m.Subject, streamDeletedPrefix)); s != nil {
			q.forget(s.queue)
		}
	}); err == nil {
		q.advisories = append(q.advisories, sub)
	}
	if sub, err := q.cfg.Conn.Subscribe(consumerPausePrefix+"*.*", func(m *nats.Msg) {
		stream, cons, _ := strings.Cut(strings.TrimPrefix(m.Subject, consumerPausePrefix), ".")
		if cons != consumerName {
			return // level 0's stands for the queue's (SetPaused)
		}
		var a struct {
			Paused     bool      `json:"paused"`
			PauseUntil time.Time `json:"pause_until"`
		}
		if json.Unmarshal(m.Data, &a) != nil {
			return
		}
		if s := q.knownStream(stream); s != nil {
			q.pauseChanged(s, a.Paused && time.Until(a.PauseUntil) > operatorPause)
		}
	}); err == nil {
		q.advisories = append(q.advisories, sub)
	}
}

// pauseChanged takes the advisory that a consumer of s was paused by an
// operator (paused), or resumed. Resumed, the gets of s are woken:
// JetStream's resume wakes none of the pull requests waiting at the
// consumer, which would get their tasks only when they expire, and a get
// waiting on priority 0 while every level was paused would take a task
// of priority 0 first. Woken, they look at every level again, highest
// first, and pull anew. A hand-over's short pause (Node.HandOver) is not
// an operator's, and its end wakes nothing here: every gateway giving up
// its pull requests at the moment the consumer serves them again would
// lose some of its messages until AckWait.
func (q *Queues) pauseChanged(s *stream, paused bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if paused == s.paused {
		return
	}
	s.setPaused(paused)
	if !paused {
		s.wakeGets(len(s.waiting))
	}
}

// knownStream returns the stream this gateway has open whose JetStream
// name is name, if any.
func (q *Queues) knownStream(name string) *stream {
	q.mu.Lock()
	defer q.mu.Unlock()
	if qn, ok := q.queueOf[name]; ok {
		return q.known[qn]
	}
	return nil
}

// queueMade follows the making of stream name's consumer of tasks, which
// a gateway makes with the stream. If this gateway has a stream of that
// name open and it is not that one (it missed JetStream's advisory of its
// deletion, which JetStream can drop), it opens the queue anew, with the
// levels it had open: a put of one of them through this gateway may have
// been stored in the new stream meanwhile, and would wait there with no
// consumer to hand it out.
func (q *Queues) queueMade(name string) {
	if old := q.knownStream(name); old != nil {
		q.reopenIfReplaced(old)
	}
}

// levelsLookEvery is how often a gateway looks whether the streams of its
// queues with levels were made anew: JetStream can drop both advisories
// that tell it so (the old stream's deletion and the new one's consumer),
// and its puts of their levels would wait in the new stream with no
// consumer.
var levelsLookEvery = 30 * time.Second

// watchLevels opens anew, every levelsLookEvery until Close, the queues
// with levels whose streams were made anew since this gateway opened them
// (reopenIfReplaced): one look at a stream per such queue.
func (q *Queues) watchLevels() {
	t := time.NewTicker(levelsLookEvery)
	defer t.Stop()
	for {
		select {
		case <-q.ctx.Done():
			return
		case <-t.C:
		}
		// Queues with levels made anew, and queues whose levels could
		// not all be opened when they were.
		for _, s := range q.openStreams(func(s *stream) bool { return len(s.levelsDesc()) > 0 }) {
			q.reopenIfReplaced(s)
		}
		for _, s := range q.openStreams(func(s *stream) bool { return s.levelsUnread.Load() }) {
			q.openLevelsAgain(s)
		}
	}
}

// openLevelsAgain opens the levels of s that could not be opened before,
// and wakes the gets waiting on s if it had none.
func (q *Queues) openLevelsAgain(s *stream) {
	if q.closed.Load() {
		return
	}
	ctx, cancel := q.call()
	defer cancel()
	before := len(s.levelsDesc())
	if q.openLevels(ctx, s) {
		s.levelsUnread.Store(false)
	}
	if before == 0 && len(s.levelsDesc()) > 0 {
		q.wakeAll(s) // gets that began on s before it had a level
	}
}

// openStreams returns the streams this gateway has open of which keep
// reports true.
func (q *Queues) openStreams(keep func(*stream) bool) []*stream {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*stream
	for _, s := range q.known {
		if keep(s) {
			out = append(out, s)
		}
	}
	return out
}

// reopenIfReplaced opens old's queue anew, with the levels old had open,
// if its stream is no longer old's (queueMade).
func (q *Queues) reopenIfReplaced(old *stream) {
	if q.closed.Load() {
		return
	}
	ctx, cancel := q.call()
	replaced := q.replaced(ctx, old)
	cancel()
	if !replaced {
		return // made with the stream this gateway has open
	}
	q.forgetStream(old)
	levels := old.levelsDesc()
	if len(levels) == 0 {
		return
	}
	s, err := q.open(old.queue, false)
	if errors.Is(err, queue.ErrUnknownQueue) {
		return // deleted again
	}
	if err != nil {
		q.log.Warn("a queue made anew not opened; tasks of its priorities put through this gateway meanwhile wait for a gateway that opens their levels", "queue", old.queue, "err", err)
		return
	}
	if !slices.Contains(s.st.CachedInfo().Config.Subjects, levelsSubjects(s.subject)) {
		return // the new stream took none of the stale puts
	}
	for _, lv := range levels {
		ctx, cancel := q.call()
		first, err := q.openLevel(ctx, s, lv.p)
		cancel()
		if first {
			q.wakeAll(s) // gets that began on s before it had a level
		}
		if err != nil {
			q.log.Warn("a priority of a queue made anew not opened; its tasks put through this gateway meanwhile wait for a gateway that opens it", "queue", s.queue, "priority", lv.p, "err", err)
		}
	}
}

// levelMade opens level p of stream name, made through another gateway
// (or this one), if this gateway has the stream open: its gets take from
// that level too from then on.
func (q *Queues) levelMade(name string, p int) {
	s := q.knownStream(name)
	if s == nil || q.closed.Load() {
		return
	}
	ctx, cancel := q.call()
	first, err := q.openLevel(ctx, s, p)
	cancel()
	if first {
		// Its first task, put through the gateway that made it, comes
		// after this advisory: a woken get looks for it a second at a
		// time from now on (levelSlice).
		q.wakeAll(s)
	}
	if err != nil {
		q.log.Warn("a new priority of a queue not followed; its tasks are handed out through this gateway once the queue is opened again", "queue", s.queue, "priority", p, "err", err)
		q.forget(s.queue)
	}
}

// openLevelsOf opens the levels of s that items' priorities need; first
// says one of them is s's first (openLevel).
func (q *Queues) openLevelsOf(s *stream, items []queue.Item) (first bool, err error) {
	var done [queue.MaxPriority + 1]bool
	for _, it := range items {
		if it.Priority == 0 || done[it.Priority] {
			continue
		}
		done[it.Priority] = true
		ctx, cancel := q.call()
		made, err := q.openLevel(ctx, s, it.Priority)
		cancel()
		if err != nil {
			return first, err
		}
		first = first || made
	}
	return first, nil
}

// peekLevels returns the first n tasks of s, a queue with levels, in the
// order gets take them: highest priority first, then in order. It walks
// the whole stream, keeping the first n of each level.
func (q *Queues) peekLevels(s *stream, n int) ([]queue.Task, error) {
	var byLevel [queue.MaxPriority + 1][]queue.Task
	err := q.scan(s, scanWindow, func(_ uint64, t queue.Task, _ bool) bool {
		if l := &byLevel[t.Priority]; len(*l) < n && !q.takenHere(s.queue, t.ID) {
			*l = append(*l, t)
		}
		return true
	})
	var ts []queue.Task
	for p := queue.MaxPriority; p >= 0 && len(ts) < n; p-- {
		ts = append(ts, byLevel[p][:min(n-len(ts), len(byLevel[p]))]...)
	}
	return ts, err
}
