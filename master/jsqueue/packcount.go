package jsqueue

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A queue's figures count tasks, packed or not. JetStream counts
// messages, so each pack is published on a subject that says how many
// tasks it carries (packSubject): the stream's count of messages per
// subject then tells how many tasks it holds (storedTasks). How many were
// ever put is the stream's last sequence plus the tasks packs carried
// beyond one each, which the gateways add up in a JetStream counter, one
// per queue (countsStream), as they put packs.

// packSubject is the subject of a pack of n tasks of the queue whose
// tasks are published on subj.
func packSubject(subj string, n int) string { return subj + "." + strconv.Itoa(n) }

// packSubjects matches every packSubject of the queue on subj.
func packSubjects(subj string) string { return subj + ".*" }

// storedTasks is how many tasks the messages of state carry, state being
// a stream's, read with its subjects filtered by packSubjects.
func storedTasks(state jetstream.StreamState) uint64 {
	n := state.Msgs
	for subj, msgs := range state.Subjects {
		_, size, _ := cutLast(subj, ".")
		if k, err := strconv.ParseUint(size, 10, 8); err == nil && k > 1 {
			n += (k - 1) * msgs
		}
	}
	return n
}

func cutLast(s, sep string) (before, after string, found bool) {
	if i := strings.LastIndex(s, sep); i >= 0 {
		return s[:i], s[i+len(sep):], true
	}
	return s, "", false
}

// withPackSubjects makes sure a queue's stream takes packs: a stream made
// before packs had subjects of their own takes its queue's subject only.
func (q *Queues) withPackSubjects(ctx context.Context, st jetstream.Stream, subj string) (jetstream.Stream, error) {
	cfg := st.CachedInfo().Config
	if slices.Contains(cfg.Subjects, packSubjects(subj)) {
		return st, nil
	}
	cfg.Subjects = append(cfg.Subjects, packSubjects(subj))
	return q.js.UpdateStream(ctx, cfg)
}

// countsStream keeps, per queue, the tasks its packs carried beyond one
// each: a JetStream counter (Nats-Incr), so that gateways add to it at
// once without reading it.
const (
	countsStream  = "QM_PACKED_COUNTS"
	countsSubject = "qm.packed."
)

// counts returns the counters' stream, creating it on first use.
func (q *Queues) counts(ctx context.Context) (jetstream.Stream, error) {
	q.cntsMaking.Lock()
	defer q.cntsMaking.Unlock()
	q.cntsMu.Lock()
	made := q.cnts
	q.cntsMu.Unlock()
	if made != nil {
		return made, nil
	}
	// Each try bounded and repeated, as the packs' records' are: a
	// request sent while the cluster elects its meta leader (a gateway
	// makes this stream as it starts) may get no answer.
	var st jetstream.Stream
	err := retrying(ctx, func(ctx context.Context) (err error) {
		st, err = q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              countsStream,
			Subjects:          []string{countsSubject + ">"},
			Storage:           jetstream.FileStorage,
			Replicas:          q.cfg.Replicas,
			AllowMsgCounter:   true,
			MaxMsgsPerSubject: 1,
		})
		return err
	})
	if err != nil {
		return nil, q.engineErr("open the packs' counters", err)
	}
	q.cntsMu.Lock()
	q.cnts = st
	q.cntsMu.Unlock()
	return st, nil
}

// countPacked notes extra, the tasks a put's packs carried beyond one
// each, for s's counter; or, negative, tasks stored a second time:
// delayed ones come due (as a schedule, then as the task), and held ones
// stored apart (moveHeld, movePacksApart). The reaper adds them up there every
// countsEvery (sendCounts): a counter's additions are written one after
// another, through consensus with replicas, and one per put of results
// slowed a three-node cluster fourfold. A gateway that dies loses what it
// had not sent: the queue's Puts and Done figures then count short.
func (q *Queues) countPacked(s *stream, extra int) {
	q.addCount(countsSubject+streamName(s.queue), extra)
}

// countGone notes n tasks of queue name gone without being done (purged,
// dropped, or moved to its dead-letter queue), for its counter of them
// (goneSubject), sent as countPacked's are: Done counts every task gone
// from its stream less these.
func (q *Queues) countGone(name string, n int) {
	if n > 0 {
		q.addCount(goneSubject(name), n)
	}
}

// countHandedOut notes that this gateway handed out n tasks of pulled
// packs, and pulled packs more, for s's counter of them (getsSubject),
// sent as countPacked's are: Gets counts the messages the queue's
// consumer delivered plus these, so a pack delivered counts its tasks as
// they are handed out, as a single master counts them. Called with q.mu
// held.
func (q *Queues) countHandedOutLocked(s *stream, n, packs int) {
	if n != packs {
		q.addCountLocked(getsSubject(s.queue), n-packs)
	}
}

