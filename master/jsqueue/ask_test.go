package jsqueue_test

import (
	"context"
	"slices"
	"testing"

	"github.com/qm-dev/qm/master/jsqueue"
)

// Every gateway answering a topic answers a question on it, the asker's
// own included, and a closed gateway no longer does.
func TestGatewaysAnswerEachOther(t *testing.T) {
	n := startNode(t)
	a := newQueues(t, n, jsqueue.Config{})
	b := newQueues(t, n, jsqueue.Config{})
	for _, g := range []struct {
		q    *jsqueue.Queues
		name string
	}{{a, "a"}, {b, "b"}} {
		if err := g.q.Answer("who", func(question []byte) []byte { return append([]byte(g.name+" "), question...) }); err != nil {
			t.Fatal(err)
		}
	}
	ask := func() []string {
		t.Helper()
		answers, err := a.Ask(context.Background(), "who", []byte("?"))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ans := range answers {
			got = append(got, string(ans))
		}
		slices.Sort(got)
		return got
	}
	if got := ask(); !slices.Equal(got, []string{"a ?", "b ?"}) {
		t.Fatalf("answers %q, want both gateways'", got)
	}
	b.Close()
	if got := ask(); !slices.Equal(got, []string{"a ?"}) {
		t.Fatalf("answers %q after b closed, want a's alone", got)
	}
	if _, err := a.Ask(context.Background(), "nobody", nil); err == nil {
		t.Fatal("a question no gateway answers succeeded")
	}
}
