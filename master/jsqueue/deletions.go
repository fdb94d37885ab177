package jsqueue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qm-dev/qm/master/queue"
)

// The deletions of queues that clients made through any gateway are kept
// in the KV bucket deletionsBucket, one key per queue, for the gateways
// that start later (a restart, a new one): those running are told of
// each at once (master's deletion notices), but a gateway's memory of
// them ends with it. Entries last queue.DeletionKept after their last
// write, the bucket's TTL.

// deletionsBucket is the KV bucket of the queues' deletions.
const deletionsBucket = "qm_deletions"

// keptDeletion is a deletion as the bucket keeps it, under its queue's
// token, with the queue's name.
type keptDeletion struct {
	Queue    string    `json:"queue"`
	At       time.Time `json:"at"`
	CancelAt time.Time `json:"cancel_at,omitzero"`
}

// deletionsKV returns the bucket, creating it when create is set; nil
// and no error if it is not there and create is not set.
func (q *Queues) deletionsKV(ctx context.Context, create bool) (jetstream.KeyValue, error) {
	q.delMu.Lock()
	defer q.delMu.Unlock()
	if q.delKV != nil {
		return q.delKV, nil
	}
	// Each try bounded and repeated: a request sent while the bucket's
	// stream is being made, or elects its leader, may get no answer.
	var kv jetstream.KeyValue
	err := retrying(ctx, func(ctx context.Context) (err error) {
		kv, err = q.js.KeyValue(ctx, deletionsBucket)
		return err
	})
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		if !create {
			return nil, nil
		}
		err = retrying(ctx, func(ctx context.Context) (err error) {
			kv, err = q.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:   deletionsBucket,
				TTL:      queue.DeletionKept,
				Replicas: q.cfg.Replicas,
				Storage:  jetstream.FileStorage,
			})
			return err
		})
	}
	if err != nil {
		return nil, q.engineErr("open the deletions of queues", err)
	}
	q.delKV = kv
	return kv, nil
}

// KeepDeletion stores the deletion of queue name, so that gateways that
// start later know it (master.DeletionKeeper). Each of its times only
// moves forward: two gateways' deletions of one queue at once keep the
// later of each.
func (q *Queues) KeepDeletion(name string, d queue.Deletion) error {
	ctx, cancel := context.WithTimeout(q.ctx, q.cfg.RequestTimeout)
	defer cancel()
	kv, err := q.deletionsKV(ctx, true)
	if err != nil {
		return err
	}
	key := token(name)
	for range 10 {
		var rev uint64
		var e jetstream.KeyValueEntry
		err := retrying(ctx, func(ctx context.Context) (err error) {
			e, err = kv.Get(ctx, key)
			return err
		})
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return q.engineErr("read the deletion of "+name, err)
		default:
			rev = e.Revision()
			var old keptDeletion
			if json.Unmarshal(e.Value(), &old) == nil && old.Queue == name {
				if old.At.After(d.At) {
					d.At = old.At
				}
				if old.CancelAt.After(d.CancelAt) {
					d.CancelAt = old.CancelAt
				}
			}
		}
		value, err := json.Marshal(keptDeletion{Queue: name, At: d.At, CancelAt: d.CancelAt})
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, value)
		} else {
			_, err = kv.Update(ctx, key, value, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			// Another gateway's write came between (a replicated bucket
			// says so as a wrong revision): merge with it.
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(1+rand.IntN(20)) * time.Millisecond):
			}
			continue
		}
		if err != nil {
			return q.engineErr("keep the deletion of "+name, err)
		}
		return nil
	}
	return fmt.Errorf("%w: jetstream: the deletion of %s kept changing as it was written", queue.ErrUnavailable, name)
}

// Deletions returns the deletions kept in the bucket, none if there is no
// bucket yet (master.DeletionKeeper).
func (q *Queues) Deletions() (map[string]queue.Deletion, error) {
	ctx, cancel := context.WithTimeout(q.ctx, q.cfg.RequestTimeout)
	defer cancel()
	out := make(map[string]queue.Deletion)
	kv, err := q.deletionsKV(ctx, false)
	if err != nil || kv == nil {
		return out, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, q.engineErr("read the deletions of queues", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, q.engineErr("read the deletions of queues", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, q.engineErr("read the deletions of queues", errors.New("the watch ended early"))
			}
			if e == nil { // every entry there was is in
				return out, nil
			}
			if name, d, ok := q.readDeletion(e); ok {
				out[name] = d
			}
		}
	}
}

// readDeletion reads a deletion from its entry in the bucket; false if
// the entry is not one (logged).
func (q *Queues) readDeletion(e jetstream.KeyValueEntry) (string, queue.Deletion, bool) {
	var d keptDeletion
	if err := json.Unmarshal(e.Value(), &d); err != nil || d.Queue == "" || token(d.Queue) != e.Key() {
		q.log.Warn("a deletion kept in the bucket is not read", "bucket", deletionsBucket, "key", e.Key(), "err", err)
		return "", queue.Deletion{}, false
	}
	return d.Queue, queue.Deletion{At: d.At, CancelAt: d.CancelAt}, true
}

// WatchDeletions calls learn with each deletion kept in the bucket, those
// kept already and those kept later, until ctx ends, and caughtUp each
// time it has had those kept already (master.DeletionWatcher). A
// deleting gateway's notice reaches only the gateways it can reach at
// that moment; the watch brings the deletion to one that was cut off,
// or started in between, once that one can read the bucket. Without a
// bucket (no queue deleted yet) it looks again every few seconds.
func (q *Queues) WatchDeletions(ctx context.Context, learn func(name string, d queue.Deletion), caughtUp func()) {
	for wait := deletionsLookEvery; ; wait = min(2*wait, deletionsLookAtMost) {
		watched, err := q.watchDeletions(ctx, learn, caughtUp)
		if ctx.Err() != nil {
			return
		}
		if watched {
			wait = deletionsLookEvery
		}
		if err != nil {
			q.log.Debug("the deletions of queues are not watched; trying again", "in", wait, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// How often WatchDeletions looks for the bucket, or watches it again after
// its watch failed: at first, and at most, backing off in between.
const (
	deletionsLookEvery  = 2 * time.Second
	deletionsLookAtMost = 10 * time.Second
)

// watchDeletions is one watch of WatchDeletions, until ctx ends or the
// watch fails; watched says if it began.
func (q *Queues) watchDeletions(ctx context.Context, learn func(name string, d queue.Deletion), caughtUp func()) (watched bool, err error) {
	octx, cancel := context.WithTimeout(ctx, q.cfg.RequestTimeout)
	kv, err := q.deletionsKV(octx, false)
	cancel()
	if err != nil || kv == nil {
		return false, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return false, err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return true, errors.New("the watch ended")
			case e == nil: // every entry there was is in
				caughtUp()
			default:
				if name, d, ok := q.readDeletion(e); ok {
					learn(name, d)
				}
			}
		}
	}
}
