package master_test

import (
	"testing"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
)

// TestPythonRequestLatency: a Python client's requests are timed in
// qm_request_duration_seconds as py_<method>, one observation each; a
// method qm does not serve counts as py_other rather than making up a
// label of its own.
func TestPythonRequestLatency(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{})
			runPy(t, py, addr, `
m = manager()
task = m.get_task_queue()
for i in range(10):
    task.put(i)
for i in range(10):
    task.get(timeout=5)
task.qsize()
try:
    task._callmethod('no_such_method')
except Exception:
    pass
`)
			fams := scrape(t, url, string(qmtest.Authkey))
			if fams["qm_request_duration_seconds"] == nil {
				t.Fatal("no qm_request_duration_seconds in /metrics")
			}
			for op, want := range map[string]uint64{"py_put": 10, "py_get": 10, "py_qsize": 1, "py_create": 1, "py_dummy": 1, "py_other": 1} {
				var got uint64
				for _, m := range fams["qm_request_duration_seconds"].GetMetric() {
					for _, lp := range m.GetLabel() {
						if lp.GetName() == "op" && lp.GetValue() == op {
							got = m.GetHistogram().GetSampleCount()
						}
					}
				}
				if got != want {
					t.Errorf("qm_request_duration_seconds_count{op=%q} = %d, want %d", op, got, want)
				}
			}
		})
	}
}
