package worker

import "syscall"

// dieWithWorker has the kernel SIGKILL the process when the thread that
// started it ends; startOwned keeps that thread for the process's life.
func dieWithWorker(a *syscall.SysProcAttr) { a.Pdeathsig = syscall.SIGKILL }
