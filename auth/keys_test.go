package auth_test

import (
	"errors"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
)

// TestServerKeys: a client proving any one of the keys is welcomed, and
// ServerKeys names which; a key not among them fails after BeforeFailure
// ran.
func TestServerKeys(t *testing.T) {
	keys := [][]byte{[]byte("ingest-secret"), []byte("worker-secret"), []byte("a much longer ops secret, past the block size of sha256 so that hmac hashes it first")}
	for want, key := range keys {
		srv, cli := tcpPair(t)
		res := make(chan int, 1)
		done := async(func() error {
			i, err := auth.ServerKeys(srv, auth.ServerConfig{Keys: keys, Timeout: 2 * time.Second})
			res <- i
			return err
		})
		if err := auth.Client(cli, key, 2*time.Second); err != nil {
			t.Fatalf("key %d: client: %v", want, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("key %d: server: %v", want, err)
		}
		if got := <-res; got != want {
			t.Errorf("ServerKeys named key %d, want %d", got, want)
		}
	}

	srv, cli := tcpPair(t)
	called := make(chan struct{}, 1)
	done := async(func() error {
		_, err := auth.ServerKeys(srv, auth.ServerConfig{Keys: keys, Timeout: 2 * time.Second,
			BeforeFailure: func() { called <- struct{}{} }})
		return err
	})
	if err := auth.Client(cli, []byte("guess"), 2*time.Second); !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("client with a wrong key: %v, want ErrAuthFailed", err)
	}
	if err := <-done; !errors.Is(err, auth.ErrAuthFailed) {
		t.Fatalf("server: %v, want ErrAuthFailed", err)
	}
	select {
	case <-called:
	default:
		t.Error("BeforeFailure was not called")
	}
}

// TestServerKeysEmpty: no keys, or an empty one, is refused before any
// exchange.
func TestServerKeysEmpty(t *testing.T) {
	srv, _ := tcpPair(t)
	for _, keys := range [][][]byte{nil, {[]byte("a"), nil}} {
		if _, err := auth.ServerKeys(srv, auth.ServerConfig{Keys: keys}); !errors.Is(err, auth.ErrEmptyKey) {
			t.Errorf("ServerKeys(%q): %v, want ErrEmptyKey", keys, err)
		}
	}
}
