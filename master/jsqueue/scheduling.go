package jsqueue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A delayed put is kept by JetStream's own message scheduling (nats-server
// 2.12 and later): each delayed task is a schedule message on a subject of
// its own in its queue's stream, which the stream's leader publishes to
// the queue's subject when it is due, headers and payload as they were,
// and then deletes. The queue's consumer takes only the queue's subject
// and its packs', so a schedule message is never handed out. A stream
// takes schedules once the first delayed put comes (enableSchedules).
//
// A delayed task's ID cannot be its message's sequence, as the message it
// runs as is stored when due, under another. Its ID comes from a counter
// kept in JetStream, per queue, and is carried in the Qm-Id header.
//
// Priorities have a subject and a consumer each (priority.go).
// Idempotency keys are JetStream's own Nats-Msg-Id (put.go).

// Headers of JetStream's message scheduling.
const (
	hdrSchedule       = "Nats-Schedule"
	hdrScheduleTarget = "Nats-Schedule-Target"
	hdrScheduler      = "Nats-Scheduler" // on a task published when due: its schedule's subject
)

// delayedIDBit marks the IDs of delayed tasks, below packed tasks' bit
// (packedIDBit): a stream's sequences stay far below it.
const delayedIDBit = 1 << 51

// schedSubjects are the subjects of the schedule messages of the queue
// whose tasks are published on subj, one each.
func schedSubjects(subj string) string { return subj + ".at.*" }

func schedSubject(subj string, id uint64) string {
	return subj + ".at." + strconv.FormatUint(id&^delayedIDBit, 36)
}

// checkItems checks items as the in-process queues do: JetStream queues
// keep every put option.
func checkItems(items []queue.Item) error {
	return queue.CheckItems(items, time.Now())
}

// dueLater returns the time the items of a put are due, if it is later
// than now (a put's items share it): zero for a put to run now.
func dueLater(items []queue.Item, now time.Time) time.Time {
	if len(items) == 0 || !items[0].Due.After(now) {
		return time.Time{}
	}
	return items[0].Due
}

// putDelayed stores req, whose items are due at due, as schedule messages
// of s, and returns their tasks' IDs. A repeat of a put with keys or a
// request ID (its messages stored before, as JetStream says) gets the
// first one's IDs, read from its schedule messages: if they have been
// published as due meanwhile, the put fails, saying so.
func (q *Queues) putDelayed(s *stream, req queue.PutRequest, due time.Time) ([]uint64, error) {
	ctx, cancel := q.call()
	defer cancel()
	if err := q.enableSchedules(ctx, s); err != nil {
		return nil, err
	}
	ids, err := q.delayedIDs(ctx, s, len(req.Items))
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	at := "@at " + due.UTC().Format(time.RFC3339Nano)
	msgs := make([]*nats.Msg, len(req.Items))
	for i, it := range req.Items {
		m := nats.NewMsg(schedSubject(s.subject, ids[i]))
		m.Data = it.Payload
		m.Header.Set(hdrID, strconv.FormatUint(ids[i], 10))
		m.Header.Set(hdrEnqueued, now)
		m.Header.Set(hdrSchedule, at)
		m.Header.Set(hdrScheduleTarget, levelSubject(s.subject, it.Priority))
		if it.Priority > 0 {
			m.Header.Set(hdrPriority, strconv.Itoa(it.Priority))
		}
		if it.ReplyTo != "" {
			m.Header.Set(hdrReplyTo, it.ReplyTo)
		}
		if it.Key != "" {
			m.Header.Set(jetstream.MsgIDHeader, it.Key)
		}
		msgs[i] = m
	}
	if req.RequestID != "" {
		requestMsgIDs(msgs, nil, req.RequestID)
	}
	// Duplicates as the last send saw them: stored by an earlier put, or
	// by an earlier send of this one, whichever IDs they carry.
	seqs, dup, sends, err := q.publishSends(ctx, msgs, q.replacedSince(ctx, s))
	if err != nil {
		q.forget(req.Queue)
		return nil, err
	}
	if req.Repeats != nil && sends == 1 {
		*req.Repeats = keyRepeats(msgs, dup, keyedMsgs(req.Items, msgs))
	}
	for i := range dup {
		if !dup[i] {
			continue
		}
		// Stored before, by this put (a delayed task, not yet due) or by
		// a put without a delay: its task's ID is the one it carries.
		id, found, err := storedTaskID(ctx, s, seqs[i])
		if err != nil {
			return nil, q.engineErr("put "+req.Queue, err)
		}
		if !found {
			return nil, fmt.Errorf("%w: this put was stored before, and its tasks were taken or are due already: their IDs are not known here", queue.ErrBadArgument)
		}
		ids[i] = id
	}
	return ids, nil
}

