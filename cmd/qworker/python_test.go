package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// helperDir is the Python helper, python/ at the top of the repository.
var helperDir, _ = filepath.Abs("../../python")

// squareScript is a worker written with the helper.
const squareScript = `from qmworker import task

@task
def square(x):
    print("squaring", x)
    return x * x
`

func TestPythonHelperUnitTests(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			cmd := py.Command(t, time.Minute, "import sys, unittest; sys.exit(not unittest.main(module='test_qmworker', argv=['t'], exit=False).result.wasSuccessful())")
			cmd.Dir = helperDir
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v:\n%s", err, out)
			}
		})
	}
}

// The helper's @task worker under qworker, with --stdio and in command
// mode: results, and a failing task's error.
func TestPythonHelperUnderQworker(t *testing.T) {
	script := filepath.Join(t.TempDir(), "square.py")
	if err := os.WriteFile(script, []byte(squareScript), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, py := range qmtest.Pythons(t) {
		for _, mode := range []string{"stdio", "command"} {
			t.Run(py.String()+"/"+mode, func(t *testing.T) {
				addr, _ := qmtest.StartMaster(t, master.Config{MaxAttempts: 1})
				c := qmtest.Dial(t, addr, "producer")
				ids := put(t, c, "tasks", []any{3, 1.5, "x"})
				args := []string{"--server", addr, "--concurrency", "2", "--max-tasks", "3", "--get-timeout", "200ms"}
				if mode == "stdio" {
					args = append(args, "--stdio")
				}
				args = append(args, "--", py.Path, script)
				code, p := runQworker(t, env(keyEnv, "PYTHONPATH="+helperDir, "PYTHONDONTWRITEBYTECODE=1"), args...)
				if code != 0 {
					t.Fatalf("exit %d; stderr:\n%s", code, p.stderr.String())
				}
				got := map[uint64]wire.Result{}
				for _, r := range results(t, c, "results", 3, 10*time.Second) {
					got[r.TaskID] = r
				}
				for i, want := range []any{int64(9), 2.25} {
					if v, err := wire.DecodeValue(got[ids[i]].Value); err != nil || v != want {
						t.Errorf("task %d: %v, %v (%+v); want %v", i, v, err, got[ids[i]], want)
					}
				}
				if r := got[ids[2]]; !strings.Contains(r.Error, "TypeError") {
					t.Errorf("failing task: %+v, want the TypeError", r)
				}
				if mode == "stdio" && !strings.Contains(p.stderr.String(), "squaring 3") {
					t.Errorf("the handler's print is not in the log:\n%s", p.stderr.String())
				}
			})
		}
	}
}

// pip install ./python gives a module that imports: the package is
// buildable offline with the setuptools the interpreter has.
func TestPythonHelperInstalls(t *testing.T) {
	py := qmtest.Pythons(t)[0]
	if err := exec.Command(py.Path, "-c", "import setuptools, wheel, pip").Run(); err != nil {
		t.Skipf("%s lacks pip, setuptools or wheel to build offline: %v", py, err)
	}
	target := t.TempDir()
	// A copy, so that the build leaves nothing in the repository.
	src := filepath.Join(t.TempDir(), "python")
	if out, err := exec.Command("cp", "-r", helperDir, src).CombinedOutput(); err != nil {
		t.Fatalf("copy: %v: %s", err, out)
	}
	install := exec.Command(py.Path, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
		"--disable-pip-version-check", "--target", target, src)
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("pip install: %v:\n%s", err, out)
	}
	check := exec.Command(py.Path, "-c", "import qmworker; print(qmworker.__version__)")
	check.Env = append(os.Environ(), "PYTHONPATH="+target)
	check.Dir = target
	if out, err := check.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "0.1.0" {
		t.Fatalf("import qmworker: %v: %s", err, out)
	}
}
