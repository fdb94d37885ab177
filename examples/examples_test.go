// Package examples_test runs every example in examples/ against a real
// master, as CI does, so that the examples stay true.
package examples_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// bin holds the binaries TestMain builds: qworker and goworker.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "qm-examples-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	build := exec.Command("go", "build", "-o", dir, "../cmd/qworker", "./goworker")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build: %v: %s\n", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		os.RemoveAll(dir)
		os.Exit(code)
	}))
}

// squares puts 1..n in "tasks", runs the worker command until it has
// handled them, and checks the n squares in "results".
func squares(t *testing.T, n int, argv []string, env ...string) {
	t.Helper()
	addr, _ := qmtest.StartMaster(t, master.Config{})
	c := qmtest.Dial(t, addr, "producer")
	items := make([]any, n)
	for i := range items {
		items[i] = i + 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "tasks", items, wire.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), append([]string{"QM_SERVER=" + addr, "QM_AUTHKEY=" + string(qmtest.Authkey)}, env...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt) // drains, then exits 0
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("worker: %v; stderr:\n%s", err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("worker still running 20s after SIGINT")
		}
	})
	want := map[int64]bool{}
	for i := 1; i <= n; i++ {
		want[int64(i*i)] = true
	}
	for len(want) > 0 {
		ts, err := c.Get(ctx, "results", wire.GetOptions{Max: len(want), Timeout: time.Second})
		if err != nil {
			t.Fatalf("get results: %v (%d missing); worker stderr:\n%s", err, len(want), stderr.String())
		}
		for _, task := range ts {
			r, err := wire.DecodeResult(task.Payload)
			if err != nil {
				t.Fatal(err)
			}
			v, err := wire.DecodeValue(r.Value)
			if r.Error != "" || err != nil || !want[v.(int64)] {
				t.Fatalf("unexpected result %+v (%v, %v)", r, v, err)
			}
			delete(want, v.(int64))
		}
	}
}

func TestSquareInPython(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	helper, _ := filepath.Abs("../python")
	squares(t, 50, []string{"sh", "-c", `exec "$0" --server "$QM_SERVER" --stdio --concurrency 2 -- "$1" square/square.py`,
		filepath.Join(bin, "qworker"), py.Path}, "PYTHONPATH="+helper)
}

func TestSquareInShell(t *testing.T) {
	squares(t, 50, []string{"sh", "-c", `exec "$0" --server "$QM_SERVER" --stdio --concurrency 2 -- sh square/square.sh`,
		filepath.Join(bin, "qworker")})
}

func TestGoWorker(t *testing.T) {
	squares(t, 50, []string{filepath.Join(bin, "goworker")})
}

// background runs argv until the test ends, then stops it with SIGINT
// (qworker drains) and reports how it ended.
func background(t *testing.T, argv []string, env ...string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v; stderr:\n%s", argv[0], err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s still running 20s after SIGINT", argv[0])
		}
	})
}

// runPython runs a script to its end and returns its output.
func runPython(t *testing.T, py qmtest.Python, env []string, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command(py.Path, append([]string{script}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v:\n%s", script, err, out)
	}
	return string(out)
}

// The classic BaseManager producer, with the classic worker and then with
// the same work as a --stdio worker.
func TestClassic(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	helper, _ := filepath.Abs("../python")
	for _, workers := range []string{"classic", "stdio"} {
		t.Run(workers, func(t *testing.T) {
			addr, _ := qmtest.StartMaster(t, master.Config{})
			env := []string{"QM_ADDR=" + addr, "QM_AUTHKEY=" + string(qmtest.Authkey), "PYTHONPATH=" + helper, "PYTHONDONTWRITEBYTECODE=1"}
			if workers == "classic" {
				for range 2 {
					cmd := exec.Command(py.Path, "classic/worker.py")
					cmd.Env = append(os.Environ(), env...)
					if err := cmd.Start(); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
				}
			} else {
				background(t, []string{filepath.Join(bin, "qworker"), "--server", addr, "--stdio", "--concurrency", "2",
					"--", py.Path, "square/square.py"}, env...)
			}
			out := runPython(t, py, env, "classic/producer.py", "100")
			if want := "sum of the squares of 1..100 = 338350"; !strings.Contains(out, want) {
				t.Fatalf("producer printed %q, want %q", out, want)
			}
		})
	}
}

func TestWordCount(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	helper, _ := filepath.Abs("../python")
	addr, _ := qmtest.StartMaster(t, master.Config{})
	env := []string{"QM_ADDR=" + addr, "QM_AUTHKEY=" + string(qmtest.Authkey), "PYTHONPATH=" + helper, "PYTHONDONTWRITEBYTECODE=1"}
	qworker := filepath.Join(bin, "qworker")
	background(t, []string{qworker, "--server", addr, "--stdio", "--concurrency", "2", "--tasks", "map", "--results", "shuffled",
		"--", py.Path, "wordcount/mapper.py"}, env...)
	background(t, []string{qworker, "--server", addr, "--stdio", "--concurrency", "2", "--tasks", "reduce", "--results", "counted",
		"--", py.Path, "wordcount/reducer.py"}, env...)
	out := runPython(t, py, env, "wordcount/driver.py", "200", "4")
	if !strings.Contains(out, "the same as a local count") || !strings.HasPrefix(out, "the ") {
		t.Fatalf("driver printed:\n%s", out)
	}
}
