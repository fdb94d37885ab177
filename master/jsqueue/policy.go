package jsqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// A queue's retry policy (qmaster config) is kept in the KV bucket
// policiesBucket, one key per queue, for every gateway. The first policy
// set makes the bucket; each gateway looks for it every policyLookEvery
// until it finds it, and then watches it: a policy set through one
// gateway holds for the others as soon as the change reaches them (the
// very first within policyLookEvery, or at the queue's next figures). The gateway's defaults hold where
// no policy is set. Like a single master's, a queue's policy outlives the
// queue.

// policiesBucket is the KV bucket of the queues' retry policies.
const policiesBucket = "qm_policies"

// policyLookEvery is how often a gateway looks for the bucket of
// policies while there is none.
const policyLookEvery = 10 * time.Second

// storedPolicy is a policy as the bucket keeps it, under its queue's
// stream name, with the queue's name.
type storedPolicy struct {
	Queue       string        `json:"queue"`
	MaxAttempts int           `json:"max_attempts,omitempty"`
	BackoffMin  time.Duration `json:"backoff_min,omitempty"`
	BackoffMax  time.Duration `json:"backoff_max,omitempty"`
}

// policy returns queue name's policy in effect: the gateway's defaults
// where none is set. It does no I/O, and may be called with q.mu held.
func (q *Queues) policy(name string) queue.Policy {
	q.polMu.Lock()
	p := q.policies[name]
	q.polMu.Unlock()
	return queue.Effective(p, queue.Policy{MaxAttempts: q.cfg.MaxAttempts, BackoffMin: q.cfg.RetryBackoffMin, BackoffMax: q.cfg.RetryBackoffMax})
}

// setCachedPolicy notes p as the policy of queue name, kept under key at
// revision rev of the bucket, unless a later one is noted already (the
// watch may bring another gateway's before this one's SetPolicy notes
// its own).
func (q *Queues) setCachedPolicy(key, name string, p queue.Policy, rev uint64) {
	q.polMu.Lock()
	defer q.polMu.Unlock()
	if q.policies == nil {
		q.policies, q.policyKeys, q.policyRevs = make(map[string]queue.Policy), make(map[string]string), make(map[string]uint64)
	}
	if rev < q.policyRevs[key] {
		return
	}
	q.policyRevs[key] = rev
	if p == (queue.Policy{}) {
		delete(q.policies, name)
		return
	}
	q.policies[name], q.policyKeys[key] = p, name
}