// addCount adds n to what the counter on subj is sent next.
func (q *Queues) addCount(subj string, n int) {
	q.mu.Lock()
	q.addCountLocked(subj, n)
	q.mu.Unlock()
}

// addCountLocked is addCount called with q.mu held.
func (q *Queues) addCountLocked(subj string, n int) {
	if q.countsToSend == nil {
		q.countsToSend = make(map[string]int)
	}
	q.countsToSend[subj] += n
	q.wakeReaper()
}

// countsEvery is how often a gateway adds to the queues' counters.
const countsEvery = 100 * time.Millisecond

// takeCounts returns the counts to send, if countsEvery has passed since
// the last were at now (whenever, with now zero).
func (q *Queues) takeCounts(now time.Time) map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.countsToSend) == 0 || !now.IsZero() && now.Sub(q.countsSent) < countsEvery {
		return nil
	}
	counts := q.countsToSend
	q.countsToSend, q.countsSent = nil, now
	return counts
}

// sendCounts adds counts to the queues' counters, without waiting for
// JetStream's answer: a lost addition makes Puts and Done short.
func (q *Queues) sendCounts(counts map[string]int) {
	if len(counts) == 0 {
		return
	}
	ctx, cancel := q.call()
	defer cancel()
	if _, err := q.counts(ctx); err != nil {
		q.log.Warn("queue counters not added to; their queues' Puts and Done figures are off by what was not sent", "err", err)
		return
	}
	for subj, n := range counts {
		m := nats.NewMsg(subj)
		incr := strconv.Itoa(n)
		if n >= 0 {
			incr = "+" + incr
		}
		m.Header.Set("Nats-Incr", incr)
		_ = q.cfg.Conn.PublishMsg(m)
	}
}

// countsIfAny returns the counters' stream if it exists (nil if not): a
// gateway that does not pack does not make it. Until it is found, each
// call looks it up, without the lock: AllStats reads several queues at
// once, and they would take turns for the lookup.
func (q *Queues) countsIfAny(ctx context.Context) (jetstream.Stream, error) {
	q.cntsMu.Lock()
	st := q.cnts
	q.cntsMu.Unlock()
	if st != nil {
		return st, nil
	}
	st, err := q.js.Stream(ctx, countsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	q.cntsMu.Lock()
	defer q.cntsMu.Unlock()
	if q.cnts == nil {
		q.cnts = st
	}
	return q.cnts, nil
}

// packedExtra reads the tasks packs of queue name carried beyond one
// each, less its delayed tasks that came due (countPacked), 0 if none
// were counted: what its stream's last sequence counts short of the
// tasks ever put in it.
func (q *Queues) packedExtra(ctx context.Context, name string) (int64, error) {
	return q.counterValue(ctx, countsSubject+streamName(name))
}

// goneTasks reads how many tasks of queue name left its stream without
// being done (countGone).
func (q *Queues) goneTasks(ctx context.Context, name string) (int64, error) {
	return q.counterValue(ctx, goneSubject(name))
}

// goneSubject is the subject of queue name's counter of tasks gone
// without being done.
func goneSubject(name string) string { return countsSubject + "gone." + streamName(name) }

// handedOutExtra reads how many more tasks of queue name gateways handed
// out of packs than they pulled packs (countHandedOutLocked).
func (q *Queues) handedOutExtra(ctx context.Context, name string) (int64, error) {
	return q.counterValue(ctx, getsSubject(name))
}

// getsSubject is the subject of queue name's counter of tasks handed out
// of packs beyond the packs pulled.
func getsSubject(name string) string { return countsSubject + "gets." + streamName(name) }

// idsSubject is the subject of the counter that numbers the delayed
// tasks of queue name.
func idsSubject(name string) string { return countsSubject + "ids." + streamName(name) }

// counterValue returns the value of the counter on subj, 0 if it has none.
func (q *Queues) counterValue(ctx context.Context, subj string) (int64, error) {
	st, err := q.countsIfAny(ctx)
	if st == nil || err != nil {
		return 0, err
	}
	m, err := st.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v struct {
		Val string `json:"val"`
	}
	if err := json.Unmarshal(m.Data, &v); err != nil {
		return 0, err
	}
	return strconv.ParseInt(v.Val, 10, 64)
}

// dropCount deletes queue name's counter, with its queue.
func (q *Queues) dropCount(ctx context.Context, name string) error {
	st, err := q.countsIfAny(ctx)
	if st == nil || err != nil {
		return err
	}
	// Not the counter of delayed tasks' IDs (idsSubject): a queue made
	// anew meanwhile, through another gateway, may have taken some, and
	// numbering from 1 again would give a schedule's subject twice.
	for _, subj := range [...]string{countsSubject + streamName(name), goneSubject(name), getsSubject(name)} {
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return err
		}
	}
	return nil
}
