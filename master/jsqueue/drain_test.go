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

// A get given up while JetStream sends it a task leaves no task for
// AckWait (30 s): its inbox is drained, and the task that came to it is
// handed back at once, for the next get (its second attempt: JetStream
// counted the first delivery). The gateway's connection goes through a
// proxy frozen while the get gives up, with the task on its way to it.
func TestGivenUpGetLeavesNoTask(t *testing.T) {
	url := startNodeListening(t)
	px := startFreezer(t, strings.TrimPrefix(url, "nats://"))
	gc, err := nats.Connect("nats://"+px.addr(), nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gc.Close)
	g := newQueues(t, nil, jsqueue.Config{Conn: gc})
	p := newQueues(t, nil, jsqueue.Config{Conn: connectTo(t, url)})
	if ts := get(t, g, "jobs", 1, 1, time.Minute, 10*time.Millisecond); len(ts) != 0 {
		t.Fatalf("took %v from a new queue", payloads(ts))
	}

	for round := range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		gave := make(chan []queue.Task, 1)
		go func() {
			ts, _ := g.Get(ctx, queue.GetRequest{Queue: "jobs", Max: 1, Owner: 1, Lease: time.Minute, MaxWait: 10 * time.Second}, nil)
			gave <- ts
		}()
		waitFor(t, "the get's pull request", func() bool {
			w, _, err := jsqueue.Waiting(p, "jobs")
			return err == nil && w == 1
		})
		px.set(true)
		payload := fmt.Sprint("task-", round)
		put(t, p, "jobs", payload)
		waitFor(t, "the task to be sent", func() bool {
			_, pending, err := jsqueue.Waiting(p, "jobs")
			return err == nil && pending == 1
		})
		cancel() // the client went away
		if ts := <-gave; len(ts) != 0 {
			t.Fatalf("a get given up took %v", payloads(ts))
		}
		px.set(false)
		ts := get(t, g, "jobs", 2, 1, time.Minute, 5*time.Second)
		if len(ts) != 1 || string(ts[0].Payload) != payload || ts[0].Attempts != 2 {
			t.Fatalf("round %d: the next get took %+v; want %s, at its second attempt", round, ts, payload)
		}
		if _, err := g.Ack(queue.AckRequest{Queue: "jobs", Owner: 2, IDs: []uint64{ts[0].ID}}, nil); err != nil {
			t.Fatal(err)
		}
	}
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
