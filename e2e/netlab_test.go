//go:build linux

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/wire"
)

// A netLab is a set of network namespaces joined by veth pairs, made for
// one test with `ip netns` and deleted with everything in it at cleanup.
// Its addresses (10.77.N.1 on the master's side of link N, 10.77.N.2 on
// the other) exist only inside its namespaces, so nothing on the machine
// can see or clash with them; its namespace names carry the test
// process's PID and a counter, so parallel runs do not clash either.
type netLab struct {
	t      *testing.T
	prefix string
	links  int
}

var (
	labSeq         atomic.Int64
	sweepStaleLabs sync.Once
)

// sweepLabs deletes the namespaces of labs whose test binary is gone: one
// that dies (a test timeout panics) runs no cleanup. Its processes die
// with it (dieWithTests); the namespaces, named qm-PID-..., stay.
func sweepLabs() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		ns, _, _ := strings.Cut(line, " ")
		pid, ok := labPID(ns)
		if !ok || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	}
}

// labPID is the PID in a lab's namespace name, qm-PID-N-...
func labPID(ns string) (int, bool) {
	rest, ok := strings.CutPrefix(ns, "qm-")
	if !ok {
		return 0, false
	}
	d, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(d)
	return pid, ok && err == nil && pid > 0
}

// newNetLab skips t, saying why, unless this process can make network
// namespaces: root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: the multi-host tests make network namespaces with `ip netns`, which needs root (CI runs as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: no `ip` command; install iproute2 to run the multi-host tests")
	}
	sweepStaleLabs.Do(sweepLabs)
	l := &netLab{t: t, prefix: fmt.Sprintf("qm-%d-%d", os.Getpid(), labSeq.Add(1))}
	probe := l.prefix + "-probe"
	if out, err := exec.Command("ip", "netns", "add", probe).CombinedOutput(); err != nil {
		t.Skipf("skipped: `ip netns add` fails here (no CAP_SYS_ADMIN/CAP_NET_ADMIN?): %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "netns", "del", probe).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del %s: %v: %s", probe, err, out)
	}
	return l
}

// ip runs the ip command with args, failing the test on an error.
func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// in runs a command inside namespace ns and returns its error, with its
// output in it.
func (l *netLab) in(ns string, args ...string) error {
	_, err := l.output(ns, args...)
	return err
}

// output runs a command inside namespace ns and returns its output
// (stdout and stderr), or an error with the output in it.
func (l *netLab) output(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// must is in, failing the test on an error.
func (l *netLab) must(ns string, args ...string) {
	l.t.Helper()
	if err := l.in(ns, args...); err != nil {
		l.t.Fatal(err)
	}
}

// host makes a namespace with its loopback up; cleanup deletes it (and
// with it every interface in it).
func (l *netLab) host(name string) string {
	l.t.Helper()
	ns := l.prefix + "-" + name
	l.ip("netns", "add", ns)
	l.t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Errorf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	l.ip("-n", ns, "link", "set", "lo", "up")
	return ns
}

// labLink is a veth pair between the master's namespace and another.
type labLink struct {
	master, other       string // namespaces
	masterIf, otherIf   string // interface names, each in its namespace
	masterAddr, otherIP string // masterAddr is the master's IP on this link
}

// link joins namespace master to other with a veth pair on a /24 of its
// own.
func (l *netLab) link(master, other string) labLink {
	l.t.Helper()
	l.links++
	n := l.links
	k := labLink{master: master, other: other, masterIf: fmt.Sprintf("to%d", n), otherIf: "eth0",
		masterAddr: fmt.Sprintf("10.77.%d.1", n), otherIP: fmt.Sprintf("10.77.%d.2", n)}
	// Both ends are made straight inside their namespaces: no interface
	// ever appears in the machine's own.
	l.ip("link", "add", k.masterIf, "netns", master, "type", "veth", "peer", "name", k.otherIf, "netns", other)
	l.ip("-n", master, "addr", "add", k.masterAddr+"/24", "dev", k.masterIf)
	l.ip("-n", other, "addr", "add", k.otherIP+"/24", "dev", k.otherIf)
	l.ip("-n", master, "link", "set", k.masterIf, "up")
	l.ip("-n", other, "link", "set", k.otherIf, "up")
	return k
}

// setLink brings both ends of k down or up: nothing crosses a link that
// is down, in either direction, and no error tells either side so.
func (l *netLab) setLink(k labLink, up bool) {
	l.t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	l.ip("-n", k.other, "link", "set", k.otherIf, state)
	l.ip("-n", k.master, "link", "set", k.masterIf, state)
}

// startIn runs one of the built binaries inside namespace ns. `ip netns
// exec` execs the binary in place, so the process is the binary itself
// and signals reach it.
func startIn(t *testing.T, ns, name string, args ...string) *proc {
	t.Helper()
	return startInIO(t, ns, nil, nil, name, args...)
}

// startInIO is startIn with the process's stdin and stdout.
func startInIO(t *testing.T, ns string, stdin io.Reader, stdout io.Writer, name string, args ...string) *proc {
	t.Helper()
	argv := append([]string{"netns", "exec", ns, filepath.Join(binDir, name)}, args...)
	p := &proc{cmd: exec.Command("ip", argv...), done: make(chan struct{})}
	dieWithTests(p.cmd) // kept across ip's exec of the binary
	p.cmd.Env = append(os.Environ(), "QM_AUTHKEY="+authkey)
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = stdin, stdout, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, ns, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s in %s %v stderr:\n%s", name, ns, args, p.logs())
		}
	})
	return p
}