// storedTaskID returns the ID of the task message seq of s holds, read
// from the stream: the ID it carries (a delayed task's), else seq. found
// is false if the message is gone (taken, or a delayed one come due) or
// holds a pack, whose tasks have IDs of their own.
func storedTaskID(ctx context.Context, s *stream, seq uint64) (id uint64, found bool, err error) {
	m, err := s.st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if m.Header.Get(hdrPack) != "" {
		return 0, false, nil
	}
	if v := m.Header.Get(hdrID); v != "" {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, false, fmt.Errorf("a stored task's ID %q: %w", v, err)
		}
		return id, true, nil
	}
	return seq, true, nil
}

// delayedIDs takes n IDs for delayed tasks of s from its counter.
func (q *Queues) delayedIDs(ctx context.Context, s *stream, n int) ([]uint64, error) {
	if _, err := q.counts(ctx); err != nil {
		return nil, err
	}
	m := nats.NewMsg(idsSubject(s.queue))
	m.Header.Set("Nats-Incr", "+"+strconv.Itoa(n))
	var ack *jetstream.PubAck
	err := retryingTransient(ctx, func() (err error) { ack, err = q.js.PublishMsg(ctx, m); return err })
	if err != nil {
		return nil, q.engineErr("number delayed tasks", err)
	}
	last, err := strconv.ParseUint(ack.Value, 10, 64)
	if err != nil || last < uint64(n) || last >= delayedIDBit {
		return nil, q.engineErr("number delayed tasks", fmt.Errorf("counter at %q after adding %d", ack.Value, n))
	}
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = delayedIDBit | (last - uint64(n) + 1 + uint64(i))
	}
	return ids, nil
}

// enableSchedules makes s's stream take schedule messages, once: its
// consumer first takes only the queue's subject and its packs', so that
// it never hands a schedule message out; then the stream takes the
// schedules' subjects and allows schedules.
func (q *Queues) enableSchedules(ctx context.Context, s *stream) error {
	if s.schedules.Load() {
		return nil
	}
	fail := func(err error) error { return q.engineErr("open queue "+s.queue+" for delayed tasks", err) }
	cfg, err := q.filterTasks(ctx, s)
	if err != nil {
		return fail(err)
	}
	if !cfg.AllowMsgSchedules || !slices.Contains(cfg.Subjects, schedSubjects(s.subject)) {
		cfg.AllowMsgSchedules = true
		if !slices.Contains(cfg.Subjects, schedSubjects(s.subject)) {
			cfg.Subjects = append(cfg.Subjects, schedSubjects(s.subject))
		}
		if _, err := q.js.UpdateStream(ctx, cfg); err != nil {
			return fail(err)
		}
	}
	s.schedules.Store(true)
	return nil
}

