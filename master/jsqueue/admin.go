package jsqueue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// What operators see and do. JetStream keeps the queues, so the figures
// are the cluster's, with three exceptions kept by each gateway alone:
// Nacks, Expired and Disconnected.

// Stats returns a queue's figures: Ready and Leased from its consumer,
// Puts from its stream (every task ever stored in it), Gets from the
// consumer's deliveries, Done as Puts less what the stream holds and the
// tasks purged or dead (countGone). Packed
// tasks count one by one (packcount.go), in Gets as gateways hand them
// out (countHandedOutLocked). Leased counts, of the packs this gateway holds,
// the tasks out to workers, and of the other deliveries not yet acked
// (other gateways' packs, tasks stored alone), the tasks they carry, at
// the mean per message of the messages not held here; the tasks held
// here are ready, or, not yet due, delayed and retrying, as are the tasks
// stored alone this gateway failed with a retry backoff (heldHere).
func (q *Queues) Stats(name string) (queue.Stats, error) {
	s, err := q.open(name, false)
	if err != nil {
		return queue.Stats{}, err
	}
	ctx, cancel := q.call()
	defer cancel()
	si, err := streamInfo(ctx, s.st, jetstream.WithSubjectFilter(packSubjects(s.subject)))
	if err != nil {
		return queue.Stats{}, q.adminErr(name, "stats", err)
	}
	dead := 0
	if !queue.IsDeadLetterName(name) {
		if ds, err := q.open(queue.DeadLetterName(name), false); err == nil {
			if di, err := streamInfo(ctx, ds.st); err == nil {
				dead = int(di.State.Msgs)
			}
		}
	}
	return q.figures(ctx, s, si.State, si.Config.AllowMsgSchedules, dead)
}

// figures makes a queue's figures from its stream's state (and whether
// the stream takes delayed tasks), asking only its consumer, within ctx.
func (q *Queues) figures(ctx context.Context, s *stream, state jetstream.StreamState, schedules bool, dead int) (queue.Stats, error) {
	ci, err := consumerInfo(ctx, s.cons, s.replicas())
	if err != nil {
		return queue.Stats{}, q.adminErr(s.queue, "stats", err)
	}
	// Of priority 0's deliveries, before the levels' are added to them.
	givenBack := q.givenBackWaiting(s.queue, ci.Delivered.Consumer)
	for _, lv := range s.levelsDesc() { // the levels' consumers count too
		li, err := consumerInfo(ctx, lv.cons, s.replicas())
		if err != nil {
			return queue.Stats{}, q.adminErr(s.queue, "stats", err)
		}
		ci.NumPending += li.NumPending
		ci.NumAckPending += li.NumAckPending
		ci.Delivered.Consumer += li.Delivered.Consumer
	}
	stored, puts := storedTasks(state), state.LastSeq
	var gone uint64
	gets := ci.Delivered.Consumer
	if !queue.IsDeadLetterName(s.queue) { // never packed
		extra, err := q.packedExtra(ctx, s.queue)
		if err != nil {
			return queue.Stats{}, q.adminErr(s.queue, "stats", err)
		}
		puts = uint64(max(0, int64(puts)+extra))
		handedOut, err := q.handedOutExtra(ctx, s.queue)
		if err != nil {
			return queue.Stats{}, q.adminErr(s.queue, "stats", err)
		}
		gets = uint64(max(0, int64(gets)+handedOut))
		n, err := q.goneTasks(ctx, s.queue)
		if err != nil {
			return queue.Stats{}, q.adminErr(s.queue, "stats", err)
		}
		gone = uint64(max(0, n))
	}
	// Delayed tasks: the schedules among the stream's messages, which the
	// consumer, taking only tasks, does not count (scheduling.go). The
	// stream's state and the consumer's are read one after the other, so
	// on a busy queue the figure is only near.
	msgs, delayed := state.Msgs, uint64(0)
	if schedules && msgs > 0 && q.hasSchedules(ctx, s) {
		if taken := ci.NumPending + uint64(ci.NumAckPending); msgs > taken {
			delayed = min(msgs-taken, stored)
		}
		stored -= delayed
		msgs -= delayed
	}
	here := q.heldHere(s.queue, time.Now())
	here.singlesWaiting = givenBack
	leased := leasedTasks(uint64(ci.NumAckPending), stored, msgs, here)
	stored -= min(stored, uint64(here.settled)) // done, their packs not acked yet
	later := min(uint64(here.later+here.singlesLater), stored-min(leased, stored))
	puts = max(puts, stored+delayed)
	st := queue.Stats{
		Queue:     s.queue,
		Leased:    int(leased),
		Ready:     int(stored - min(leased, stored) - later),
		Dead:      dead,
		Consumers: ci.NumWaiting,
		Paused:    pausedByOperator(ci),
		Delayed:   int(delayed + later),
		Retrying:  int(later),
		Puts:      puts,
		Gets:      gets,
		Acks:      puts - stored - delayed - min(gone, puts-stored-delayed),
	}
	st.Done = st.Acks
	if !queue.IsDeadLetterName(s.queue) {
		st.MaxLen = q.cfg.MaxLen
		q.lookForPolicies(ctx)
		st.Policy = q.policy(s.queue)
	}
	if st.Ready > 0 && !state.FirstTime.IsZero() {
		st.OldestReady = max(0, time.Since(state.FirstTime))
	}
	q.mu.Lock()
	if c := q.stats[s.queue]; c != nil {
		st.Nacks, st.Expired, st.Disconnected = c.nacks, c.expired, c.disconnected
	}
	q.mu.Unlock()
	return st, nil
}

