package jsqueue_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master/jsqueue"
)

// Every gateway answering a topic answers a question on it, the asker's
// own included; one named by its ID answers alone; a gateway that
// answered before is waited for when it is slow; a closed gateway no
// longer answers.
func TestGatewaysAnswerEachOther(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{})
	b := newQueues(t, n, jsqueue.Config{})
	var bSlow atomic.Bool
	bSlow.Store(true) // from the first ask: a knows b from its hello
	for _, g := range []struct {
		q    *jsqueue.Queues
		name string
	}{{a, "a"}, {b, "b"}} {
		if err := g.q.Answer("who", func(question []byte) []byte {
			if g.name == "b" && bSlow.Load() {
				time.Sleep(300 * time.Millisecond) // beyond the quiet wait for gateways not seen before
			}
			return append([]byte(g.name+" "), question...)
		}); err != nil {
			t.Fatal(err)
		}
	}
	ask := func() []string {
		t.Helper()
		var got []string
		err := a.Ask(context.Background(), "who", []byte("?"), func(gateway string, answer []byte) {
			got = append(got, string(answer))
			if want := map[string]string{"a ?": a.GatewayID(), "b ?": b.GatewayID()}[string(answer)]; gateway != want {
				t.Errorf("answer %q from gateway %q, want %q", answer, gateway, want)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		return got
	}
	// b answers later than the quiet wait for gateways not heard from,
	// and has never answered a: its hello makes a wait for it all the
	// same (once a has heard it, which a moment after both start).
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := ask(); !slices.Equal(got, []string{"a ?", "b ?"}) {
			return fmt.Errorf("answers %q with b slow, want both gateways'", got)
		}
		return nil
	})
	if got := ask(); !slices.Equal(got, []string{"a ?", "b ?"}) {
		t.Fatalf("answers %q with b slow, want both gateways'", got)
	}
	bSlow.Store(false)
	if got, err := a.AskGateway(context.Background(), "who", b.GatewayID(), []byte("!")); err != nil || string(got) != "b !" {
		t.Fatalf("b alone answered %q, %v", got, err)
	}
	b.Close()
	if got := ask(); !slices.Equal(got, []string{"a ?"}) {
		t.Fatalf("answers %q after b closed, want a's alone", got)
	}
	if err := a.Ask(context.Background(), "nobody", nil, func(string, []byte) {}); err == nil {
		t.Fatal("a question no gateway answers succeeded")
	}
}
