package wire_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/rawsock"
	"github.com/qm-dev/qm/wire"
)

// echoPeerEnv makes this test binary an echo peer for
// BenchmarkCrossProcessPingPong: "mode addr".
const echoPeerEnv = "QM_WIRE_ECHO_PEER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(echoPeerEnv); spec != "" {
		if err := echoPeer(spec); err != nil {
			fmt.Fprintln(os.Stderr, "echo peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// transports are the ways BenchmarkCrossProcessPingPong connects: plain
// sockets, qm's raw socket calls, and a stream of qm's yamux session on
// those.
var transports = []string{"plain", "raw", "yamux"}

// connect turns a dialed or accepted conn into the transport of mode.
func connect(mode string, c net.Conn, dialer bool) (io.ReadWriteCloser, error) {
	switch mode {
	case "plain":
		return c, nil
	case "raw":
		return rawsock.Wrap(c), nil
	}
	if dialer {
		s, err := wire.ClientSession(rawsock.Wrap(c), time.Minute)
		if err != nil {
			return nil, err
		}
		return s.OpenStream()
	}
	s, _, err := wire.ServerSession(rawsock.Wrap(c), time.Minute)
	if err != nil {
		return nil, err
	}
	return s.AcceptStream()
}

// echoPeer dials addr and sends back every 16 bytes it reads until the
// connection closes.
func echoPeer(spec string) error {
	runtime.GOMAXPROCS(1)
	var mode, addr string
	if _, err := fmt.Sscan(spec, &mode, &addr); err != nil {
		return err
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	rw, err := connect(mode, c, false)
	if err != nil {
		return err
	}
	buf := make([]byte, 16)
	for {
		if _, err := io.ReadFull(rw, buf); err != nil {
			return nil // the benchmark is done
		}
		if _, err := rw.Write(buf); err != nil {
			return nil
		}
	}
}

// BenchmarkCrossProcessPingPong is a 16-byte message and its echo between
// this process and a child process over loopback TCP: the floor under
// qm's single-task round trip, which is two of these, and what yamux adds
// to it. Both processes run with GOMAXPROCS=1, as qm's commands do.
func BenchmarkCrossProcessPingPong(b *testing.B) {
	for _, mode := range transports {
		b.Run(mode, func(b *testing.B) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer ln.Close()
			peer := exec.Command(os.Args[0], "-test.run=^$")
			peer.Env = append(os.Environ(), echoPeerEnv+"="+mode+" "+ln.Addr().String())
			peer.Stderr = os.Stderr
			if err := peer.Start(); err != nil {
				b.Fatal(err)
			}
			defer peer.Wait()
			c, err := ln.Accept()
			if err != nil {
				b.Fatal(err)
			}
			rw, err := connect(mode, c, true)
			if err != nil {
				c.Close()
				b.Fatal(err)
			}
			defer c.Close()
			defer rw.Close()
			buf := make([]byte, 16)
			for b.Loop() {
				if _, err := rw.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(rw, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
