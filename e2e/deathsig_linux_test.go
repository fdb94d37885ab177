//go:build linux

package e2e

import (
	"os/exec"
	"syscall"
)

// dieWithTests has cmd's process killed when this test binary dies. A
// test binary that times out panics without running any cleanup, and its
// masters and workers went on running: six of them, in network
// namespaces, were found half an hour after such a timeout.
func dieWithTests(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
