//go:build !linux

package worker

import "os"

// pipeUnread cannot tell here how much of a pipe is unread.
func pipeUnread(*os.File) int64 { return -1 }
