package gomaxprocs

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
)

// cpuSample is a reading of the process's CPU time and the machine's.
type cpuSample struct {
	at          time.Time
	proc        time.Duration // the process's user and system time
	idle, total uint64        // the machine's, in clock ticks, over all CPUs
	cpus        int
}

// readCPU reads the process's rusage and the machine's /proc/stat.
func readCPU() (cpuSample, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuSample{}, false
	}
	s := cpuSample{at: time.Now(), proc: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuSample{}, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		switch {
		case len(f) > 0 && string(f[0]) == "cpu":
			// user nice system idle iowait irq softirq steal: idle and
			// iowait are time no task could use.
			for i := 1; i < len(f) && i <= 8; i++ {
				v, err := strconv.ParseUint(string(f[i]), 10, 64)
				if err != nil {
					return cpuSample{}, false
				}
				s.total += v
				if i == 4 || i == 5 {
					s.idle += v
				}
			}
		case len(f) > 0 && bytes.HasPrefix(f[0], []byte("cpu")):
			s.cpus++
		}
	}
	return s, s.total > 0 && s.cpus > 0
}

// since is the load over the period from prev to s.
func (s cpuSample) since(prev cpuSample) Load {
	wall := s.at.Sub(prev.at)
	total := s.total - prev.total
	if wall <= 0 || total == 0 {
		return Load{}
	}
	return Load{
		Busy: float64(s.proc-prev.proc) / float64(wall),
		Idle: float64(s.idle-prev.idle) / float64(total) * float64(s.cpus),
	}
}