func (q *Queues) adminErr(name, what string, err error) error {
	if isGone(err) {
		q.forget(name)
		return queue.ErrUnknownQueue
	}
	return q.engineErr(what+" "+name, err)
}

// listed is a stream's state as a listing of the streams gave it.
type listed struct {
	jetstream.StreamState
	// stale says a member gave it, the stream having no leader: it may be
	// behind (streamInfo).
	stale bool
}

// list returns the state of every queue's stream, by queue name: one
// listing of the streams, which carries their state. It ends by by, if
// that comes before the request timeout (a zero by adds no bound). A
// listing cut short fails: its part would read as queues gone. So does
// one that misses streams (JetStream could not read them in time, their
// leader lost), unless this gateway knows their queues' names: those
// are listed stale, for their state to be read from their leaders.
func (q *Queues) list(by time.Time) (map[string]listed, error) {
	ctx, cancel := q.callBy(by, 0)
	defer cancel()
	streams, missing, err := q.listStreams(ctx, subjectPrefix+">")
	if err != nil {
		return nil, q.engineErr("list the queues", err)
	}
	states := make(map[string]listed)
	for _, si := range streams {
		if name, ok := si.Config.Metadata[metaQueueName]; ok && streamName(name) == si.Config.Name {
			states[name] = listed{StreamState: si.State, stale: si.Cluster != nil && si.Cluster.Leader == ""}
		}
	}
	unnamed := 0
	q.mu.Lock()
	for _, sn := range missing { // named apart from the streams read (listStreams)
		if name, ok := q.queueOf[sn]; ok {
			states[name] = listed{stale: true}
		} else if strings.HasPrefix(sn, streamPrefix) {
			unnamed++
		}
	}
	q.mu.Unlock()
	if unnamed > 0 {
		return nil, q.engineErr("list the queues", fmt.Errorf("%d of them not read in time (a node away, or their leaders being elected)", unnamed))
	}
	return states, nil
}

// Queues returns the names of every queue in JetStream, sorted.
func (q *Queues) Queues() ([]string, error) {
	states, err := q.list(time.Time{})
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(states)), nil
}

// statsReaders is how many queues AllStats reads at once.
const statsReaders = 8