// filterTasks makes s's level-0 consumer take only the queue's subject
// and its packs', before its stream takes other subjects (schedules,
// priorities): a consumer made before delayed puts takes every subject of
// the stream. It returns the stream's configuration.
func (q *Queues) filterTasks(ctx context.Context, s *stream) (jetstream.StreamConfig, error) {
	si, err := s.st.Info(ctx)
	if err != nil {
		return jetstream.StreamConfig{}, err
	}
	cfg := si.Config
	if !slices.Contains(cfg.Subjects, packSubjects(s.subject)) {
		// A stream made before packs: it takes them first, so that the
		// consumer's filter, below, covers every subject of tasks.
		cfg.Subjects = append(cfg.Subjects, packSubjects(s.subject))
		if _, err := q.js.UpdateStream(ctx, cfg); err != nil {
			return cfg, err
		}
	}
	filter := []string{s.subject, packSubjects(s.subject)}
	ci, err := s.cons.Info(ctx)
	if err != nil {
		return cfg, err
	}
	if ccfg := ci.Config; !slices.Equal(ccfg.FilterSubjects, filter) {
		ccfg.FilterSubject, ccfg.FilterSubjects = "", filter
		if _, err := s.st.UpdateConsumer(ctx, ccfg); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

// taskSubjects returns the subjects among a stream's subjects that carry
// the tasks of the queue published on subj: its own and its packs'.
func taskSubjects(subjects []string, subj string) []string {
	out := []string{subj}
	if slices.Contains(subjects, packSubjects(subj)) {
		out = append(out, packSubjects(subj))
	}
	return out
}

// withTaskFilter makes sure that cons, the consumer of stream st whose
// tasks are published on subj, takes every subject of tasks, if it is
// filtered: a stream made before packs that has taken them since.
func (q *Queues) withTaskFilter(ctx context.Context, st jetstream.Stream, cons jetstream.Consumer, subj string) (jetstream.Consumer, error) {
	ccfg := cons.CachedInfo().Config
	want := taskSubjects(st.CachedInfo().Config.Subjects, subj)
	if len(ccfg.FilterSubjects) == 0 || slices.Equal(ccfg.FilterSubjects, want) {
		return cons, nil
	}
	ccfg.FilterSubject, ccfg.FilterSubjects = "", want
	return st.UpdateConsumer(ctx, ccfg)
}

// hasSchedules reports whether s's stream holds a delayed task not yet
// due: one read of its last schedule.
func (q *Queues) hasSchedules(ctx context.Context, s *stream) bool {
	_, err := s.st.GetLastMsgForSubject(ctx, schedSubjects(s.subject))
	return err == nil
}

// isScheduled reports whether m is a schedule message: a delayed task not
// yet due.
func isScheduled(h nats.Header) bool { return h.Get(hdrSchedule) != "" }

// scheduledDue returns the time a schedule message is due.
func scheduledDue(h nats.Header) time.Time {
	at, ok := strings.CutPrefix(h.Get(hdrSchedule), "@at ")
	if !ok {
		return time.Time{}
	}
	t, _ := time.Parse(time.RFC3339Nano, at)
	return t
}

// PeekDelayed returns the first n delayed tasks of a queue, not yet due,
// in the order they were put (not by due time, as the in-process queues
// give them), each with its Due.
func (q *Queues) PeekDelayed(name string, n int) ([]queue.Task, error) {
	if n < 0 {
		return nil, fmt.Errorf("%w: peek count must be >= 0, got %d", queue.ErrBadArgument, n)
	}
	s, err := q.open(name, false)
	if err != nil {
		return nil, err
	}
	var ts []queue.Task
	if n == 0 {
		return ts, nil
	}
	err = q.scanAll(s, scanWindow, func(_ uint64, t queue.Task, _ bool, at msgTimes) bool {
		if !at.due.IsZero() {
			t.Due = at.due
			ts = append(ts, t)
		}
		return len(ts) < n
	})
	return ts, err
}

// RunNow makes delayed tasks ids of a queue (all of them if ids is empty)
// due now, and returns how many it moved. Each schedule is replaced by
// one due at once, on the condition that it is still the one stored: a
// task that came due meanwhile is not run twice, and is reported as not
// delayed. JetStream's scheduler publishes the tasks within about a
// quarter of a second (its shortest timer), in the order they were made
// due. A failed task waiting out a backoff is held by JetStream's
// redelivery, which has no run-now, unless it was packed and failed
// through another gateway (a schedule then, run now like the others).
func (q *Queues) RunNow(name string, ids []uint64) (int, error) {
	s, err := q.open(name, false)
	if err != nil {
		return 0, err
	}
	var missing []uint64
	var scheds []uint64 // the delayed tasks' IDs
	if len(ids) == 0 {
		err := q.scanAll(s, scanWindow, func(_ uint64, t queue.Task, _ bool, at msgTimes) bool {
			if !at.due.IsZero() {
				scheds = append(scheds, t.ID)
			}
			return true
		})
		if err != nil {
			return 0, err
		}
	} else {
		for _, id := range ids {
			// A plain task waiting out a backoff is a NAK with a delay;
			// a delayed or packed one may be a schedule.
			if id&(delayedIDBit|packedIDBit) == 0 {
				missing = append(missing, id)
				continue
			}
			scheds = append(scheds, id)
		}
	}
	moved := 0
	for _, id := range scheds {
		ok, err := q.runNow(s, id)
		if err != nil {
			return moved, err
		}
		if !ok {
			missing = append(missing, id)
			continue
		}
		moved++
	}
	return moved, noSuchTasks(missing)
}

// runNow replaces the schedule of delayed task id of s with one due now,
// and reports whether there was one. JetStream stores a schedule as a
// roll-up of its subject: the old one is gone as the new one is stored.
func (q *Queues) runNow(s *stream, id uint64) (bool, error) {
	ctx, cancel := q.call()
	defer cancel()
	fail := func(err error) (bool, error) { return false, q.engineErr("run-now in "+s.queue, err) }
	old, err := s.st.GetLastMsgForSubject(ctx, schedSubject(s.subject, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return fail(err)
	}
	if !isScheduled(old.Header) || !scheduledDue(old.Header).After(time.Now()) {
		// Due already: JetStream's scheduler publishes it, or has (its
		// message may outlive that for a moment). Stored again due now,
		// it would run twice.
		return false, nil
	}
	m := nats.NewMsg(old.Subject)
	m.Data = old.Data
	for k, v := range old.Header {
		m.Header[k] = v
	}
	// Not a repeat of the put: stored anew, under no key.
	m.Header.Del(jetstream.MsgIDHeader)
	at := "@at " + time.Now().UTC().Format(time.RFC3339Nano)
	m.Header.Set(hdrSchedule, at)
	err = retryingTransient(ctx, func() error {
		_, err := q.js.PublishMsg(ctx, m, jetstream.WithExpectLastSequencePerSubject(old.Sequence))
		return err
	})
	if isWrongSequence(err) {
		// It came due, or was dropped, meanwhile; or an earlier send of
		// this publish was stored.
		now, err := s.st.GetLastMsgForSubject(ctx, old.Subject)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fail(err)
		}
		if err != nil || now.Header.Get(hdrSchedule) != at {
			return false, nil
		}
	} else if err != nil {
		return fail(err)
	}
	// Stored again: a put more in the stream's count, which is not one.
	q.countPacked(s, -1)
	return true, nil
}
