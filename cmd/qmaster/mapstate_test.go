package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/jsonval"
	"github.com/qm-dev/qm/wire"
)

// encoder returns a function that encodes a value as a result carries it.
// It may be called from any goroutine: it reports a failure with
// t.Error, not t.Fatal.
func encoder(t *testing.T) func(any) []byte {
	return func(v any) []byte {
		b, err := wire.Encode(v)
		if err != nil {
			t.Error(err)
		}
		return b
	}
}

// asReceived is rs as the collector hands them over.
func asReceived(rs ...wire.Result) []received {
	out := make([]received, len(rs))
	for i, r := range rs {
		out[i] = received{Result: r, item: &wire.Task{ID: uint64(i + 1)}, ok: true}
	}
	return out
}

// TestMapStateOrder drives the collation loop by hand: results that come
// before the reply to their put, out of order, foreign and failed.
func TestMapStateOrder(t *testing.T) {
	f, out, errOut := testFactory("")
	st := newMapState(&mapOptions{IO: f})
	value := encoder(t)
	batches := make(chan submitted)
	results := make(chan []received)
	produced := make(chan struct{})
	errs := make(chan error)
	go func() {
		// Every result beats the reply to its put.
		results <- asReceived(wire.Result{TaskID: 11, Value: value("b")}, wire.Result{TaskID: 10, Value: value("a")}, wire.Result{TaskID: 99, Value: value("x")})
		batches <- submitted{ids: []uint64{10, 11}, inputs: []inputLine{{1, "a"}, {2, "b"}}}
		results <- asReceived(wire.Result{TaskID: 13, Value: value(4)})
		results <- asReceived(wire.Result{TaskID: 12, Attempt: 3, Error: "failed after 3 attempts: boom"}, wire.Result{TaskID: 98})
		batches <- submitted{ids: []uint64{12, 13}, inputs: []inputLine{{4, "c"}, {5, "d"}}}
		close(produced)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.loop(ctx, batches, results, produced, errs); err != nil {
		t.Fatalf("loop: %v (printed %q)", err, out)
	}
	if err := st.out.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "\"a\"\n\"b\"\nnull\n4\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out, want)
	}
	if want := "qmaster map: task 12 (input line 4: c) failed after 3 attempts: boom\n"; errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut, want)
	}
	if st.failed != 1 || st.ignored != 0 || len(st.foreign) != 2 {
		t.Errorf("failed %d, ignored %d, foreign %d; want 1, 0 and 2", st.failed, st.ignored, len(st.foreign))
	}
}

// encodeLines writes each line's value as wire.Encode does.
func TestEncodeLinesAsEncode(t *testing.T) {
	var batch []inputLine
	for i, text := range []string{"1", "-1", "9223372036854775807", "-9223372036854775808", "1.5", "word",
		strings.Repeat("x", 40), strings.Repeat("y", 300), strings.Repeat("z", 70000), "[1,\"a\"]", `{"k":null}`, "true", "null", `"q"`} {
		batch = append(batch, inputLine{N: i + 1, Text: text})
	}
	raw, err := encodeLines(batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range batch {
		want, err := wire.Encode(jsonval.Parse(l.Text))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw[i], want) {
			t.Errorf("line %q encoded as %x, wire.Encode gives %x", shorten(l.Text, 20), raw[i], want)
		}
	}
}

// TestLineRing pushes and pops across the ring's wrap and its growth, and
// checks that every line comes out once, in order.
func TestLineRing(t *testing.T) {
	var r lineRing
	pushed, popped := 0, 0
	for round := range 50 {
		for range round * 7 % 150 {
			pushed++
			r.push(pendingLine{in: inputLine{N: pushed}})
		}
		if r.len() != pushed-popped {
			t.Fatalf("len %d, want %d", r.len(), pushed-popped)
		}
		for i := range r.len() {
			if n := r.at(i).in.N; n != popped+i+1 {
				t.Fatalf("at(%d) is line %d, want %d", i, n, popped+i+1)
			}
		}
		for range (round * 5 % 120) % (r.len() + 1) {
			popped++
			if p := r.popFront(); p.in.N != popped {
				t.Fatalf("popped line %d, want %d", p.in.N, popped)
			}
		}
	}
	for r.len() > 0 {
		popped++
		if p := r.popFront(); p.in.N != popped {
			t.Fatalf("popped line %d, want %d", p.in.N, popped)
		}
	}
	if popped != pushed {
		t.Fatalf("popped %d of %d", popped, pushed)
	}
	for _, p := range r.buf {
		if p.in.N != 0 {
			t.Fatalf("ring still holds line %d after it was popped", p.in.N)
		}
	}
}

// TestMapStateDuplicates sends a second result for a task, before and
// after its line is printed, and a put whose IDs are not in order: each
// line is printed once, with its first result.
func TestMapStateDuplicates(t *testing.T) {
	f, out, _ := testFactory("")
	st := newMapState(&mapOptions{IO: f})
	value := encoder(t)
	batches := make(chan submitted)
	results := make(chan []received)
	produced := make(chan struct{})
	go func() {
		batches <- submitted{ids: []uint64{7, 8}, inputs: []inputLine{{1, "a"}, {2, "b"}}}
		results <- asReceived(wire.Result{TaskID: 8, Value: value("b")}, wire.Result{TaskID: 8, Value: value("b again")})
		results <- asReceived(wire.Result{TaskID: 7, Value: value("a")}, wire.Result{TaskID: 7, Value: value("a again")})
		batches <- submitted{ids: []uint64{4, 3}, inputs: []inputLine{{3, "c"}, {4, "d"}}}
		results <- asReceived(wire.Result{TaskID: 3, Value: value("d")}, wire.Result{TaskID: 4, Value: value("c")}, wire.Result{TaskID: 8, Value: value("late")})
		close(produced)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := st.loop(ctx, batches, results, produced, make(chan error)); err != nil {
		t.Fatalf("loop: %v (printed %q)", err, out)
	}
	if err := st.out.Flush(); err != nil {
		t.Fatal(err)
	}
	if want := "\"a\"\n\"b\"\n\"c\"\n\"d\"\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out, want)
	}
	if st.ignored != 3 {
		t.Errorf("ignored %d, want 3", st.ignored)
	}
}
