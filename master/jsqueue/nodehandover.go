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
// lapses by itself then, should the node fail to end it sooner.
const handOverPause = 3 * time.Second

// operatorPause is the shortest pause gateways take for an operator's
// (qm pauses a queue for a hundred years): shorter ones are hand-overs'.
const operatorPause = time.Hour

// pausedByOperator reports whether the consumer of ci is paused by an
// operator: gateways do not take the blink of a hand-over's pause
// (quiesce) for a queue paused, nor show it.
func pausedByOperator(ci *jetstream.ConsumerInfo) bool {
	pu := ci.Config.PauseUntil
	return ci.Paused && pu != nil && time.Until(*pu) > operatorPause
}

// quiesce pauses the consumers this node leads, but those an operator
// paused, and waits until they deliver nothing more (awaitQuiet). It
// returns the function that ends those pauses, unless their pause
// changed meanwhile (an operator's; read from this node's replica of
// their configs, which may lag: an operator's pause made in those
// milliseconds can be lost). Nothing it fails to do stops the hand-over:
// a consumer not paused is handed over all the same.
//
// A pause is ended by a pause until a moment later (resumeAfter), not by
// JetStream's resume: the consumer's leader wakes its waiting pull
// requests when a pause runs out, and a resume wakes none, leaving them
// until a message is put or their request expires.
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
		if time.Until(l.pausedUntil) > operatorPause {
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
	quietCtx, cancel := context.WithTimeout(ctx, quietFor)
	n.awaitQuiet(quietCtx, paused, until)
	cancel()
	return func() {
		defer nc.Close()
		// While paused, a consumer's new leader delivers nothing either.
		ctx, cancel := context.WithTimeout(context.Background(), resumeTimeout)
		defer cancel()
		pausedUntil := n.pausedUntil()
		var wg sync.WaitGroup
		for _, l := range paused {
			if pu, ok := pausedUntil[l.key()]; !ok || !pu.Equal(until) {
				continue // paused anew (or resumed, or deleted) meanwhile: not ours to end
			}
			wg.Go(func() { _, _ = js.PauseConsumer(ctx, l.stream, l.consumer, time.Now().Add(resumeAfter)) })
		}
		wg.Wait()
	}
}

// resumeAfter is how soon after the hand-over its pauses run out: long
// enough that the consumer's new leader has the new pause before it runs
// out (its meta leader takes milliseconds), else it would not wake the
// pull requests waiting.
const resumeAfter = 250 * time.Millisecond

// resumeTimeout bounds the ends of the pauses quiesce made; one that
// fails leaves its consumer paused until handOverPause has passed.
const resumeTimeout = time.Second

// quietFor bounds how long quiesce waits for the consumers to be quiet:
// the hand-over goes on then, as it did before it paused them.
const quietFor = time.Second

// pausedUntil returns when each paused consumer this node has a replica
// of resumes, as its config here says.
func (n *Node) pausedUntil() map[leadership]time.Time {
	_, consumers, err := n.replicas()
	if err != nil {
		return nil
	}
	out := make(map[leadership]time.Time)
	for _, c := range consumers {
		if !c.pauseUntil.IsZero() {
			out[c.key()] = c.pauseUntil
		}
	}
	return out
}

// quietPoll is how often awaitQuiet looks.
const quietPoll = 10 * time.Millisecond

