package master_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/master"
)

// pyConnectOnce connects once and prints what came of it on one line.
const pyConnectOnce = `
try:
    manager()
except RemoteError as e:
    print('RemoteError:', ' | '.join(str(e).split('\n')))
except Exception as e:
    print('other:', type(e).__name__, e)
else:
    print('connected')
`

// TestPythonMaxConns: a Python BaseManager client refused at --max-conns
// raises RemoteError saying the master is full, rather than an EOFError or
// a reset with no reason; the refusal is counted; once a place is free it
// connects.
func TestPythonMaxConns(t *testing.T) {
	for _, py := range qmtest.Pythons(t) {
		t.Run(py.String(), func(t *testing.T) {
			t.Parallel()
			addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{MaxConns: 1})
			native := qmtest.Dial(t, addr, "producer")

			begin := time.Now()
			out := strings.TrimSpace(runPy(t, py, addr, pyConnectOnce))
			took := time.Since(begin)
			if !strings.HasPrefix(out, "RemoteError:") || !strings.Contains(out, "master full: too many connections (qmaster --max-conns 1)") {
				t.Fatalf("python connect beyond --max-conns: %q, want a RemoteError saying the master is full", out)
			}
			t.Logf("python client, refused in %s: %s", took.Round(time.Millisecond), out)
			waitMetric(t, url, "qm_handshake_failures_total", 1, "reason", "max_conns")
			served(t, native)

			native.Close()
			qmtest.CheckFor(t, 5*time.Second, 50*time.Millisecond, func() error {
				if out := strings.TrimSpace(runPy(t, py, addr, pyConnectOnce)); out != "connected" {
					return fmt.Errorf("python connect once a place is free: %q", out)
				}
				return nil
			})
		})
	}
}
