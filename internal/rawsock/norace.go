//go:build !race

package rawsock

func raceRelease() {}
func raceAcquire() {}
