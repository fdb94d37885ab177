package e2e

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A qworker killed with SIGKILL takes the command running its task with
// it. The task runs again at another worker once its lease runs out; the
// command, left running, would have gone on with it too.
func TestKilledWorkersCommandDiesWithIt(t *testing.T) {
	_, addr := startMaster(t)
	if _, stderr, code := run(t, "", "put", "tasks", "--server", addr, "1"); code != 0 {
		t.Fatalf("put: %s", stderr)
	}
	pidFile := t.TempDir() + "/pid"
	victim := start(t, nil, nil, "qworker", "--server", addr, "--", "sh", "-c", "echo $$ > "+pidFile+"; exec sleep 600")
	var pid int
	waitFor(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(string(bytes.TrimSpace(b)))
		return pid > 0
	})
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	victim.wait(t, 5*time.Second)
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	waitFor(t, 10*time.Second, func() bool { return !running(pid) })
}

// running reports whether process pid runs: it exists and is not a
// zombie (an orphan's is reaped by whoever adopted it, if anyone).
func running(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	rest := string(b[bytes.LastIndexByte(b, ')')+1:])
	f := strings.Fields(rest)
	return len(f) > 0 && f[0] != "Z"
}
