package pyproto_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
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

// TestHugeSharedDictKeyCheap: found by fuzzing. Hashing such a tuple as
// a dict key walked every leaf. Now each tuple is keyed once, from its
// elements' keys, so the key is cheap; the dict, a key of 2^60 leaves,
// is too large for msgpack. A hang here fails the test by its timeout.
func TestHugeSharedDictKeyCheap(t *testing.T) {
	data := append([]byte("\x80\x04}"), sharedTupleChain()...)
	data = append(data, "h<K\x01s."...)
	v, err := pyproto.Unpickle(data)
	if err != nil {
		t.Fatalf("Unpickle = %v", err)
	}
	if _, err := pyproto.ToMsgpack(v, 1<<20); !errors.Is(err, pyproto.ErrTooLarge) {
		t.Fatalf("ToMsgpack = %v, want ErrTooLarge", err)
	}
	if _, err := pyproto.DecodeRequest(data); err == nil {
		t.Fatal("DecodeRequest accepted it")
	}
}

// TestSharedKeysKeyedOnce: a key referred to many times (a memo
// reference costs 2 bytes) is keyed once, not once per reference: a
// string of 64 KiB, or a tuple of 128 shared leaves, as the key of 100000
// dicts and the element of as many sets. Keying each reference anew
// copied gigabytes.
func TestSharedKeysKeyedOnce(t *testing.T) {
	const refs = 100000
	tuple := []byte(")\x940")
	for i := range 7 {
		tuple = append(tuple, 'h', byte(i), 'h', byte(i), 0x86, 0x94, '0')
	}
	str := append([]byte("\x8d"), binary.LittleEndian.AppendUint64(nil, 1<<16)...)
	str = append(append(str, bytes.Repeat([]byte("k"), 1<<16)...), 0x94, '0') // memo 0
	for name, key := range map[string][]byte{"str": str, "tuple": tuple} {
		memo := byte(0)
		if name == "tuple" {
			memo = 7
		}
		for _, container := range []string{"dict", "set"} {
			data := append([]byte("\x80\x04"), key...)
			data = append(data, ']', '(')
			for range refs {
				if container == "dict" {
					data = append(data, '}', 'h', memo, 'K', 1, 's')
				} else {
					data = append(data, 0x8f, '(', 'h', memo, 0x90)
				}
			}
			data = append(data, 'e', '.')
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			v, err := pyproto.Unpickle(data)
			runtime.ReadMemStats(&after)
			if l, ok := v.(*pyproto.List); err != nil || !ok || len(l.Items) != refs {
				t.Fatalf("%s in %ss: Unpickle = %v", name, container, err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
				t.Errorf("%s in %ss: %d MiB allocated for a pickle of %d KiB", name, container, alloc>>20, len(data)>>10)
			}
		}
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