// AllStats returns the figures of every queue, sorted by name. The
// streams' state comes from one listing; each queue's consumer is asked
// for the rest, statsReaders queues at a time.
//
// It answers within half the request timeout, with the figures of the
// queues read by then, and the others marked Unread: a scrape of /metrics
// or an inspect must answer within its own timeout (Prometheus's is 10 s
// by default), whatever the number of queues and however slowly JetStream
// answers (a stream's leader being elected). Queues deleted meanwhile are
// left out.
func (q *Queues) AllStats() ([]queue.Stats, error) {
	by := time.Now().Add(q.cfg.RequestTimeout / 2)
	states, err := q.list(by)
	if err != nil {
		return nil, err
	}
	names := slices.Sorted(maps.Keys(states))
	all := make([]queue.Stats, len(names)) // a deleted queue's stays zero
	turns := make(chan struct{}, statsReaders)
	var wg sync.WaitGroup
	for i, name := range names {
		turns <- struct{}{}
		wg.Go(func() {
			defer func() { <-turns }()
			st, err := q.statsOf(by, name, states)
			switch {
			case errors.Is(err, queue.ErrUnknownQueue): // deleted meanwhile
			case err != nil:
				all[i] = queue.Stats{Queue: name, Unread: true}
			default:
				all[i] = st
			}
		})
	}
	wg.Wait()
	all = slices.DeleteFunc(all, func(st queue.Stats) bool { return st.Queue == "" })
	unread := 0
	for _, st := range all {
		if st.Unread {
			unread++
		}
	}
	if unread > 0 {
		q.log.Warn("figures of some queues not read in time", "queues", unread, "of", len(all))
	}
	return all, nil
}

// statsOf returns queue name's figures, read by by, from its stream's
// state in states; queue.ErrUnknownQueue if it was deleted meanwhile.
func (q *Queues) statsOf(by time.Time, name string, states map[string]listed) (queue.Stats, error) {
	s, err := q.openBy(by, name, false)
	if err != nil {
		return queue.Stats{}, err
	}
	ctx, cancel := q.callBy(by, 0)
	defer cancel()
	dead := 0
	if !queue.IsDeadLetterName(name) {
		dead = int(states[queue.DeadLetterName(name)].Msgs)
	}
	l, schedules := states[name], false
	state := l.StreamState
	if state.Msgs > 0 || l.stale { // packs, if any, counted by subject
		si, err := streamInfo(ctx, s.st, jetstream.WithSubjectFilter(packSubjects(s.subject)))
		if err != nil {
			return queue.Stats{}, q.adminErr(name, "stats", err)
		}
		state, schedules = si.State, si.Config.AllowMsgSchedules
	}
	return q.figures(ctx, s, state, schedules, dead)
}

// scan calls f with each task stored in s when it starts, in order, until
// f returns false. Tasks leased at the moment are included. It reads up to
// window messages at once (at most scanWindow), each read with the request
// timeout to itself, so a long queue is walked to its end in about one
// round trip per window.
//
// A pack's tasks come one by one, each with packed set: they share the
// message at seq.
func (q *Queues) scan(s *stream, window int, f func(seq uint64, t queue.Task, packed bool) bool) error {
	return q.scanAll(s, window, func(seq uint64, t queue.Task, packed bool, at msgTimes) bool {
		return !at.due.IsZero() || f(seq, t, packed)
	})
}

// scanAll is scan with the delayed tasks not yet due too, and each
// task's message's times.
func (q *Queues) scanAll(s *stream, window int, f func(seq uint64, t queue.Task, packed bool, at msgTimes) bool) error {
	ctx, cancel := q.call()
	info, err := streamInfo(ctx, s.st)
	cancel()
	if err != nil {
		return q.adminErr(s.queue, "read", err)
	}
	last := info.State.LastSeq // tasks stored after the walk began are not in it
	window = max(1, min(window, scanWindow))
	for from := max(1, info.State.FirstSeq); from <= last; {
		msgs, err := q.readFrom(s, from, window, last)
		if err != nil {
			return q.adminErr(s.queue, "read", err)
		}
		if len(msgs) == 0 {
			return nil
		}
		for _, m := range msgs {
			if !q.scanMsg(s, m, f) {
				return nil
			}
		}
		from = msgs[len(msgs)-1].Sequence + 1
	}
	return nil
}

// scanWindow bounds the reads of a walk (scan) in flight at once.
const scanWindow = 64

// readFrom reads the messages of s at or after sequences from to
// from+n-1, at once, and returns those up to last, in order and each once.
// Where the stream is dense each read finds its own message; where it has
// gaps (tasks done out of order) several find the same next one.
func (q *Queues) readFrom(s *stream, from uint64, n int, last uint64) ([]*jetstream.RawStreamMsg, error) {
	n = int(min(uint64(n), last-from+1))
	got := make([]*jetstream.RawStreamMsg, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := q.call()
			defer cancel()
			// The next message at or after the sequence: the stream holds
			// only its queue's, plain and packs.
			got[i], errs[i] = s.st.GetMsg(ctx, from+uint64(i), jetstream.WithGetMsgSubject(">"))
		})
	}
	wg.Wait()
	msgs := got[:0]
	for i, m := range got {
		if errors.Is(errs[i], jetstream.ErrMsgNotFound) {
			continue // none at or after it
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
		if m.Sequence <= last && (len(msgs) == 0 || m.Sequence > msgs[len(msgs)-1].Sequence) {
			msgs = append(msgs, m)
		}
	}
	return msgs, nil
}

