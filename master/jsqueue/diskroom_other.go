//go:build !linux && !darwin

package jsqueue

import "errors"

// diskRoom is not known here: a broken store is started again after its
// backoff alone.
func diskRoom(string) (free, size uint64, err error) {
	return 0, 0, errors.ErrUnsupported
}