// awaitQuiet waits until each consumer of ls that this node still leads
// delivers nothing more: it is paused until until, here (JetStream
// answers the pause before the consumer's leader has it), and its raft
// group has committed and applied every entry it proposed, deliveries
// among them, whose messages are sent as they are applied. Two looks in
// a row must find them so, as a consumer hands its proposals to its
// group a moment after making them. One paused until another time was
// paused anew by an operator: it delivers nothing either. It returns
// then, or when ctx ends.
func (n *Node) awaitQuiet(ctx context.Context, ls []leadership, until time.Time) {
	if len(ls) == 0 {
		return
	}
	want := make(map[leadership]bool, len(ls))
	for _, l := range ls {
		want[l.key()] = true
	}
	quietLooks := 0
	for {
		_, consumers, err := n.led()
		if err != nil {
			return
		}
		quiet := true
		for _, l := range consumers {
			if !want[l.key()] {
				continue
			}
			operatorsPause := !l.pausedUntil.IsZero() && !l.pausedUntil.Equal(until)
			if !operatorsPause && (l.pausedUntil.IsZero() || !n.applied(l)) {
				quiet = false
				break
			}
		}
		if quiet {
			quietLooks++
		} else {
			quietLooks = 0
		}
		if quietLooks >= 2 {
			return
		}
		t := time.NewTimer(quietPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// applied reports whether the raft group of consumer l has committed and
// applied every entry proposed to it here, its leader.
func (n *Node) applied(l leadership) bool {
	if l.group == "" {
		return true
	}
	rz := n.srv.Raftz(&server.RaftzOptions{AccountFilter: l.account, GroupFilter: l.group})
	if rz == nil {
		return true
	}
	g, ok := (*rz)[l.account][l.group]
	if !ok {
		return true // gone
	}
	return g.IPQPropLen == 0 && g.PIndex == g.Committed && g.Applied >= g.Committed
}

// leadership is a stream, or a consumer of one, a node leads.
type leadership struct {
	account, stream, consumer string
	// Of a consumer: its raft group, and until when it is paused, as its
	// config here says (zero: it is not).
	group       string
	pausedUntil time.Time
}

// key is l without its state, to compare leaderships by.
func (l leadership) key() leadership {
	return leadership{account: l.account, stream: l.stream, consumer: l.consumer}
}

// led returns the streams and the consumers this node leads, of those
// with more than one replica (no other node could lead the others).
func (n *Node) led() (streams, consumers []leadership, err error) {
	allStreams, allConsumers, err := n.replicas()
	if err != nil {
		return nil, nil, fmt.Errorf("list the streams led here: %w", err)
	}
	for _, st := range allStreams {
		if st.replicas > 1 && st.leader {
			streams = append(streams, st.leadership)
		}
	}
	for _, c := range allConsumers {
		if c.replicas > 1 && c.leader {
			l := c.leadership
			if c.paused {
				l.pausedUntil = c.pauseUntil
			}
			consumers = append(consumers, l)
		}
	}
	return streams, consumers, nil
}

// replica is a stream, or a consumer of one, this node has a replica of.
type replica struct {
	leadership // pausedUntil unset
	replicas   int
	leader     bool
	// Of a consumer: whether it is paused, and its config's PauseUntil
	// (zero: none), which a pause that ran out leaves in place.
	paused     bool
	pauseUntil time.Time
}

// replicas returns the streams and the consumers this node has a replica
// of, as its replicas of their configs say.
func (n *Node) replicas() (streams, consumers []replica, err error) {
	jsz, err := n.srv.Jsz(&server.JSzOptions{Accounts: true, Streams: true, Consumer: true, Config: true})
	if err != nil {
		return nil, nil, err
	}
	for _, a := range jsz.AccountDetails {
		for _, st := range a.Streams {
			streamReplicas := 1
			if st.Config != nil {
				streamReplicas = st.Config.Replicas
			}
			streams = append(streams, replica{
				leadership: leadership{account: a.Id, stream: st.Name},
				replicas:   streamReplicas,
				leader:     n.srv.JetStreamIsStreamLeader(a.Id, st.Name),
			})
			for _, c := range st.Consumer {
				if c == nil || c.Config == nil {
					continue
				}
				r := replica{
					leadership: leadership{account: a.Id, stream: st.Name, consumer: c.Name},
					replicas:   cmp.Or(c.Config.Replicas, streamReplicas),
					leader:     n.srv.JetStreamIsConsumerLeader(a.Id, st.Name, c.Name),
					paused:     c.Paused,
				}
				if c.Cluster != nil {
					r.group = c.Cluster.RaftGroup
				}
				if c.Config.PauseUntil != nil {
					r.pauseUntil = *c.Config.PauseUntil
				}
				consumers = append(consumers, r)
			}
		}
	}
	return streams, consumers, nil
}
