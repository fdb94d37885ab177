package main

import (
	"context"
	"slices"
	"strings"
	"testing"
)

func TestReadLinesDropsByteOrderMark(t *testing.T) {
	// A BOM is dropped from the first line only: later, U+FEFF is data.
	in := "\ufeff1\r\n\n\ufeff2\n3"
	lr := readLines(context.Background(), strings.NewReader(in), 100, 1<<20)
	var got []inputLine
	for b := range lr.batches {
		got = append(got, b...)
	}
	if lr.err != nil {
		t.Fatal(lr.err)
	}
	want := []inputLine{{1, "1"}, {3, "\ufeff2"}, {4, "3"}}
	if !slices.Equal(got, want) {
		t.Fatalf("lines = %+v, want %+v", got, want)
	}
}