// scanMsg calls f with the task, or each task of the pack, that m holds,
// and returns false if f did.
func (q *Queues) scanMsg(s *stream, m *jetstream.RawStreamMsg, f func(seq uint64, t queue.Task, packed bool, at msgTimes) bool) bool {
	seq := m.Sequence
	at := msgTimes{stored: m.Time}
	if isScheduled(m.Header) {
		at.due = scheduledDue(m.Header)
		return f(seq, taskOf(seq, m.Time, m.Header, m.Data, 0), false, at)
	}
	if n := m.Header.Get(hdrPack); n != "" {
		payloads, err := decodePack(m.Data, n)
		if err != nil {
			q.log.Warn("malformed pack skipped", "queue", s.queue, "seq", seq, "err", err)
			return true
		}
		for i, pl := range payloads {
			t := taskOf(seq, m.Time, m.Header, pl, 0)
			t.ID = packedID(seq, i)
			if !f(seq, t, true, at) {
				return false
			}
		}
		return true
	}
	return f(seq, taskOf(seq, m.Time, m.Header, m.Data, 0), false, at)
}

// msgTimes are the times of a scanned task's message: when it was stored,
// and, for a delayed task not yet due, when it is due (else zero).
type msgTimes struct {
	stored, due time.Time
}

// Peek returns the first n tasks of a queue not yet done, in order, less
// those this gateway has out to workers or done (takenHere). Unlike the
// in-process queues it includes the tasks other gateways have out: the
// stream holds them until they are acked.
func (q *Queues) Peek(name string, n int) ([]queue.Task, error) {
	s, err := q.open(name, false)
	if err != nil {
		return nil, err
	}
	var ts []queue.Task
	if n <= 0 {
		return ts, nil
	}
	if len(s.levelsDesc()) > 0 {
		return q.peekLevels(s, n)
	}
	err = q.scan(s, n, func(_ uint64, t queue.Task, _ bool) bool {
		if !q.takenHere(s.queue, t.ID) {
			ts = append(ts, t)
		}
		return len(ts) < n
	})
	return ts, err
}

// takenHere reports whether this gateway has the task id of queue name
// out to a worker, or done, its message still stored: not ready. (What
// other gateways hold, it cannot tell.)
func (q *Queues) takenHere(name string, id uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.leases[leaseKey{name, id}]; ok {
		return true
	}
	seq, i, ok := packOf(id)
	if !ok {
		return false
	}
	p := q.packs[leaseKey{name, seq}]
	return p != nil && i < len(p.done) && (p.done[i] || p.out[i])
}

// Purge drops every task of a queue not yet done and returns how many.
// Unlike the in-process queues it drops leased tasks too (JetStream
// purges a stream whole); their completions are then refused.
func (q *Queues) Purge(name string) (int, error) {
	s, err := q.open(name, false)
	if err != nil {
		return 0, err
	}
	ctx, cancel := q.call()
	defer cancel()
	si, err := streamInfo(ctx, s.st, jetstream.WithSubjectFilter(packSubjects(s.subject)))
	if err != nil {
		return 0, q.adminErr(name, "purge", err)
	}
	settled := q.heldHere(name, time.Now()).settled
	// What was counted, and no put stored since: those would be purged
	// uncounted, and count as done.
	if err := s.st.Purge(ctx, jetstream.WithPurgeSequence(si.State.LastSeq+1)); err != nil {
		return 0, q.adminErr(name, "purge", err)
	}
	q.dropLeasesOf(name)
	q.tellPurged(name, si.State.LastSeq) // purged.go
	// Tasks, not packs; less those of packs held here that are done or
	// gone already (those of packs another gateway holds are counted).
	n := max(0, int(storedTasks(si.State))-settled)
	if !queue.IsDeadLetterName(name) {
		q.countGone(name, n)
	}
	return n, nil
}

