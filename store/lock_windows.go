package store

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// locksDirs is false: Windows locks files only. LOCK cannot be deleted
// there while a master holds it open, which the directory's lock guards
// against elsewhere.
const locksDirs = false

// tryLock takes an exclusive lock on a byte of f far past its end
// without waiting: false and no error if another process holds it.
// Windows' locks are mandatory: one on the pid LOCK holds would keep a
// second master from reading whose it is.
func tryLock(f *os.File) (bool, error) {
	ol := windows.Overlapped{Offset: ^uint32(0), OffsetHigh: ^uint32(0)}
	err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &ol)
	if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return false, nil
	}
	return err == nil, err
}
