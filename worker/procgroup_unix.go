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

// inNewGroup starts cmd in a process group of its own, for killGroup,
// and where the kernel can, has it killed when the worker dies without
// stopping it (SIGKILL, a crash; see startOwned): its task runs again
// elsewhere, and a command left running would go on with it too.
func inNewGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	dieWithWorker(cmd.SysProcAttr)
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
