package jsqueue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qm-dev/qm/master/jsqueue"
	"github.com/qm-dev/qm/master/queue"
)

// A get woken because a task was held for it, while JetStream was sending
// it a pack, leaves that pack for no AckWait (30 s): its inbox is
// drained, and the pack that came to it is handed back at once, for the
// next get. The gateway's connection goes through a proxy frozen while
// the get is woken, with the pack on its way to it.
func TestWokenGetLeavesNoTask(t *testing.T) {
	px, g, p := gatewayThroughFreezer(t, jsqueue.Config{Pack: 4, HoldFor: time.Minute})

	// Two tasks leased through g, none held: the get below waits at
	// JetStream.
	put(t, p, "jobs", "a", "b")
	leased := get(t, g, "jobs", 1, 2, time.Minute, time.Second)
	if len(leased) != 2 {
		t.Fatalf("took %v, want a and b", payloads(leased))
	}
	type result struct {
		ts  []queue.Task
		err error
	}
	gave := make(chan result, 1)
	go func() {
		ts, err := g.Get(context.Background(), queue.GetRequest{Queue: "jobs", Max: 1, Owner: 2, Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
		gave <- result{ts, err}
	}()
	waitFor(t, "the get's pull request", func() bool {
		w, _, err := jsqueue.Waiting(p, "jobs")
		return err == nil && w == 1
	})
	px.set(true)
	put(t, p, "jobs", "c", "d") // one pack, sent to the waiting get
	waitFor(t, "the pack to be sent", func() bool {
		_, pending, err := jsqueue.Waiting(p, "jobs")
		return err == nil && pending == 2 // a and b's pack, and c and d's
	})
	// A failed attempt puts a back among the held tasks: the waiting get
	// is woken to take it, and gives up its pull request.
	if err := g.Nack(queue.NackRequest{Queue: "jobs", Owner: 1, ID: leased[0].ID, Error: "again"}); err != nil {
		t.Fatal(err)
	}
	r := <-gave
	if r.err != nil || len(r.ts) != 1 || string(r.ts[0].Payload) != "a" {
		t.Fatalf("the woken get took %+v, %v; want a", r.ts, r.err)
	}
	px.set(false)
	ts := get(t, g, "jobs", 3, 2, time.Minute, 5*time.Second)
	if got := strings.Join(payloads(ts), ","); got != "c,d" {
		t.Fatalf("the next get took %q within 5s, want c,d", got)
	}
}

// A get given up because its client went away, while JetStream was
// sending it a pack, leaves that pack for no AckWait either: a worker
// stopped while it waits costs the next worker nothing.
func TestAbandonedGetLeavesNoTask(t *testing.T) {
	px, g, p := gatewayThroughFreezer(t, jsqueue.Config{Pack: 4})

	ctx, goAway := context.WithCancel(context.Background())
	gave := make(chan error, 1)
	go func() {
		ts, err := g.Get(ctx, queue.GetRequest{Queue: "jobs", Max: 1, Owner: 1, Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
		if len(ts) > 0 {
			err = fmt.Errorf("took %v after its client went away", payloads(ts))
		}
		gave <- err
	}()
	waitFor(t, "the get's pull request", func() bool {
		w, _, err := jsqueue.Waiting(p, "jobs")
		return err == nil && w == 1
	})
	px.set(true)
	put(t, p, "jobs", "a", "b") // one pack, sent to the waiting get
	waitFor(t, "the pack to be sent", func() bool {
		_, pending, err := jsqueue.Waiting(p, "jobs")
		return err == nil && pending == 1
	})
	goAway()
	if err := <-gave; err != nil {
		t.Fatal(err)
	}
	px.set(false)
	ts := get(t, g, "jobs", 2, 2, time.Minute, 5*time.Second)
	if got := strings.Join(payloads(ts), ","); got != "a,b" {
		t.Fatalf("the next get took %q within 5s, want a,b", got)
	}
}

// gatewayThroughFreezer starts a node and two gateways on it with cfg:
// g, whose connection goes through the freezing proxy px, and p, the
// producer, connected directly.
func gatewayThroughFreezer(t *testing.T, cfg jsqueue.Config) (px *freezer, g, p *jsqueue.Queues) {
	t.Helper()
	url := startNodeListening(t)
	px = startFreezer(t, strings.TrimPrefix(url, "nats://"))
	gcfg := cfg
	gcfg.Conn = connectTo(t, "nats://"+px.addr())
	g = newQueues(t, nil, gcfg)
	reaping(t, g)
	pcfg := jsqueue.Config{Conn: connectTo(t, url), Pack: cfg.Pack}
	return px, g, newQueues(t, nil, pcfg)
}

func connectTo(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// waitFor polls ok for up to 5 s.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
