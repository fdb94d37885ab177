//go:build !unix

package worker

import "os/exec"

// ownProcessGroup leaves cmd as it is: without process groups only the
// command itself is killed on cancellation.
func ownProcessGroup(*exec.Cmd) {}

// killGroup kills the command alone: there are no process groups here.
func killGroup(cmd *exec.Cmd) error { return cmd.Process.Kill() }

// inNewGroup leaves cmd as it is.
func inNewGroup(*exec.Cmd) {}
