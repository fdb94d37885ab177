package jsqueue

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// transient reports whether err is one JetStream gives while a stream or
// consumer has no leader for a moment: just created, or its leader lost.
// The call did not take effect and may be made again.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, jetstream.ErrNoHeartbeat) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrConsumerLeadershipChanged) {
		return true
	}
	var notMade errStoreNotMade
	if errors.As(err, &notMade) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}

// errCodeStoreFailed is JetStream's answer (500) to a stream it could not
// make a store for.
const errCodeStoreFailed jetstream.ErrorCode = 10049

// storeNotMade reports whether err is that answer.
func storeNotMade(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeStoreFailed
}

// errCodeNoPeers is JetStream's answer (400) to a stream it found too few
// nodes up to place.
const errCodeNoPeers jetstream.ErrorCode = 10005

// noPeersYet reports whether err is that answer.
func noPeersYet(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeNoPeers
}

// storeRetryFor bounds the retries of a stream's creation that JetStream
// could not make a store for (errStoreNotMade).
const storeRetryFor = time.Second

// errStoreNotMade marks storeNotMade's answer to a stream's creation as
// transient: a stream of that name deleted a moment before may still be
// removing its files (seen once in CI: "error creating store for stream"
// right after a delete), and the creation took no effect. So is
// noPeersYet's, tried again for as long as the call may take.
type errStoreNotMade struct{ err error }

func (e errStoreNotMade) Error() string { return e.err.Error() }
func (e errStoreNotMade) Unwrap() error { return e.err }

// errCodeIDInProcess is JetStream's answer (409) to a message whose ID a
// message being stored has: the first send of a put sent again, still in
// its stream's log. Sent again once that one is stored, it is answered
// with the first one's sequence.
const errCodeIDInProcess jetstream.ErrorCode = 10158

// deletedAlready reports whether err, from a delete of a message, says
// that the message is not stored (anymore): deleted or acked meanwhile.
// The client gives JetStream's answer (10057, "no message found") as text
// only.
func deletedAlready(err error) bool {
	return errors.Is(err, jetstream.ErrMsgNotFound) ||
		errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && strings.Contains(err.Error(), "no message found")
}

// idInProcess reports whether err is that answer.
func idInProcess(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeIDInProcess
}

// attemptTimeout bounds one try of a call that retrying repeats: a
// request sent while its stream's leader is being replaced gets no
// answer, and the new leader answers the next one.
const attemptTimeout = 2 * time.Second

// retrying calls f until it returns nil or an error that is not
// transient, or ctx ends, backing off from 10ms to 250ms between calls.
// Each call gets at most attemptTimeout; one that runs out is tried
// again too, so f must be idempotent: a lookup, an ack.
func retrying(ctx context.Context, f func(ctx context.Context) error) error {
	return retry(ctx, func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		err := f(actx)
		timedOut := actx.Err() != nil && ctx.Err() == nil
		return transient(err) || err != nil && timedOut, err
	})
}

// retryingTransient calls f again only after a transient error, which
// says that f took no effect: for calls that must not be repeated once
// they may have taken effect, such as a publish, a nak, or a pull whose
// messages would sit unseen until AckWait.
func retryingTransient(ctx context.Context, f func() error) error {
	return retry(ctx, func() (bool, error) {
		err := f()
		return transient(err), err
	})
}

