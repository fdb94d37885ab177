package qmtest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Python is an interpreter to test against.
type Python struct {
	Path         string
	Major, Minor int
}

func (p Python) String() string { return fmt.Sprintf("python%d.%d", p.Major, p.Minor) }

// Pythons returns python3 from PATH plus the interpreters listed in
// QM_TEST_PYTHON (separated like PATH), one per version, so that a
// machine with several can test them all. It skips t, saying why, when
// none runs.
func Pythons(t testing.TB) []Python {
	t.Helper()
	var paths []string
	if p, err := exec.LookPath("python3"); err == nil {
		paths = append(paths, p)
	}
	paths = append(paths, filepath.SplitList(os.Getenv("QM_TEST_PYTHON"))...)
	var found []Python
	seen := map[string]bool{}
	for _, path := range paths {
		if path == "" {
			continue
		}
		out, err := exec.Command(path, "-c", "import sys; print(*sys.version_info[:2])").Output()
		if err != nil {
			t.Logf("skip %s: %v", path, err)
			continue
		}
		var p Python
		if _, err := fmt.Sscan(string(out), &p.Major, &p.Minor); err != nil {
			t.Logf("skip %s: version %q: %v", path, out, err)
			continue
		}
		p.Path = path
		if !seen[p.String()] {
			seen[p.String()] = true
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		t.Skip("no python3 on PATH or in QM_TEST_PYTHON: the Python client tests need one")
	}
	return found
}

// Command prepares `python -c script args...`, killed if it runs longer
// than timeout or the test ends first.
func (p Python) Command(t testing.TB, timeout time.Duration, script string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, p.Path, append([]string{"-c", script}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	return cmd
}

// Run runs script to its end and returns its stdout; it fails t, with
// the script's output, if the script fails.
func (p Python) Run(t testing.TB, timeout time.Duration, script string, args ...string) string {
	t.Helper()
	cmd := p.Command(t, timeout, script, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", p, err, stdout.String(), stderr.String())
	}
	return stdout.String()
}
