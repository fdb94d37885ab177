//go:build linux || darwin

package jsqueue

import "syscall"

// diskRoom returns the free and total bytes of the file system holding dir.
func diskRoom(dir string) (free, size uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return st.Bavail * uint64(st.Bsize), st.Blocks * uint64(st.Bsize), nil
}
