package auth_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/pyproto"
)

// python is an interpreter to test against.
type python struct {
	path         string
	major, minor int
}

func (p python) String() string { return fmt.Sprintf("python%d.%d", p.major, p.minor) }

// modern reports whether p signs with {digest} prefixes (Python >= 3.12).
func (p python) modern() bool { return p.major > 3 || p.major == 3 && p.minor >= 12 }

// pythons returns python3 from PATH, plus the interpreters listed in
// QM_TEST_PYTHON (separated like PATH) so that CI can cover both the legacy
// (<= 3.11) and the modern (>= 3.12) handshake. It skips the test if none runs.
func pythons(t *testing.T) []python {
	t.Helper()
	var paths []string
	if p, err := exec.LookPath("python3"); err == nil {
		paths = append(paths, p)
	}
	paths = append(paths, filepath.SplitList(os.Getenv("QM_TEST_PYTHON"))...)
	var found []python
	seen := map[string]bool{}
	for _, path := range paths {
		out, err := exec.Command(path, "-c", "import sys; print(*sys.version_info[:2])").Output()
		if err != nil {
			t.Logf("skip %s: %v", path, err)
			continue
		}
		var p python
		if _, err := fmt.Sscan(string(out), &p.major, &p.minor); err != nil {
			t.Logf("skip %s: version %q: %v", path, out, err)
			continue
		}
		p.path = path
		if !seen[p.String()] {
			seen[p.String()] = true
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		t.Skip("python3 not found")
	}
	return found
}

func keyCase(wrongKey bool) string {
	if wrongKey {
		return "wrong key"
	}
	return "right key"
}

// pythonCmd prepares `python -c script args...`, killed if the test overruns.
func pythonCmd(t *testing.T, py python, script string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, py.path, append([]string{"-c", script}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// exitCode returns the exit status of a finished command.
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

const pythonClient = `
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
try:
    c = Client(('127.0.0.1', int(sys.argv[1])), authkey=sys.argv[2].encode())
except AuthenticationError as e:
    print('AuthenticationError:', e)
    sys.exit(3)
c.send_bytes(b'ping')
print(c.recv_bytes().decode())
c.close()
`

// TestPythonClient runs Python's multiprocessing.connection.Client against
// our Server.
func TestPythonClient(t *testing.T) {
	for _, py := range pythons(t) {
		for _, wrongKey := range []bool{false, true} {
			t.Run(py.String()+"/"+keyCase(wrongKey), func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = ln.Close() })
				// Do not wait forever for a Python that died before dialling.
				if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(testTimeout)); err != nil {
					t.Fatal(err)
				}
				key := string(testKey)
				if wrongKey {
					key = "not-the-key"
				}
				port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
				cmd := pythonCmd(t, py, pythonClient, port, key)
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}

				serverErr := serveOne(ln)
				waitErr := cmd.Wait()
				if !wrongKey {
					if serverErr != nil || waitErr != nil || out.String() != "pong\n" {
						t.Fatalf("Server: %v; python: %v, output %q; want success and pong", serverErr, waitErr, out.String())
					}
					return
				}
				if !errors.Is(serverErr, auth.ErrAuthFailed) {
					t.Errorf("Server: %v, want ErrAuthFailed", serverErr)
				}
				if exitCode(waitErr) != 3 || !strings.Contains(out.String(), "AuthenticationError") {
					t.Errorf("python: %v, output %q; want AuthenticationError", waitErr, out.String())
				}
			})
		}
	}
}

// serveOne accepts one connection, authenticates it and answers its ping.
func serveOne(ln net.Listener) error {
	conn, err := ln.Accept()
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if err := auth.Server(conn, testKey, testTimeout); err != nil {
		return err
	}
	if err := conn.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		return err
	}
	msg, err := pyproto.ReadMessage(conn, 256)
	if err != nil {
		return err
	}
	if string(msg) != "ping" {
		return fmt.Errorf("read %q, want ping", msg)
	}
	return pyproto.WriteMessage(conn, []byte("pong"))
}

const pythonListener = `
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
with Listener(('127.0.0.1', 0), authkey=sys.argv[1].encode()) as l:
    print(l.address[1], flush=True)
    try:
        c = l.accept()
    except AuthenticationError as e:
        print('AuthenticationError:', e)
        sys.exit(3)
    c.send_bytes(c.recv_bytes().upper())
    c.close()
`

// TestPythonListener runs our Client against Python's
// multiprocessing.connection.Listener. A Python <= 3.11 listener can only
// prove itself with HMAC-MD5, which Client refuses.
func TestPythonListener(t *testing.T) {
	for _, py := range pythons(t) {
		for _, wrongKey := range []bool{false, true} {
			t.Run(py.String()+"/"+keyCase(wrongKey), func(t *testing.T) {
				key := string(testKey)
				if wrongKey {
					key = "not-the-key"
				}
				cmd := pythonCmd(t, py, pythonListener, key)
				stdout, err := cmd.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				r := bufio.NewReader(stdout)
				line, err := r.ReadString('\n')
				if err != nil {
					_ = cmd.Wait()
					t.Fatalf("read port: %v; stderr %q", err, stderr.String())
				}

				clientErr := dialOne(net.JoinHostPort("127.0.0.1", strings.TrimSpace(line)))
				rest, _ := io.ReadAll(r)
				waitErr := cmd.Wait()
				out := string(rest) + stderr.String()

				switch {
				case wrongKey:
					if !errors.Is(clientErr, auth.ErrAuthFailed) || !strings.Contains(clientErr.Error(), "master rejected the authkey") {
						t.Errorf("Client: %v, want ErrAuthFailed: master rejected the authkey", clientErr)
					}
					if exitCode(waitErr) != 3 || !strings.Contains(out, "AuthenticationError") {
						t.Errorf("python: %v, output %q; want AuthenticationError", waitErr, out)
					}
				case py.modern():
					if clientErr != nil || waitErr != nil {
						t.Fatalf("Client: %v; python: %v, output %q; want success", clientErr, waitErr, out)
					}
				default:
					if !errors.Is(clientErr, auth.ErrAuthFailed) || !strings.Contains(clientErr.Error(), "legacy HMAC-MD5") {
						t.Errorf("Client: %v, want ErrAuthFailed refusing legacy HMAC-MD5", clientErr)
					}
					if exitCode(waitErr) != 3 || !strings.Contains(out, "digest sent was rejected") {
						t.Errorf("python: %v, output %q; want our #FAILURE# reported", waitErr, out)
					}
				}
			})
		}
	}
}

// dialOne connects to addr, authenticates and checks that a ping comes back
// upper-cased.
func dialOne(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	if err := auth.Client(conn, testKey, testTimeout); err != nil {
		return err
	}
	if err := conn.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		return err
	}
	if err := pyproto.WriteMessage(conn, []byte("ping")); err != nil {
		return err
	}
	msg, err := pyproto.ReadMessage(conn, 256)
	if err != nil {
		return err
	}
	if string(msg) != "PING" {
		return fmt.Errorf("read %q, want PING", msg)
	}
	return nil
}
