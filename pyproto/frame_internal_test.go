package pyproto

import (
	"bytes"
	"testing"
)

// A frame over 2 GiB is too big to write in a test, so check its header.
func TestAppendHeaderLongForm(t *testing.T) {
	got := appendHeader(nil, 1<<31)
	want := []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0}
	if !bytes.Equal(got, want) {
		t.Fatalf("header of a 1<<31-byte frame = % x, want % x", got, want)
	}
	if got := appendHeader(nil, 1<<31-1); !bytes.Equal(got, []byte{0x7f, 0xff, 0xff, 0xff}) {
		t.Fatalf("header of a MaxInt32-byte frame = % x", got)
	}
}
