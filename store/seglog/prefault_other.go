//go:build !linux

package seglog

// prefault does nothing here: see prefault_linux.go.
func prefault[T any](s []T) {}
