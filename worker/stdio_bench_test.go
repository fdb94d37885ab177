package worker_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qm-dev/qm/worker"
)

// BenchmarkStdioPython runs tasks through four children of the Python
// helper, without a master: the cost of the exchange alone.
func BenchmarkStdioPython(b *testing.B) {
	if _, err := exec.LookPath("python3"); err != nil {
		b.Skip("no python3")
	}
	helper, err := filepath.Abs("../python")
	if err != nil {
		b.Fatal(err)
	}
	b.Setenv("PYTHONPATH", helper)
	s, err := worker.NewStdio(worker.StdioConfig{
		Command:  []string{"python3", "-c", "from qmworker import run\nrun(lambda x: x * x)"},
		Children: 4,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	tk := task(&testing.T{}, 12)
	b.ResetTimer()
	var wg sync.WaitGroup
	var next sync.Mutex
	left := b.N
	for range s.Slots() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				next.Lock()
				if left == 0 {
					next.Unlock()
					return
				}
				left--
				next.Unlock()
				if _, err := s.Handle(context.Background(), tk); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
