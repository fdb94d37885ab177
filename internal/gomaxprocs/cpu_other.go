//go:build !linux

package gomaxprocs

type cpuSample struct{}

// readCPU cannot tell the machine's idle time here: Adapt does nothing.
func readCPU() (cpuSample, bool) { return cpuSample{}, false }

func (cpuSample) since(cpuSample) Load { return Load{} }