// heldCounts is what this gateway holds of a queue's deliveries, for its
// figures: JetStream counts each pack delivered, whole, as one delivery
// not yet acked, and a task failed with a retry backoff too.
type heldCounts struct {
	packs, tasks int // this gateway's packs, and the tasks they carry
	settled      int // of those, done (or dead, or stored apart): their messages still carry them
	waiting      int // held here, due: ready
	later        int // held here, not yet due: waiting out a retry backoff
	// singlesLater are the tasks stored alone that this gateway failed
	// with a retry backoff, not yet due (Queues.retrying).
	singlesLater int
	// singlesWaiting are the tasks stored alone that this gateway gave
	// back and are sure to wait for their redelivery (givenBackWaiting):
	// ready.
	singlesWaiting int
}

// heldHere counts what this gateway holds of queue name at now, and
// forgets the retrying tasks stored alone that have come due.
func (q *Queues) heldHere(name string, now time.Time) heldCounts {
	q.mu.Lock()
	defer q.mu.Unlock()
	var c heldCounts
	for k, p := range q.packs {
		if k.queue == name {
			c.packs++
			c.tasks += len(p.tasks)
			c.settled += len(p.tasks) - p.left
		}
	}
	if l := q.locals[name]; l != nil {
		for _, h := range l.held {
			if now.Before(h.due) {
				c.later++
			} else {
				c.waiting++
			}
		}
	}
	for id, due := range q.retrying[name] {
		if now.Before(due) {
			c.singlesLater++
		} else {
			delete(q.retrying[name], id)
		}
	}
	return c
}

// leasedTasks is how many of a queue's stored tasks are out to workers:
// of this gateway's packs (here) exactly, those neither done nor held
// here; of the other deliveries not acked (ackPending, messages), as many
// as the other messages carry on average (other gateways' packs count
// whole). stored and msgs are the queue's tasks and messages.
func leasedTasks(ackPending, stored, msgs uint64, here heldCounts) uint64 {
	mine := uint64(here.packs + here.singlesLater + here.singlesWaiting)
	otherAck := ackPending - min(ackPending, mine)
	otherMsgs := msgs - min(msgs, mine)
	otherTasks := stored - min(stored, uint64(here.tasks+here.singlesLater+here.singlesWaiting))
	leased := otherAck
	if otherTasks != otherMsgs && otherMsgs > 0 { // packs: their mean size
		leased = (otherAck*otherTasks + otherMsgs/2) / otherMsgs
	}
	out := max(0, here.tasks-here.settled-here.waiting-here.later)
	return min(stored, leased+uint64(out))
}

// Delete removes a queue's stream, every task in it with it (its
// dead-letter queue stays).
func (q *Queues) Delete(name string) error {
	if q.closed.Load() {
		return queue.ErrClosed
	}
	if err := queue.CheckName(name); err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	err := q.js.DeleteStream(ctx, streamName(name))
	q.forget(name)
	q.dropLeasesOf(name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return queue.ErrUnknownQueue
	}
	if err != nil {
		return q.engineErr("delete "+name, err)
	}
	q.tellPurged(name, 0) // purged.go
	if !queue.IsDeadLetterName(name) {
		if err := q.dropCount(ctx, name); err != nil {
			q.log.Warn("a deleted queue's count of packed tasks not deleted; a queue made anew under its name counts them among its Puts", "queue", name, "err", err)
		}
	}
	return nil
}

func (q *Queues) dropLeasesOf(name string) {
	q.mu.Lock()
	q.dropPacksLocked(name)
	delete(q.retrying, name)
	if l := q.locals[name]; l != nil {
		l.givenBack = nil
	}
	for k, l := range q.leases {
		if k.queue == name {
			q.dropLease(l)
		}
	}
	for k := range q.lastErr {
		if k.queue == name {
			delete(q.lastErr, k)
		}
	}
	q.mu.Unlock()
}

// pauseFor is how long a pause lasts: JetStream pauses a consumer until a
// time, and an operator's pause lasts until resumed.
const pauseFor = 100 * 365 * 24 * time.Hour