// retry calls try until it says not to try again, or ctx ends, backing
// off from 10ms to 250ms between calls, and returns its last error.
func retry(ctx context.Context, try func() (again bool, err error)) error {
	backoff := 10 * time.Millisecond
	for {
		again, err := try()
		if !again {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// publishIf publishes value on subj if the subject's last message is
// still at rev (0: there is none), under message ID id if any, and
// returns the new message's sequence. On replicated streams it sends the
// message again while it gets no answer, as while the stream elects a
// new leader, or after its leader handed the leadership over with the
// send in flight (Node.HandOver), which drops it unanswered: waited for,
// it held a stopping gateway up for the whole request timeout. With an
// id, JetStream stores it once, and answers a send again of one it stored
// as a duplicate, with its sequence (a replicated stream's leader looks
// at the ID before the sequence; its caller also tells its own write from
// another's by the ID of the subject's last message). Without, a send
// again of one stored finds the subject moved on, as a lost race
// (updateRecord). A stream of one replica compares the sequence first,
// and a write stored whose answer was late, written over by another
// meanwhile, would read as a lost race: there a send that gets no answer
// fails, as it may have been stored; no new leader is coming to answer
// it anyway.
func (q *Queues) publishIf(ctx context.Context, subj string, value []byte, rev uint64, id string) (uint64, error) {
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if id != "" {
		opts = append(opts, jetstream.WithMsgID(id))
	}
	if q.cfg.Replicas <= 1 {
		ack, err := q.js.Publish(ctx, subj, value, opts...)
		if err != nil {
			return 0, err
		}
		return ack.Sequence, nil
	}
	var seq uint64
	err := retry(ctx, func() (bool, error) {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		ack, err := q.js.Publish(actx, subj, value, opts...)
		if err == nil {
			seq = ack.Sequence
			return false, nil
		}
		noAnswer := actx.Err() != nil && ctx.Err() == nil
		return transient(err) || idInProcess(err) || noAnswer, err
	})
	return seq, err
}

// newWriteID returns a message ID for one compare-and-set write, which
// its sends again share (publishIf).
func newWriteID() string { return "qm-w-" + rand.Text() }

// errNoLeaderAnswer is the error of a look at a stream or consumer that
// only its members answered, while it had no leader.
var errNoLeaderAnswer = errors.New("no leader answered (one is being elected); figures not read")

// streamInfo returns st's info as its leader has it. While a replicated
// stream elects a leader (its leader died), each member answers with its
// own state, which may be behind: a restarted node's lacks what it had
// not written when it was killed. A figure read from that would show
// tasks vanishing (a map's watch took its queue for deleted), and a purge
// up to its last sequence would leave tasks. Such answers are asked again
// until a leader answers, or ctx ends.
func streamInfo(ctx context.Context, st jetstream.Stream, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	return fromLeader(ctx, func() (*jetstream.StreamInfo, error) { return st.Info(ctx, opts...) },
		func(si *jetstream.StreamInfo) bool { return si.Cluster == nil || si.Cluster.Leader != "" })
}

// consumerInfo is streamInfo for a consumer of a stream of replicas. A
// member answers without a leader in two ways: with its own state while
// the consumer elects one, or, on a node starting again that has not yet
// made the consumer's group, with its config and no state at all (no
// cluster either).
func consumerInfo(ctx context.Context, cons jetstream.Consumer, replicas int) (*jetstream.ConsumerInfo, error) {
	return fromLeader(ctx, func() (*jetstream.ConsumerInfo, error) { return cons.Info(ctx) },
		func(ci *jetstream.ConsumerInfo) bool {
			if ci.Cluster == nil {
				return replicas <= 1
			}
			return ci.Cluster.Leader != ""
		})
}

// fromLeader calls info until it answers with what led says a leader
// gave, or fails, or ctx ends (errNoLeaderAnswer).
func fromLeader[T any](ctx context.Context, info func() (T, error), led func(T) bool) (T, error) {
	var v T
	err := retry(ctx, func() (bool, error) {
		var err error
		if v, err = info(); err != nil {
			return false, err
		}
		if !led(v) {
			return true, errNoLeaderAnswer
		}
		return false, nil
	})
	return v, err
}

// eachAtOnce calls f(i) for each i in [0, n), at most limit at once, and
// returns how many calls failed and one of their errors.
func eachAtOnce(n, limit int, f func(i int) error) (failed int, err error) {
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		sem = make(chan struct{}, limit)
	)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if e := f(i); e != nil {
				mu.Lock()
				failed, err = failed+1, e
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, err
}
