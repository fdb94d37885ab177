package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
)

// An inspect --watch of a master with --data-dir that is restarted
// waits for it, within redialFor, and goes on redrawing through the
// restarted master. Before, the stopping master ended the watch with an
// error.
func TestE2EInspectWatchThroughARestartedMaster(t *testing.T) {
	addr := qmtest.FreeAddrs(t, 1)[0]
	args := []string{"--data-dir", t.TempDir()}
	m := startMasterAt(t, addr, args...)
	mustQmaster(t, "", "put", "--server", addr, "before", "1")

	var out, errOut syncBuffer
	watch := exec.Command(qmasterBin, "inspect", "--server", addr, "--watch", "--interval", "100ms")
	watch.Env = env("QM_AUTHKEY=" + testKey)
	watch.Stdout, watch.Stderr = &out, &errOut
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var werr error
	go func() { werr = watch.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = watch.Process.Kill()
		<-done
	})
	// redrawn returns a check that the watch, still running, has printed
	// more than n tables, the last showing queue.
	redrawn := func(n int, queue string) func() error {
		return func() error {
			select {
			case <-done:
				t.Fatalf("inspect --watch ended (%v); stdout:\n%s\nstderr:\n%s", werr, &out, &errOut)
			default:
			}
			s := out.String()
			tables := strings.Split(s, "QUEUE ")
			if len(tables)-1 <= n || !strings.Contains(tables[len(tables)-1], "\n"+queue+" ") {
				return fmt.Errorf("no table past the %dth showing %s:\n%s", n, queue, s)
			}
			return nil
		}
	}
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, redrawn(0, "before"))

	if !m.stop(10 * time.Second) {
		t.Fatalf("master still running 10s after SIGTERM; stderr:\n%s", m.stderr)
	}
	startMasterAt(t, addr, args...)
	mustQmaster(t, "", "put", "--server", addr, "after", "2")
	qmtest.CheckFor(t, 30*time.Second, 10*time.Millisecond, redrawn(0, "after"))
	if !strings.Contains(errOut.String(), "reconnecting") {
		t.Errorf("stderr does not say it reconnects:\n%s", &errOut)
	}
	// Still redrawing, not stopped at the first table after the restart.
	qmtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, redrawn(strings.Count(out.String(), "QUEUE "), "after"))

	_ = watch.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("inspect --watch still running 10s after SIGTERM; stderr:\n%s", &errOut)
	}
	if werr != nil {
		t.Errorf("inspect --watch exited with %v, want 0; stderr:\n%s", werr, &errOut)
	}
	if strings.Contains(errOut.String(), "WARNING: DATA RACE") {
		t.Errorf("inspect --watch: data race:\n%s", &errOut)
	}
}