// SetPaused pauses (creating the queue if needed) or resumes a queue, for
// every gateway: the pause is the consumer's, kept by JetStream.
func (q *Queues) SetPaused(name string, paused bool) error {
	s, err := q.open(name, paused)
	if err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	what := "resume"
	if paused {
		what = "pause"
	}
	setPaused := func(cons string) (err error) {
		if paused {
			_, err = s.st.PauseConsumer(ctx, cons, time.Now().Add(pauseFor))
		} else {
			_, err = s.st.ResumeConsumer(ctx, cons)
		}
		return err
	}
	// Every level the stream has, as JetStream lists them, whether this
	// gateway has seen them or not, and level 0, which a priority level
	// made meanwhile takes its state from (levelConsumerOf). A pause
	// stops level 0 first; a resume starts it last, highest level
	// first, so that no get waiting on level 0 takes its tasks before
	// the higher levels' (and gateways take level 0's resume for the
	// queue's: pauseChanged).
	// The levels are listed twice: the second listing finds those made
	// meanwhile (one made after it finds level 0 changed already:
	// matchLevelZero).
	var done []int
	for pass := range 2 {
		ps, err := q.levelNames(ctx, s)
		if err != nil {
			return q.adminErr(name, what, err)
		}
		slices.Reverse(ps)
		switch {
		case pass > 0:
		case paused:
			ps = slices.Insert(ps, 0, 0)
		default:
			ps = append(ps, 0)
		}
		for _, p := range ps {
			if slices.Contains(done, p) {
				continue
			}
			if err := setPaused(levelConsumer(p)); err != nil {
				return q.adminErr(name, what, err)
			}
			done = append(done, p)
		}
	}
	// The tasks of packs this gateway holds wait too. Other gateways
	// see it when they look at the consumer (moveOverdue): until then
	// they may hand out what they hold. Resumed, every get waiting is
	// woken to pull again: JetStream wakes none of the pull requests
	// waiting at the consumer.
	q.mu.Lock()
	s.setPaused(paused)
	if !paused {
		s.wakeGets(len(s.waiting))
	}
	q.mu.Unlock()
	return nil
}

// Requeue moves tasks ids (all if none) from the queue's dead-letter
// queue to the back of the queue, with their attempts anew.
func (q *Queues) Requeue(name string, ids []uint64) (int, error) {
	if err := queue.CheckName(name); err != nil {
		return 0, err
	}
	ds, err := q.open(queue.DeadLetterName(name), false)
	if errors.Is(err, queue.ErrUnknownQueue) {
		return 0, noSuchTasks(ids)
	}
	if err != nil {
		return 0, err
	}
	s, err := q.open(name, true)
	if err != nil {
		return 0, err
	}
	want := idSet(ids)
	moved := 0
	var batch []deadMsg
	var moveErr error
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		n, err := q.move(ds, s, batch)
		moved += n
		batch = batch[:0]
		moveErr = err
		return err == nil
	}
	err = q.scanAll(ds, scanWindow, func(seq uint64, t queue.Task, _ bool, at msgTimes) bool {
		if !at.due.IsZero() {
			return true // not a dead task
		}
		if want != nil {
			if !want[t.ID] {
				return true
			}
			delete(want, t.ID)
		}
		batch = append(batch, deadMsg{seq, at.stored, t})
		if want != nil && len(want) == 0 {
			return false // every one named is found
		}
		return len(batch) < moveBatch || flush()
	})
	if moveErr == nil {
		flush()
	}
	if err = errors.Join(err, moveErr); err != nil {
		return moved, err
	}
	return moved, noSuchTasks(keys(want))
}

// deadMsg is a task of a dead-letter queue, with its message's sequence
// and the time it was stored.
type deadMsg struct {
	seq    uint64
	stored time.Time
	task   queue.Task
}

// moveBatch is how many tasks a requeue moves at once.
const moveBatch = 256

