package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hygieneKey is distinctive enough that any appearance in output is a leak.
const hygieneKey = "k3y-HYGIENE-9f27c1-do-not-print"

// runEnv runs a binary to its end with extra environment variables and
// returns its stdout, stderr and exit code.
func runEnv(t *testing.T, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out.String(), errOut.String(), code
}

// TestAuthkeyNeverPrinted runs qmaster and qworker with a distinctive
// key, given by --authkey and by QM_AUTHKEY, provokes authentication
// failures, refusals and other errors, and checks that the key appears in
// none of their output, --help included.
func TestAuthkeyNeverPrinted(t *testing.T) {
	var outputs []string
	keep := func(what string, s ...string) {
		outputs = append(outputs, what+":\n"+strings.Join(s, "\n"))
	}

	// A master keyed by flag, at debug level, with a low --auth-fail-limit.
	m, addr := startMaster(t, "--authkey", hygieneKey, "--log-level", "debug", "--auth-fail-limit", "2")
	// A master with another key (QM_AUTHKEY=e2e-secret, from start).
	m2 := start(t, nil, nil, "qmaster", "--addr", "127.0.0.1:0", "--log-level", "debug")
	// And one keyed by the environment.
	env := []string{"QM_AUTHKEY=" + hygieneKey}
	m3 := startEnvMaster(t, env)
	addr3 := m3.addr

	// Right key by flag and by environment: work gets done.
	if _, stderr, code := run(t, "", "put", "tasks", "1", "2", "--server", addr, "--authkey", hygieneKey); code != 0 {
		t.Fatalf("put: %s", stderr)
	}
	w := start(t, nil, nil, "qworker", "--server", addr, "--authkey", hygieneKey, "--builtin", "square", "--max-tasks", "2", "--log-level", "debug")
	if code := w.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("worker exited %d: %s", code, w.logs())
	}
	keep("worker", w.logs())
	o, e, _ := runEnv(t, env, "qmaster", "inspect", "--server", addr3)
	keep("inspect with QM_AUTHKEY", o, e)

	// Wrong keys both ways: a client's key wrong for the master, and the
	// master's key wrong for a client holding the distinctive one.
	for range 3 {
		o, e, _ := run(t, "", "inspect", "--server", addr, "--authkey", hygieneKey+"-wrong")
		keep("inspect with a wrong key", o, e)
	}
	o, e, code := run(t, "", "inspect", "--server", addr, "--authkey", hygieneKey) // served: failures only slow down the wrong keys
	keep("inspect after failures", o, e)
	if code != 0 {
		t.Errorf("inspect with the right key after failures from its address: exit %d: %s", code, e)
	}

	// A master of --acl whose secrets are distinctive: a denied call, a
	// wrong key, a reload refused on a broken secret line, a good one.
	dir := t.TempDir()
	aclPath := filepath.Join(dir, "acl.toml")
	aclFile := "[[key]]\nname = \"ingest\"\nsecret = \"" + hygieneKey + "-ingest\"\nput = [\"tasks\"]\n"
	if err := os.WriteFile(aclPath, []byte(aclFile), 0o600); err != nil {
		t.Fatal(err)
	}
	ma, addrA := startMaster(t, "--acl", aclPath, "--log-level", "debug")
	o, e, _ = run(t, "", "put", "tasks", "1", "--server", addrA, "--authkey", hygieneKey+"-ingest")
	keep("put with an acl key", o, e)
	o, e, code = run(t, "", "get", "tasks", "--server", addrA, "--authkey", hygieneKey+"-ingest")
	keep("denied get with an acl key", o, e)
	if code == 0 || !strings.Contains(e, "permission denied: key ingest may not get from tasks") {
		t.Errorf("get with a put-only key: exit %d: %s", code, e)
	}
	o, e, _ = run(t, "", "inspect", "--server", addrA, "--authkey", hygieneKey+"-wrong")
	keep("inspect with a key not in the acl", o, e)
	for _, broken := range []string{
		"[[key]]\nname = \"ingest\"\nsecret = \"" + hygieneKey + "-ingest\n", // unterminated
		"[[key]]\nname = \"ingest\"\nsecret = " + hygieneKey + "\n",          // unquoted
		"[[key]]\nname = \"ingest\"\nsecret = [\"" + hygieneKey + "\"]\n",    // wrong type
		"[[key]]\nname = \"ingest\"\nsecret = \"" + hygieneKey + "\" junk\n", // trailing
	} {
		if err := os.WriteFile(aclPath, []byte(broken), 0o600); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(ma.logs(), "acl reload refused")
		_ = ma.cmd.Process.Signal(syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); strings.Count(ma.logs(), "acl reload refused") == before; {
			if time.Now().After(deadline) {
				t.Fatalf("no refused reload logged:\n%s", ma.logs())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	o, e, _ = runEnv(t, nil, "qmaster", "--addr", "127.0.0.1:0", "--acl", aclPath) // refused at start
	keep("master with a broken acl", o, e)
	o, e, _ = runEnv(t, env, "qworker", "--server", m2addr(t, m2), "--builtin", "square")
	keep("worker with a key the master does not have", o, e)
	o, e, _ = runEnv(t, env, "qmaster", "get", "results", "--server", "127.0.0.1:1")
	keep("get from a closed port", o, e)
	o, e, _ = run(t, "", "put", "tasks", "--server", addr3, "--authkey", hygieneKey, "--authkey-file", "/nonexistent")
	keep("key twice", o, e)
	o, e, _ = runEnv(t, env, "qmaster", "--addr", addr3) // port taken
	keep("master on a taken port", o, e)

	// --help, with the key in the environment and on the command line.
	for _, args := range [][]string{
		{"qmaster", "--help"}, {"qmaster", "--authkey", hygieneKey, "--help"},
		{"qmaster", "inspect", "--help"}, {"qmaster", "put", "--authkey", hygieneKey, "--help"},
		{"qworker", "--help"}, {"qworker", "--authkey", hygieneKey, "--help"},
	} {
		o, e, code := runEnv(t, env, args[0], args[1:]...)
		if code != 0 || !strings.Contains(o+e, "--authkey") {
			t.Errorf("%v: exit %d, no help shown", args, code)
		}
		keep(strings.ReplaceAll(strings.Join(args, " "), hygieneKey, "KEY"), o, e)
	}

	// Stop the masters so that their last lines are in.
	for _, p := range []*proc{m, m2, m3.proc, ma} {
		_ = p.cmd.Process.Signal(os.Interrupt)
		p.wait(t, 15*time.Second)
		keep("master", p.logs())
	}
	if !strings.Contains(m.logs(), "authentication failed") || !strings.Contains(m.logs(), "failed authentications from an address past the limit") {
		t.Errorf("the master did not log the failures it was meant to:\n%s", m.logs())
	}
	for _, out := range outputs {
		if strings.Contains(out, hygieneKey) {
			t.Errorf("the authkey appears in %s", out)
		}
	}
	t.Logf("checked %d outputs (%d bytes) for the authkey", len(outputs), len(strings.Join(outputs, "")))
}

type envMaster struct {
	proc *proc
	addr string
}

// startEnvMaster runs qmaster with extra environment variables on a free
// loopback port.
func startEnvMaster(t *testing.T, env []string) envMaster {
	t.Helper()
	p := &proc{cmd: exec.Command(filepath.Join(binDir, "qmaster"), "--addr", "127.0.0.1:0", "--log-level", "debug"), done: make(chan struct{})}
	dieWithTests(p.cmd)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); <-p.done })
	return envMaster{proc: p, addr: m2addr(t, p)}
}

// m2addr waits for a master's listening line and returns its address.
func m2addr(t *testing.T, p *proc) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if sub := listenRE.FindStringSubmatch(p.logs()); sub != nil {
			return sub[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("qmaster did not report its address:\n%s", p.logs())
	return ""
}
