package auth_test

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
)

// TestRefuse: a refusal in place of the challenge gives the client
// ErrRefused with the master's reason, its control bytes neutralised.
func TestRefuse(t *testing.T) {
	server, client := net.Pipe()
	defer server.Close()
	defer client.Close()
	go func() { _ = auth.Refuse(server, "too busy\x1b[2J; try later") }()
	err := auth.Client(client, []byte("key"), time.Second)
	if !errors.Is(err, auth.ErrRefused) || !strings.Contains(err.Error(), "too busy?[2J; try later") {
		t.Fatalf("Client after a refusal: %v, want ErrRefused with the reason", err)
	}
}