// move stores the tasks of batch at the end of to, in order, then deletes
// them from from, and returns how many it moved: those it could delete
// (the others are in both queues). Each stored copy has an ID of its dead
// message's, so a requeue that fails after storing it and is tried again
// within the dedup window does not store it twice.
func (q *Queues) move(from, to *stream, batch []deadMsg) (int, error) {
	items := make([]queue.Item, len(batch))
	for i, d := range batch {
		items[i].Priority = d.task.Priority
	}
	firstLevel, err := q.openLevelsOf(to, items)
	if firstLevel {
		defer q.wakeAll(to) // once the tasks are stored, or the move failed after making it
	}
	if err != nil {
		return 0, err
	}
	msgs := make([]*nats.Msg, len(batch))
	for i, d := range batch {
		msgs[i] = movedMsg(taskSubject(to, d.task), d.task, 0)
		msgs[i].Header.Set(jetstream.MsgIDHeader, requeuedID(from, d))
	}
	ctx, cancel := q.call()
	ids, err := q.publish(ctx, msgs)
	cancel()
	if err != nil {
		return 0, err
	}
	to.notePuts(msgs, ids)
	errs := make([]error, len(batch))
	sem := make(chan struct{}, scanWindow)
	var wg sync.WaitGroup
	for i, d := range batch {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := q.call()
			defer cancel()
			if err := from.st.DeleteMsg(ctx, d.seq); err != nil && !deletedAlready(err) {
				errs[i] = q.engineErr("requeue", err)
			}
		})
	}
	wg.Wait()
	moved, failed := 0, 0
	var firstErr error
	for _, err := range errs {
		if err == nil {
			moved++
		} else if failed++; firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return moved, fmt.Errorf("%d requeued tasks are also still dead: %w", failed, firstErr)
	}
	return moved, nil
}

// requeuedID is the message ID of dead task d of stream from, stored again
// by a requeue: its ID, and its dead message's sequence and the time it
// was stored, which a message of a dead-letter queue deleted and made
// anew does not have again.
func requeuedID(from *stream, d deadMsg) string {
	return queue.ReservedKeyPrefix + "requeued\x00" + streamName(from.queue) + "/" + strconv.FormatUint(d.seq, 10) + "/" +
		strconv.FormatInt(d.stored.UnixNano(), 10) + "/" + strconv.FormatUint(d.task.ID, 10)
}

// Drop removes tasks ids of a queue for good. Tasks this gateway has
// leased are refused, as in the in-process queues; a task leased
// through another gateway is dropped all the same.
func (q *Queues) Drop(name string, ids []uint64) (int, error) {
	s, err := q.open(name, false)
	if err != nil {
		return 0, err
	}
	want := idSet(ids)
	q.mu.Lock()
	for id := range want {
		if q.leases[leaseKey{name, id}] != nil {
			delete(want, id) // reported below as not ready
		}
	}
	q.mu.Unlock()
	dropped := 0
	var delErr error
	err = q.scanAll(s, scanWindow, func(seq uint64, t queue.Task, packed bool, _ msgTimes) bool {
		if !want[t.ID] {
			return true
		}
		if packed { // its message carries other tasks too
			delErr = fmt.Errorf("%w: task %d is stored packed with others (qmaster --pack) and cannot be dropped alone", queue.ErrBadArgument, t.ID)
			return false
		}
		ctx, cancel := q.call()
		defer cancel()
		if err := s.st.DeleteMsg(ctx, seq); err != nil && !deletedAlready(err) {
			delErr = q.engineErr("drop", err)
			return false
		}
		delete(want, t.ID)
		dropped++
		return len(want) > 0
	})
	if !queue.IsDeadLetterName(name) {
		q.countGone(name, dropped)
	}
	if err = errors.Join(err, delErr); err != nil {
		return dropped, err
	}
	var missing []uint64
	for _, id := range ids {
		if want[id] || q.isLeasedHere(name, id) {
			missing = append(missing, id)
		}
	}
	return dropped, noSuchTasks(missing)
}

func (q *Queues) isLeasedHere(name string, id uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.leases[leaseKey{name, id}] != nil
}

func idSet(ids []uint64) map[uint64]bool {
	if len(ids) == 0 {
		return nil
	}
	m := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

func keys(m map[uint64]bool) []uint64 {
	ks := make([]uint64, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func noSuchTasks(ids []uint64) error { return queue.TaskErrors(queue.ErrNoSuchTask, ids) }

func sortLeases(ls []queue.LeaseInfo) {
	slices.SortFunc(ls, func(a, b queue.LeaseInfo) int {
		return cmp.Or(a.Since.Compare(b.Since), cmp.Compare(a.Queue, b.Queue), cmp.Compare(a.ID, b.ID))
	})
}
