//go:build !windows

package seglog

import "os"

// syncsDirs says that a directory's entries are made durable by syncing
// the directory.
const syncsDirs = true

// openToSync opens an existing file to fsync it.
func openToSync(name string) (*os.File, error) { return os.Open(name) }