// labPort is the master's port: a fresh namespace has every port free.
const labPort = "5000"

// startMasterIn runs qmaster in namespace ns on labPort of every address
// it has there, and waits until it listens.
func startMasterIn(t *testing.T, ns string, args ...string) *proc {
	t.Helper()
	m := startIn(t, ns, "qmaster", append([]string{"--addr", "0.0.0.0:" + labPort}, args...)...)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(m.logs(), "msg=listening") })
	return m
}

// dialIn connects a wire client from inside namespace ns: the dialing
// goroutine's thread enters ns for the socket() call only, so the client
// talks through ns's interfaces while the test itself stays where it is.
func dialIn(t *testing.T, ns, addr, role string) *wire.Client {
	t.Helper()
	var c *wire.Client
	var dialErr error
	err := inNetns(ns, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, dialErr = wire.Dial(ctx, wire.Config{Addr: addr, Authkey: []byte(authkey), Role: role})
	})
	if err == nil {
		err = dialErr
	}
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// netnsDialer dials TCP from inside a namespace, as dialIn does; it is a
// nats.CustomDialer, for NATS connections to nodes inside a lab.
type netnsDialer struct{ ns string }

func (d netnsDialer) Dial(network, address string) (net.Conn, error) {
	var c net.Conn
	var dialErr error
	if err := inNetns(d.ns, func() { c, dialErr = net.DialTimeout(network, address, 5*time.Second) }); err != nil {
		return nil, err
	}
	return c, dialErr
}

// inNetns runs f on a thread of its own inside namespace ns, and returns
// once f has. Sockets f opens stay in ns. The thread is given back to the
// runtime whenever it is in its own namespace; otherwise the runtime ends
// it with the goroutine, and no other goroutine runs in ns. Ending it
// kills the children forked on it (dieWithTests), so only that case does.
func inNetns(ns string, f func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		atHome := true
		defer func() {
			if atHome {
				runtime.UnlockOSThread()
			}
		}()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer home.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := setns(target); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		atHome = false
		f()
		atHome = setns(home) == nil
		errc <- nil
	}()
	return <-errc
}

// setnsTrap is setns(2)'s number: package syscall does not name it, and
// golang.org/x/sys is not worth a direct dependency for one call.
var setnsTrap = map[string]uintptr{"amd64": 308, "arm64": 268, "riscv64": 268, "386": 346, "arm": 375, "ppc64le": 350, "s390x": 339}

func setns(f *os.File) error {
	trap, ok := setnsTrap[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("setns: syscall number unknown on %s", runtime.GOARCH)
	}
	if _, _, errno := syscall.Syscall(trap, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}
