package seglog

import "os"

// syncsDirs is false: Windows cannot flush a directory (FlushFileBuffers
// needs a handle open for writing); NTFS journals its entries.
const syncsDirs = false

// openToSync opens an existing file to fsync it: FlushFileBuffers needs
// write access.
func openToSync(name string) (*os.File, error) { return os.OpenFile(name, os.O_RDWR, 0) }
