package auth_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/pyproto"
)

const testTimeout = 5 * time.Second

var testKey = []byte("qm-test-key")

// tcpPair returns the two ends of a loopback TCP connection, closed at cleanup.
func tcpPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	client, err = net.DialTimeout("tcp", ln.Addr().String(), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = server.Close() })
	return server, client
}

// async runs f in a goroutine and returns its result on a buffered channel.
// f must use a conn from tcpPair, whose cleanup ends f if the test does not
// wait for it.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// peer plays a scripted side of the handshake on the test goroutine.
type peer struct {
	t    *testing.T
	conn net.Conn
}

func (p peer) send(msg []byte) {
	p.t.Helper()
	if err := pyproto.WriteMessage(p.conn, msg); err != nil {
		p.t.Fatal(err)
	}
}

func (p peer) recv() []byte {
	p.t.Helper()
	if err := p.conn.SetReadDeadline(time.Now().Add(testTimeout)); err != nil {
		p.t.Fatal(err)
	}
	msg, err := pyproto.ReadMessage(p.conn, 1024)
	if err != nil {
		p.t.Fatal(err)
	}
	return msg
}

// recvChallenge reads a challenge and returns it without its #CHALLENGE# tag.
func (p peer) recvChallenge() []byte {
	p.t.Helper()
	msg := p.recv()
	challenge, ok := bytes.CutPrefix(msg, []byte("#CHALLENGE#"))
	if !ok {
		p.t.Fatalf("got %q, want a #CHALLENGE#", msg)
	}
	return challenge
}

func (p peer) expect(want string) {
	p.t.Helper()
	if got := p.recv(); string(got) != want {
		p.t.Fatalf("got %q, want %q", got, want)
	}
}

