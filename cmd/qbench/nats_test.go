package main

import (
	"bytes"
	"testing"
)

// A pack of the packed JetStream runs splits into the payloads packed,
// and a malformed one is refused rather than read out of bounds.
func TestPack(t *testing.T) {
	payloads := [][]byte{[]byte("a"), {}, bytes.Repeat([]byte{'x'}, 300)}
	var pack []byte
	for _, p := range payloads {
		pack = appendPacked(pack, p)
	}
	got, err := unpackPayloads(pack)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(payloads) {
		t.Fatalf("%d payloads, want %d", len(got), len(payloads))
	}
	for i := range got {
		if !bytes.Equal(got[i], payloads[i]) {
			t.Errorf("payload %d is %q, want %q", i, got[i], payloads[i])
		}
	}
	for _, bad := range [][]byte{nil, {5, 'a'}, {0x80}, pack[:len(pack)-1]} {
		if _, err := unpackPayloads(bad); err == nil {
			t.Errorf("unpackPayloads(%v) = nil error", bad)
		}
	}
}
