//go:build !unix

package worker

import "os/exec"

// ownProcessGroup leaves cmd as it is: without process groups only the
// command itself is killed on cancellation.
func ownProcessGroup(*exec.Cmd) {}
