package jsqueue

import (
	"cmp"
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// HandOver moves the leaderships this node holds, of streams and of
// their consumers, to the other nodes of its cluster, and waits until it
// leads none, or ctx ends. A stopping qmaster calls it before its gateway
// hands its tasks back. A consumer's leader keeps what a nak asks for, a
// redelivery now, in memory only: naks sent to a leader that then stops
// are lost, and their tasks wait out the ack wait (30s by default). And
// a stream or consumer whose leader stops unannounced waits for an
// election, several seconds, where a handed-over leadership takes one
// round trip.
//
// The consumers are paused while their leaderships move (quiesce): a
// replicated consumer's leader sends a message only once a majority of
// its replicas has recorded the delivery, and one that steps down in
// between drops the message, which the new leader counts as delivered
// and sends again only after the ack wait. Found by rolling restarts,
// where it held a map's ordered output up for 17-30 s in every run.
func (n *Node) HandOver(ctx context.Context) error {
	if n.peers <= 1 {
		return nil // no other node to hand over to
	}
	resume := n.quiesce(ctx)
	defer resume()
	const askAgain = time.Second // a stepdown that did not take
	var asked time.Time
	for {
		streams, consumers, err := n.led()
		if err != nil {
			return err
		}
		if len(streams)+len(consumers) == 0 {
			return nil
		}
		if time.Since(asked) >= askAgain {
			asked = time.Now()
			for _, l := range streams {
				_ = n.srv.JetStreamStepdownStream(l.account, l.stream) // gone meanwhile: not led
			}
			for _, l := range consumers {
				_ = n.srv.JetStreamStepdownConsumer(l.account, l.stream, l.consumer)
			}
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%d streams and %d consumers still led here: %w", len(streams), len(consumers), ctx.Err())
		case <-t.C:
		}
	}
}

// handOverPause is how long quiesce pauses a consumer for: the pause
// lapses by itself then, should the node fail to resume it.
const handOverPause = 3 * time.Second

// pausedByOperator reports whether the consumer of ci is paused, by a
// pause longer than a hand-over's: gateways do not take the blink of one
// (quiesce) for a queue paused, nor show it.
func pausedByOperator(ci *jetstream.ConsumerInfo) bool {
	pu := ci.Config.PauseUntil
	return ci.Paused && pu != nil && time.Until(*pu) > handOverPause
}

// quiesce pauses the consumers this node leads, those not paused
// already, and waits until they deliver nothing more: each says it is
// paused, and what it sent before has reached a majority of its
// replicas. It returns the function that resumes those it paused, unless
// an operator paused one meanwhile. Nothing it fails to do stops the
// hand-over: a consumer not paused is handed over all the same.
func (n *Node) quiesce(ctx context.Context) (resume func()) {
	_, consumers, err := n.led()
	if err != nil || len(consumers) == 0 {
		return func() {}
	}
	nc, err := n.Connect()
	if err != nil {
		return func() {}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return func() {}
	}
	until := time.Now().Add(handOverPause)
	var (
		mu     sync.Mutex
		paused []leadership
		wg     sync.WaitGroup
	)
	for _, l := range consumers {
		if l.paused {
			continue // an operator's pause: it delivers nothing
		}
		wg.Go(func() {
			if _, err := js.PauseConsumer(ctx, l.stream, l.consumer, until); err == nil {
				mu.Lock()
				paused = append(paused, l)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	n.awaitQuiet(ctx, paused)
	return func() {
		defer nc.Close()
		// While paused, a consumer's new leader delivers nothing either.
		ctx, cancel := context.WithTimeout(context.Background(), resumeTimeout)
		defer cancel()
		pausedUntil := n.pausedUntil() // as this node, a replica of each, has their configs
		var wg sync.WaitGroup
		for _, l := range paused {
			if pu, ok := pausedUntil[l.key()]; !ok || !pu.Equal(until) {
				continue // paused anew (or resumed, or deleted) meanwhile: not ours to resume
			}
			wg.Go(func() { _, _ = js.ResumeConsumer(ctx, l.stream, l.consumer) })
		}
		wg.Wait()
	}
}

// resumeTimeout bounds the resumes of the consumers quiesce paused, which
// JetStream's meta leader answers within milliseconds; a resume lost
// leaves its consumer paused until handOverPause has passed.
const resumeTimeout = time.Second

// pausedUntil returns when each paused consumer this node has a replica
// of resumes, as its config here says.
func (n *Node) pausedUntil() map[leadership]time.Time {
	jsz, err := n.srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return nil
	}
	out := make(map[leadership]time.Time)
	for _, a := range jsz.AccountDetails {
		for _, st := range a.Streams {
			for _, c := range st.Consumer {
				if c != nil && c.Config != nil && c.Config.PauseUntil != nil {
					out[leadership{account: a.Id, stream: st.Name, consumer: c.Name}] = *c.Config.PauseUntil
				}
			}
		}
	}
	return out
}

// quietPoll is how often awaitQuiet looks.
const quietPoll = 10 * time.Millisecond

// awaitQuiet waits until each consumer of ls, that this node still
// leads, says it is paused and a majority of its other replicas have
// every entry it sent, then one look more, for the leader to apply them
// (and send the messages they deliver); or until ctx ends.
func (n *Node) awaitQuiet(ctx context.Context, ls []leadership) {
	if len(ls) == 0 {
		return
	}
	want := make(map[leadership]bool, len(ls))
	for _, l := range ls {
		want[l] = true
	}
	for {
		_, consumers, err := n.led()
		if err != nil {
			return
		}
		quiet := true
		for _, l := range consumers {
			if want[l.key()] && !l.quiet {
				quiet = false
				break
			}
		}
		t := time.NewTimer(quietPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if quiet {
			return
		}
	}
}

// leadership is a stream, or a consumer of one, a node leads.
type leadership struct {
	account, stream, consumer string
	// Of a consumer: paused says it is paused; quiet, paused with a
	// majority of its other replicas caught up.
	paused, quiet bool
}

// key is l without its state, to compare leaderships by.
func (l leadership) key() leadership {
	return leadership{account: l.account, stream: l.stream, consumer: l.consumer}
}

// led returns the streams and the consumers this node leads.
func (n *Node) led() (streams, consumers []leadership, err error) {
	jsz, err := n.srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return nil, nil, fmt.Errorf("list the streams led here: %w", err)
	}
	for _, a := range jsz.AccountDetails {
		for _, st := range a.Streams {
			replicas := 1
			if st.Config != nil {
				replicas = st.Config.Replicas
			}
			if replicas > 1 && n.srv.JetStreamIsStreamLeader(a.Id, st.Name) {
				streams = append(streams, leadership{account: a.Id, stream: st.Name})
			}
			for _, c := range st.Consumer {
				if c == nil || c.Config == nil || cmp.Or(c.Config.Replicas, replicas) <= 1 {
					continue // one replica: no other node to lead it
				}
				if n.srv.JetStreamIsConsumerLeader(a.Id, st.Name, c.Name) {
					consumers = append(consumers, leadership{account: a.Id, stream: st.Name, consumer: c.Name,
						paused: c.Paused, quiet: c.Paused && caughtUp(c.Cluster)})
				}
			}
		}
	}
	return streams, consumers, nil
}

// caughtUp reports whether a majority of the replicas other than the
// leader have every entry the leader has, as its cluster info says.
func caughtUp(ci *server.ClusterInfo) bool {
	if ci == nil {
		return true
	}
	current := 0
	for _, p := range ci.Replicas {
		if p != nil && !p.Offline && p.Lag == 0 {
			current++
		}
	}
	return 2*current >= len(ci.Replicas)
}
