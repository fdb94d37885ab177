//go:build unix

package worker

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

// ownProcessGroup starts cmd in a process group of its own and makes its
// cancellation kill that whole group, so that no child it started stays
// behind as an orphan.
func ownProcessGroup(cmd *exec.Cmd) {
	inNewGroup(cmd)
	cmd.Cancel = func() error { return killGroup(cmd) }
}

// inNewGroup starts cmd in a process group of its own, for killGroup.
func inNewGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}

// killGroup kills the process group of a command started with
// inNewGroup.
func killGroup(cmd *exec.Cmd) error {
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return os.ErrProcessDone
	}
	return err
}
