package seglog

import (
	"os"
	"syscall"
)

// readFile returns the bytes of the file name and a function that lets
// them go. On Linux they are the page cache's own pages, mapped read-only
// and populated in one call, rather than a copy on the heap: reading a
// 51 MB log of a million tasks into fresh memory was a sixth of a
// restart, most of it page faults. Nothing decoded from the bytes may
// keep them (decode's payloads and strings are copied out), and the file
// must not shrink while they are in use: Load holds the directory's lock,
// and cuts a torn tail only once it is done with the bytes. A file that
// cannot be mapped (an empty one) is read.
func readFile(name string) ([]byte, func(), error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size > 0 && size == int64(int(size)) {
		b, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_PRIVATE|syscall.MAP_POPULATE)
		if err == nil {
			return b, func() { _ = syscall.Munmap(b) }, nil
		}
	}
	b, err := os.ReadFile(name)
	return b, func() {}, err
}
