package auth

import (
	"crypto/sha256"
	"hash"
	"testing"
)

// TestMatchKeyConstantWork: matchKey signs with every key and compares
// every MAC, the same number of times whichever key matches, or none; so
// its cost tells nothing of the answer but the number of keys.
func TestMatchKeyConstantWork(t *testing.T) {
	keys := [][]byte{[]byte("k0"), []byte("k1"), []byte("k2"), []byte("k3")}
	challenge := []byte("{sha256}challenge bytes")
	answers := map[string]int{"none": -1}
	for i, k := range keys {
		answers[string(k)] = i
	}
	bytesHashed := -1
	for name, want := range answers {
		got := []byte("wrong answer of the right len..!")
		if want >= 0 {
			got = sign(sha256.New, keys[want], challenge)
		}
		var hashes, written int
		counting := func() hash.Hash {
			hashes++
			return &countingHash{Hash: sha256.New(), n: &written}
		}
		if which := matchKey(counting, keys, challenge, got); which != want {
			t.Fatalf("%s: matchKey = %d, want %d", name, which, want)
		}
		// hmac.New makes two hashes per key (inner and outer).
		if hashes != 2*len(keys) {
			t.Errorf("%s: %d hashes made, want %d", name, hashes, 2*len(keys))
		}
		if bytesHashed >= 0 && written != bytesHashed {
			t.Errorf("%s: %d bytes hashed, another answer %d", name, written, bytesHashed)
		}
		bytesHashed = written
	}
}

type countingHash struct {
	hash.Hash
	n *int
}

func (h *countingHash) Write(p []byte) (int, error) { *h.n += len(p); return h.Hash.Write(p) }

// BenchmarkMatchKey shows the cost per key position: the sub-benchmarks
// should agree within noise.
func BenchmarkMatchKey(b *testing.B) {
	keys := make([][]byte, 16)
	for i := range keys {
		keys[i] = []byte{byte('a' + i), 'k', 'e', 'y'}
	}
	challenge := []byte("{sha256}challenge bytes")
	for _, c := range []struct {
		name string
		got  []byte
	}{
		{"first", sign(sha256.New, keys[0], challenge)},
		{"last", sign(sha256.New, keys[15], challenge)},
		{"none", make([]byte, sha256.Size)},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				matchKey(sha256.New, keys, challenge, c.got)
			}
		})
	}
}
