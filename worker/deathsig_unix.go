//go:build unix && !linux

package worker

import "syscall"

// dieWithWorker does nothing here: only Linux kills a process when its
// parent dies.
func dieWithWorker(*syscall.SysProcAttr) {}
