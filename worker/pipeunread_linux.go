package worker

import (
	"os"
	"syscall"
	"unsafe"
)

// pipeUnread returns how many bytes written to the pipe w no reader has
// taken yet; -1 if that cannot be told. The bytes stay counted after the
// reader's end is closed, so a child's stdin tells, after it exited, how
// much of what it was given it read.
func pipeUnread(w *os.File) int64 {
	rc, err := w.SyscallConn()
	if err != nil {
		return -1
	}
	var n int32
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		return -1
	}
	return int64(n)
}
