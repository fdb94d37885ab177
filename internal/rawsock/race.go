//go:build race

package rawsock

import "sync/atomic"

// ioSync orders, for the race detector, what a goroutine did before a write
// before what another does after reading those bytes, as the syscall
// package's own ioSync does for ordinary reads and writes. Raw calls skip
// that bookkeeping, and tests with master and client in one process rely
// on it.
var ioSync atomic.Uint64

func raceRelease() { ioSync.Add(1) }
func raceAcquire() { ioSync.Load() }
