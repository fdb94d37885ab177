package jsqueue

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// readyFor is how long one answer of Ready stands: /readyz may be polled
// by every load balancer in front of every gateway, and each probe is a
// request to JetStream's meta leader.
const readyFor = time.Second

// readiness is what Ready last found, and when.
type readiness struct {
	mu  sync.Mutex // held across a probe, so that callers share it
	at  time.Time
	err error
}

// Ready reports why the gateway cannot serve now, or nil: puts of tasks
// are refused (Config.Writable), or JetStream does not answer within a
// second. In a cluster JetStream answers only while it has a leader of
// its meta layer, which needs a majority of its nodes: with the quorum
// lost every put and get would wait and fail, so a load balancer
// checking /readyz should send clients elsewhere. The answer is kept for
// a second.
func (q *Queues) Ready() error {
	if err := q.Writable(); err != nil {
		return err
	}
	r := &q.readiness
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < readyFor {
		return r.err
	}
	ctx, cancel := context.WithTimeout(q.ctx, readyFor)
	defer cancel()
	r.err = nil
	if _, err := q.js.AccountInfo(ctx); err != nil {
		r.err = fmt.Errorf("JetStream does not answer (in a cluster a majority of the nodes must be up): %w", err)
	}
	r.at = time.Now()
	return r.err
}