// watchPolicies waits for the bucket (made by the first SetPolicy, through
// any gateway), looking for it every policyLookEvery, and then keeps the
// gateway's copy of the policies current until the gateway closes.
func (q *Queues) watchPolicies() {
	var kv jetstream.KeyValue
	for kv == nil {
		ctx, cancel := context.WithTimeout(q.ctx, q.cfg.RequestTimeout)
		var err error
		kv, err = q.policiesKV(ctx, false)
		cancel()
		if err != nil && q.ctx.Err() == nil {
			q.log.Warn("the queues' retry policies not read yet; the defaults hold", "err", err)
		}
		if kv != nil {
			break
		}
		select {
		case <-q.ctx.Done():
			return
		case <-q.polMade: // made here, or found by lookForPolicies
		case <-time.After(policyLookEvery):
		}
	}
	for wait := time.Second; ; wait = min(2*wait, policyLookEvery) {
		if q.watch(kv) {
			wait = time.Second // it ran: the next failure starts over
		}
		select {
		case <-q.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// watch keeps the gateway's copy of the policies current from kv until
// the gateway closes or the watch fails (a node lost, say), and reports
// whether it got as far as the policies there were when it began.
func (q *Queues) watch(kv jetstream.KeyValue) (ran bool) {
	w, err := kv.WatchAll(q.ctx)
	if err != nil {
		if q.ctx.Err() == nil {
			q.log.Warn("the queues' retry policies not watched; trying again", "err", err)
		}
		return false
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-q.ctx.Done():
			return ran
		case e, ok := <-w.Updates():
			if !ok {
				if q.ctx.Err() == nil {
					q.log.Warn("the watch of the queues' retry policies ended; watching again")
				}
				return ran
			}
			if e == nil { // the values there were when the watch began are in
				ran = true
				continue
			}
			q.notePolicy(e)
		}
	}
}

// lookForPolicies looks for the bucket now, if it was not found yet (at
// most once a second), and has the watch take it at once: called for a
// queue's figures, so that they show a policy set through another
// gateway.
func (q *Queues) lookForPolicies(ctx context.Context) {
	q.polMu.Lock()
	skip := q.polKV != nil || time.Since(q.polLooked) < time.Second
	if !skip {
		q.polLooked = time.Now()
	}
	q.polMu.Unlock()
	if skip {
		return
	}
	if kv, _ := q.policiesKV(ctx, false); kv != nil {
		select {
		case q.polMade <- struct{}{}:
		default:
		}
	}
}

// notePolicy takes a change of the bucket into the gateway's copy.
func (q *Queues) notePolicy(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		q.polMu.Lock()
		name, ok := q.policyKeys[e.Key()]
		q.polMu.Unlock()
		if ok {
			q.setCachedPolicy(e.Key(), name, queue.Policy{}, e.Revision())
		}
		return
	}
	var sp storedPolicy
	if err := json.Unmarshal(e.Value(), &sp); err != nil || streamName(sp.Queue) != e.Key() {
		q.log.Warn("a malformed retry policy ignored", "key", e.Key(), "err", err)
		return
	}
	q.setCachedPolicy(e.Key(), sp.Queue, queue.Policy{MaxAttempts: sp.MaxAttempts, BackoffMin: sp.BackoffMin, BackoffMax: sp.BackoffMax}, e.Revision())
}

// policiesKV returns the bucket, creating it if create is set; else nil
// if it does not exist yet.
func (q *Queues) policiesKV(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	q.polMu.Lock()
	kv := q.polKV
	q.polMu.Unlock()
	if kv != nil {
		return kv, nil
	}
	var err error
	if create {
		kv, err = q.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   policiesBucket,
			Replicas: q.cfg.Replicas,
			Storage:  jetstream.FileStorage,
		})
	} else {
		kv, err = q.js.KeyValue(ctx, policiesBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, err
	}
	q.polMu.Lock()
	q.polKV = kv
	q.polMu.Unlock()
	return kv, nil
}

// SetPolicy sets the retry policy of queue name (creating the queue if
// needed) for every gateway; the zero Policy goes back to the gateways'
// defaults. It applies to the attempts that fail from now on: through
// this gateway at once, through the others once the change reaches them.
func (q *Queues) SetPolicy(name string, p queue.Policy) error {
	if err := queue.CheckPolicy(p); err != nil {
		return err
	}
	if queue.IsDeadLetterName(name) {
		return fmt.Errorf("%w: %q is a dead-letter queue: its tasks are not retried", queue.ErrBadArgument, name)
	}
	if _, err := q.open(name, true); err != nil {
		return err
	}
	ctx, cancel := q.call()
	defer cancel()
	kv, err := q.policiesKV(ctx, true)
	if err != nil {
		return q.engineErr("set the policy of "+name, err)
	}
	select {
	case q.polMade <- struct{}{}: // watch it now
	default:
	}
	key := streamName(name)
	// The zero policy is put too, rather than the key deleted: its
	// revision then orders it as any other (setCachedPolicy).
	var rev uint64
	b, err := json.Marshal(storedPolicy{Queue: name, MaxAttempts: p.MaxAttempts, BackoffMin: p.BackoffMin, BackoffMax: p.BackoffMax})
	if err == nil {
		rev, err = kv.Put(ctx, key, b)
	}
	if err != nil {
		return q.engineErr("set the policy of "+name, err)
	}
	q.setCachedPolicy(key, name, p, rev) // the watch brings it too, a little later
	return nil
}
