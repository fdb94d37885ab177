package pyproto_test

import (
	"errors"
	"testing"

	"github.com/qm-dev/qm/pyproto"
)

// sharedTupleChain is a pickle fragment that builds t0 = () and
// t(i+1) = (t(i), t(i)) through memo references, 60 times: a few hundred
// bytes that describe 2^60 leaves. It leaves nothing on the stack; t60 is
// memo entry 60 (BINGET '<').
func sharedTupleChain() []byte {
	b := []byte(")\x940")
	for i := range 60 {
		b = append(b, 'h', byte(i), 'h', byte(i), 0x86, 0x94, '0')
	}
	return b
}

// TestHugeSharedDictKeyRefused: found by fuzzing. Hashing such a tuple as
// a dict key walked every leaf; now it is refused once the key passes a
// size bound. A hang here fails the test by its timeout.
func TestHugeSharedDictKeyRefused(t *testing.T) {
	data := append([]byte("\x80\x04}"), sharedTupleChain()...)
	data = append(data, "h<K\x01s."...)
	if _, err := pyproto.Unpickle(data); !errors.Is(err, pyproto.ErrTooLarge) {
		t.Fatalf("Unpickle = %v, want ErrTooLarge", err)
	}
	if _, err := pyproto.DecodeRequest(data); err == nil {
		t.Fatal("DecodeRequest accepted it")
	}
}

// TestSharedEmptyListsBounded: found by fuzzing. 2^60 empty lists shared
// by reference wrote only array headers, which the size bound did not
// look at, so ToMsgpack walked every one.
func TestSharedEmptyListsBounded(t *testing.T) {
	data := []byte("\x80\x04]\x94")
	for i := range 60 {
		data = append(data, '0', ']', '(', 'h', byte(i), 'h', byte(i), 'e', 0x94)
	}
	data = append(data, '.')
	v, err := pyproto.Unpickle(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pyproto.ToMsgpack(v, 1<<16); !errors.Is(err, pyproto.ErrTooLarge) {
		t.Fatalf("ToMsgpack = %v, want ErrTooLarge", err)
	}
}