func hmacMD5(key, msg []byte) []byte {
	m := hmac.New(md5.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// sha256Response is what a Python >= 3.12 peer answers to a {sha256} challenge.
func sha256Response(key, challenge []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(challenge)
	return append([]byte("{sha256}"), m.Sum(nil)...)
}

// nonce returns n bytes that stand in for a peer's random challenge.
func nonce(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func tag(challenge []byte) []byte {
	return append([]byte("#CHALLENGE#"), challenge...)
}

func TestHandshake(t *testing.T) {
	tests := []struct {
		name                     string
		clientKey                []byte
		wantErr                  error
		wantServerMsg, wantClMsg string
	}{
		{name: "same key", clientKey: testKey},
		{
			name:          "wrong key",
			clientKey:     []byte("not-the-key"),
			wantErr:       auth.ErrAuthFailed,
			wantServerMsg: "authentication failed: client failed to prove it knows the authkey",
			wantClMsg:     "authentication failed: master rejected the authkey",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := tcpPair(t)
			done := async(func() error { return auth.Server(s, testKey, testTimeout) })
			clientErr := auth.Client(c, tt.clientKey, testTimeout)
			serverErr := <-done
			if !errors.Is(serverErr, tt.wantErr) || !errors.Is(clientErr, tt.wantErr) {
				t.Fatalf("Server: %v, Client: %v; want %v", serverErr, clientErr, tt.wantErr)
			}
			if tt.wantErr != nil {
				if serverErr.Error() != tt.wantServerMsg || clientErr.Error() != tt.wantClMsg {
					t.Fatalf("Server: %q, Client: %q; want %q, %q", serverErr, clientErr, tt.wantServerMsg, tt.wantClMsg)
				}
				for _, err := range []error{serverErr, clientErr} {
					if strings.Contains(err.Error(), string(testKey)) || strings.Contains(err.Error(), string(tt.clientKey)) {
						t.Fatalf("error %q shows the key", err)
					}
				}
				return
			}
			// Both sides must have consumed exactly the handshake.
			if err := pyproto.WriteMessage(c, []byte("ping")); err != nil {
				t.Fatal(err)
			}
			peer{t, s}.expect("ping")
		})
	}
}

// deadlineConn records the deadlines set on a net.Conn.
type deadlineConn struct {
	net.Conn
	deadlines []time.Time
}

func (c *deadlineConn) SetDeadline(d time.Time) error {
	c.deadlines = append(c.deadlines, d)
	return c.Conn.SetDeadline(d)
}

func TestHandshakeClearsDeadline(t *testing.T) {
	s, c := tcpPair(t)
	ds, dc := &deadlineConn{Conn: s}, &deadlineConn{Conn: c}
	start := time.Now()
	done := async(func() error { return auth.Server(ds, testKey, time.Minute) })
	if err := auth.Client(dc, testKey, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for side, d := range map[string][]time.Time{"Server": ds.deadlines, "Client": dc.deadlines} {
		if len(d) != 2 || d[0].Before(start.Add(time.Minute)) || !d[1].IsZero() {
			t.Errorf("%s set deadlines %v, want one a minute ahead and then none", side, d)
		}
	}
}

func TestServerAcceptsLegacyClient(t *testing.T) {
	s, c := tcpPair(t)
	done := async(func() error { return auth.Server(s, testKey, testTimeout) })

	// A Python <= 3.11 client: it takes all of the challenge after the tag,
	// "{sha256}" included, as the message to sign with HMAC-MD5 ...
	p := peer{t, c}
	challenge := p.recvChallenge()
	if len(challenge) != 48 || !bytes.HasPrefix(challenge, []byte("{sha256}")) {
		t.Fatalf("challenge %q, want {sha256} and 40 bytes", challenge)
	}
	p.send(hmacMD5(testKey, challenge))
	p.expect("#WELCOME#")
	// ... and sends 20 random bytes, expecting a raw HMAC-MD5 back.
	mine := nonce(20)
	p.send(tag(mine))
	if got := p.recv(); !bytes.Equal(got, hmacMD5(testKey, mine)) {
		t.Fatalf("response %x, want raw HMAC-MD5 %x", got, hmacMD5(testKey, mine))
	}
	p.send([]byte("#WELCOME#"))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestServerAnswersClientDigest checks the answer to each digest a Python
// client may name against Python 3.13's _create_response for the key
// qm-test-key and the challenge "{name}" + bytes(range(40)).
func TestServerAnswersClientDigest(t *testing.T) {
	tests := []struct {
		name      string
		challenge []byte
		prefix    string
		mac       string
	}{
		{"legacy", nonce(20), "", "81dabd44b9638549105888c52bed0ab3"},
		{"md5", append([]byte("{md5}"), nonce(40)...), "{md5}", "71d2b85d9dc2968d2ab90551f946a2fe"},
		{"sha256", append([]byte("{sha256}"), nonce(40)...), "{sha256}", "b8662366b12509a3d92f0fa25408902445aac6bc3a9998e27edf31c20c5233c1"},
		{"sha384", append([]byte("{sha384}"), nonce(40)...), "{sha384}", "3ae42dfc29e11472315a46d70127110767af07eb81f6db63ac4e84e1160db4d53dc9da2876a7e9e390590e17f10f73d9"},
		{"sha3_256", append([]byte("{sha3_256}"), nonce(40)...), "{sha3_256}", "413bfb388b6e8c2720b11c55c2ded28f62157625ceec14a1f1e2a5b5a4b538b3"},
		{"sha3_384", append([]byte("{sha3_384}"), nonce(40)...), "{sha3_384}", "924ae01f9599103bf3498ae8333eb23ce0f7409a166d50e4ab7adea1cafcc079d4687664753064d8ecc52937a1a2c56a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := tcpPair(t)
			done := async(func() error { return auth.Server(s, testKey, testTimeout) })
			p := peer{t, c}
			p.send(sha256Response(testKey, p.recvChallenge()))
			p.expect("#WELCOME#")
			p.send(tag(tt.challenge))
			mac, _ := hex.DecodeString(tt.mac)
			if got, want := p.recv(), append([]byte(tt.prefix), mac...); !bytes.Equal(got, want) {
				t.Fatalf("response %q, want %q", got, want)
			}
			p.send([]byte("#WELCOME#"))
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestServerRejectsBadClient(t *testing.T) {
	// welcomed answers the server's challenge and reads its welcome.
	welcomed := func(p peer) {
		p.send(sha256Response(testKey, p.recvChallenge()))
		p.expect("#WELCOME#")
	}
	tests := []struct {
		name   string
		script func(p peer)
		want   error
	}{
		{"response not a digest", func(p peer) {
			p.recvChallenge()
			p.send([]byte("hello"))
			p.expect("#FAILURE#")
		}, auth.ErrBadHandshake},
		{"wrong legacy response", func(p peer) {
			p.recvChallenge()
			p.send(make([]byte, 16))
			p.expect("#FAILURE#")
		}, auth.ErrAuthFailed},
		{"wrong length sha256 response", func(p peer) {
			p.send(sha256Response(testKey, p.recvChallenge())[:39])
			p.expect("#FAILURE#")
		}, auth.ErrAuthFailed},
		{"response signs another challenge", func(p peer) {
			p.recvChallenge()
			p.send(sha256Response(testKey, nonce(48)))
			p.expect("#FAILURE#")
		}, auth.ErrAuthFailed},
		{"oversized response", func(p peer) {
			p.recvChallenge()
			if _, err := p.conn.Write([]byte{0x40, 0, 0, 0}); err != nil {
				p.t.Fatal(err)
			}
		}, pyproto.ErrMessageTooLarge},
		{"hang up after challenge", func(p peer) {
			p.recvChallenge()
			_ = p.conn.Close()
		}, io.EOF},
		{"challenge without tag", func(p peer) {
			welcomed(p)
			p.send(append([]byte("#CHALLENGE"), nonce(40)...))
		}, auth.ErrBadHandshake},
		{"challenge too short", func(p peer) {
			welcomed(p)
			p.send(tag(nonce(19)))
		}, auth.ErrBadHandshake},
		{"challenge without digest prefix", func(p peer) {
			welcomed(p)
			p.send(tag(bytes.Repeat([]byte("x"), 40)))
		}, auth.ErrBadHandshake},
		{"challenge with unknown digest", func(p peer) {
			welcomed(p)
			p.send(tag(append([]byte("{sha1}"), nonce(40)...)))
		}, auth.ErrBadHandshake},
		{"challenge with unclosed digest", func(p peer) {
			welcomed(p)
			p.send(tag(append([]byte("{sha3_256"), nonce(40)...)))
		}, auth.ErrBadHandshake},
		{"client rejects answer", func(p peer) {
			welcomed(p)
			p.send(tag(append([]byte("{sha256}"), nonce(40)...)))
			p.recv()
			p.send([]byte("#FAILURE#"))
		}, auth.ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, c := tcpPair(t)
			done := async(func() error { return auth.Server(s, testKey, testTimeout) })
			tt.script(peer{t, c})
			if err := <-done; !errors.Is(err, tt.want) {
				t.Fatalf("Server: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestClientRejectsImpostorMaster(t *testing.T) {
	s, c := tcpPair(t)
	done := async(func() error { return auth.Client(c, testKey, testTimeout) })

	// A master that does not know the key welcomes any response ...
	m := peer{t, s}
	m.send(tag(append([]byte("{sha256}"), nonce(40)...)))
	m.recv()
	m.send([]byte("#WELCOME#"))
	// ... but cannot answer the client's challenge.
	challenge := m.recvChallenge()
	if len(challenge) != 48 || !bytes.HasPrefix(challenge, []byte("{sha256}")) {
		t.Fatalf("client challenge %q, want {sha256} and 40 bytes", challenge)
	}
	m.send(sha256Response([]byte("guess"), challenge))
	m.expect("#FAILURE#")

	err := <-done
	if !errors.Is(err, auth.ErrAuthFailed) || !strings.Contains(err.Error(), "master failed to prove it knows the authkey") {
		t.Fatalf("Client: %v, want ErrAuthFailed saying the master failed to prove it knows the authkey", err)
	}
}

// TestClientRefusesLegacyMaster plays a Python <= 3.11 master that knows the
// key: the client answers its 20-byte challenge, but will not take HMAC-MD5
// as the master's proof.
func TestClientRefusesLegacyMaster(t *testing.T) {
	s, c := tcpPair(t)
	done := async(func() error { return auth.Client(c, testKey, testTimeout) })

	m := peer{t, s}
	mine := nonce(20)
	m.send(tag(mine))
	if got := m.recv(); !bytes.Equal(got, hmacMD5(testKey, mine)) {
		t.Fatalf("client answered %x, want raw HMAC-MD5 %x", got, hmacMD5(testKey, mine))
	}
	m.send([]byte("#WELCOME#"))
	m.send(hmacMD5(testKey, m.recvChallenge()))
	m.expect("#FAILURE#")

	err := <-done
	if !errors.Is(err, auth.ErrAuthFailed) || !strings.Contains(err.Error(), "legacy HMAC-MD5") {
		t.Fatalf("Client: %v, want ErrAuthFailed refusing legacy HMAC-MD5", err)
	}
}

func TestSilentPeerTimesOut(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for name, handshake := range map[string]func(net.Conn, []byte, time.Duration) error{
		"Server": auth.Server,
		"Client": auth.Client,
	} {
		t.Run(name, func(t *testing.T) {
			conn, _ := tcpPair(t)
			start := time.Now()
			err := handshake(conn, testKey, timeout)
			elapsed := time.Since(start)
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Fatalf("%s: %v, want a timeout", name, err)
			}
			if elapsed < timeout || elapsed > 2*time.Second {
				t.Fatalf("%s timed out after %v, want about %v", name, elapsed, timeout)
			}
		})
	}
}

// TestTricklingClientTimesOut checks that the deadline covers the whole
// handshake: a client that keeps sending a byte at a time is still cut off.
func TestTricklingClientTimesOut(t *testing.T) {
	s, c := tcpPair(t)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		if _, err := c.Write([]byte{0, 0, 0, 200}); err != nil {
			return
		}
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte{'x'}); err != nil {
					return
				}
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })

	start := time.Now()
	err := auth.Server(s, testKey, 200*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Server: %v, want a timeout", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("Server timed out after %v", elapsed)
	}
}

func TestEmptyKey(t *testing.T) {
	s, c := net.Pipe()
	t.Cleanup(func() { _ = s.Close(); _ = c.Close() })
	if err := auth.Server(s, nil, testTimeout); !errors.Is(err, auth.ErrEmptyKey) {
		t.Errorf("Server: %v, want ErrEmptyKey", err)
	}
	if err := auth.Client(c, []byte{}, testTimeout); !errors.Is(err, auth.ErrEmptyKey) {
		t.Errorf("Client: %v, want ErrEmptyKey", err)
	}
}
