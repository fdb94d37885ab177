package e2e

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
)

// pyClient is the prelude of the Python scripts: a classic BaseManager
// client of the master at sys.argv[1], with the key in QM_AUTHKEY.
var pyClient = pyClientOf("get_tasks_queue", "get_results_queue")

// pyClientOf is pyClient whose proxies tasks and results are those of the
// typeids given.
func pyClientOf(tasks, results string) string {
	return fmt.Sprintf(`
import os, queue, sys, time
from multiprocessing.managers import BaseManager
class QueueManager(BaseManager): pass
QueueManager.register('%[1]s')
QueueManager.register('%[2]s')
host, port = sys.argv[1].rsplit(':', 1)
m = QueueManager(address=(host, int(port)), authkey=os.environ['QM_AUTHKEY'].encode())
m.connect()
tasks = m.%[1]s(); results = m.%[2]s()
`, tasks, results)
}

// startPython runs a Python client script against addr; its stdout is
// returned by the function, once it exits.
func startPython(t *testing.T, py qmtest.Python, addr, script string) func() string {
	t.Helper()
	cmd := py.Command(t, 2*time.Minute, pyClient+script, addr)
	cmd.Env = append(cmd.Env, "QM_AUTHKEY="+authkey)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return func() string {
		t.Helper()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s: %v\n%s", py, err, errOut.String())
		}
		return out.String()
	}
}

// TestPythonWorkerWithQworker: an unmodified Python worker and a qworker
// take tasks from one queue; qmaster map gets every result, in order, the
// Python worker's included.
func TestPythonWorkerWithQworker(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			_, addr := startMaster(t)
			wait := startPython(t, py, addr, `
handled = 0
while True:
    try:
        n = tasks.get(timeout=3)
    except queue.Empty:
        break
    results.put(n * n)
    handled += 1
print(handled)
`)
			// The Python worker waits in its get first, so it takes the first task.
			waitFor(t, 30*time.Second, func() bool {
				out, _, _ := run(t, "", "inspect", "--server", addr, "--json")
				return strings.Contains(out, `"consumers":1`)
			})
			start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--name", "qw")
			const n = 300
			out, stderr, code := run(t, seq(n), "map", "--server", addr, "--timeout", "60s")
			if code != 0 {
				t.Fatalf("map exited %d: %s", code, stderr)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != n {
				t.Fatalf("%d result lines, want %d", len(lines), n)
			}
			for i, line := range lines {
				if want := strconv.Itoa((i + 1) * (i + 1)); line != want {
					t.Fatalf("line %d = %q, want %s", i+1, line, want)
				}
			}
			handled, err := strconv.Atoi(strings.TrimSpace(wait()))
			if err != nil || handled == 0 || handled == n {
				t.Fatalf("the Python worker handled %d of %d tasks (%v); want a share", handled, n, err)
			}
			t.Logf("python worker %d tasks, qworker %d", handled, n-handled)
		})
	}
}

// TestPythonMasterWithQworker: an unmodified Python master puts tasks and
// reads plain results that qworkers computed.
func TestPythonMasterWithQworker(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			_, addr := startMaster(t)
			for i := range 2 {
				start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--name", fmt.Sprintf("qw%d", i))
			}
			out := startPython(t, py, addr, `
for i in range(1, 51):
    tasks.put(i)
print(sorted(results.get(timeout=30) for _ in range(50)))
`)()
			var want []string
			for i := 1; i <= 50; i++ {
				want = append(want, strconv.Itoa(i*i))
			}
			if got := strings.TrimSpace(out); got != "["+strings.Join(want, ", ")+"]" {
				t.Fatalf("python master read %s", got)
			}
		})
	}
}

// TestPythonClientInspected: qmaster clients and inspect show a Python
// client and its queue like any other.
func TestPythonClientInspected(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	_, addr := startMaster(t)
	cmd := py.Command(t, time.Minute, pyClient+`
tasks.put('hello')
print('ready', flush=True)
sys.stdin.read()
`, addr)
	cmd.Env = append(cmd.Env, "QM_AUTHKEY="+authkey)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("python: %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	clients, stderr, code := run(t, "", "clients", "--server", addr, "--json")
	if code != 0 || !strings.Contains(clients, `"role":"python"`) || !strings.Contains(clients, `"name":"MainProcess"`) {
		t.Errorf("clients (exit %d): %s %s", code, clients, stderr)
	}
	queues, stderr, code := run(t, "", "inspect", "--server", addr, "--json")
	if code != 0 || !strings.Contains(queues, `"queue":"tasks"`) || !strings.Contains(queues, `"ready":1`) {
		t.Errorf("inspect (exit %d): %s %s", code, queues, stderr)
	}
}

// TestClassicScriptsMeetQworker: the classic producer script, which
// registers get_task_queue and get_result_queue, and a qworker started
// with no queue flags, as the README shows, meet: every task is squared
// and its result read back.
func TestClassicScriptsMeetQworker(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	_, addr := startMaster(t)
	start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square")
	cmd := py.Command(t, 2*time.Minute, pyClientOf("get_task_queue", "get_result_queue")+`
for n in range(1, 21):
    tasks.put(n)
print(sorted(results.get(timeout=30) for _ in range(20)))
`, addr)
	cmd.Env = append(cmd.Env, "QM_AUTHKEY="+authkey)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", py, err, out)
	}
	var want []string
	for n := 1; n <= 20; n++ {
		want = append(want, strconv.Itoa(n*n))
	}
	if got := strings.TrimSpace(string(out)); got != "["+strings.Join(want, ", ")+"]" {
		t.Fatalf("the classic producer read %s", got)
	}
}
