package seglog

import (
	"syscall"
	"unsafe"
)

// madvPopulateWrite is MADV_POPULATE_WRITE (Linux 5.14): fault a range in
// as if written, in one call, leaving its contents as they are.
const madvPopulateWrite = 23

// prefault maps in the pages under s at once, where touching them one at
// a time would take a page fault each: the state of a million tasks is
// 120 MB of new memory, and on a virtual machine a fault is an exit to
// the host. It is only a hint: an older kernel refuses it, and then the
// pages fault in as they are written.
func prefault[T any](s []T) {
	if cap(s) == 0 {
		return
	}
	size := uintptr(cap(s)) * unsafe.Sizeof(s[0])
	start := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	const page = 4096
	lo := (start + page - 1) &^ (page - 1) // whole pages only: the rest may be another object's
	hi := (start + size) &^ (page - 1)
	if hi > lo {
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, lo, hi-lo, madvPopulateWrite)
	}
}
