package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
)

// TestTLS: a master with --tls-cert, --tls-key and --tls-client-ca serves
// qworker and qmaster map that trust its CA and present a certificate;
// a worker trusting another CA, a client without a certificate, one
// with a certificate of another CA and a plaintext client are each
// refused with a clear error, and the master
// goes on serving.
func TestTLS(t *testing.T) {
	ca := qmtest.NewCA(t, "qm-e2e")
	other := qmtest.NewCA(t, "other")
	mcert, mkey := ca.Issue(t, "master")
	ccert, ckey := ca.Issue(t, "client")
	ocert, okey := other.Issue(t, "client of another CA")
	m, addr := startMaster(t, "--tls-cert", mcert, "--tls-key", mkey, "--tls-client-ca", ca.CertFile)
	if !strings.Contains(m.logs(), `tls="on, client certificates required"`) {
		t.Errorf("the listening line does not say TLS is on:\n%s", m.logs())
	}
	clientTLS := []string{"--tls-ca", ca.CertFile, "--tls-cert", ccert, "--tls-key", ckey}

	start(t, nil, nil, "qworker", append([]string{"--server", addr, "--builtin", "square", "--concurrency", "4"}, clientTLS...)...)
	out, stderr, code := run(t, seq(100), append([]string{"map", "--server", addr, "--timeout", "60s"}, clientTLS...)...)
	if code != 0 {
		t.Fatalf("map over TLS exited %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 100 || lines[99] != strconv.Itoa(100*100) {
		t.Fatalf("map over TLS: %d lines, last %q", len(lines), lines[len(lines)-1])
	}

	// A worker that trusts another CA stops at once: retrying cannot help.
	w := start(t, nil, nil, "qworker", "--server", addr, "--builtin", "square", "--tls-ca", other.CertFile, "--tls-cert", ccert, "--tls-key", ckey)
	if code := w.wait(t, 20*time.Second); code != 1 || !strings.Contains(w.logs(), "certificate signed by unknown authority") {
		t.Errorf("worker trusting another CA: exit %d, stderr:\n%s", code, w.logs())
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--tls-ca", ca.CertFile}, "tls: certificate required (the master requires a client certificate: see --tls-cert and --tls-key)"},
		{"a client certificate of another CA", []string{"--tls-ca", ca.CertFile, "--tls-cert", ocert, "--tls-key", okey},
			"is it signed by a CA the master trusts, its --tls-client-ca?"},
		{"plaintext", nil, "does the master require TLS?"},
	} {
		_, stderr, code := run(t, "", append([]string{"inspect", "--server", addr, "--connect-timeout", "10s"}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("inspect, %s: exit %d, stderr %q; want 1 and %q", tc.name, code, stderr, tc.want)
		}
	}
	out, stderr, code = run(t, "", append([]string{"inspect", "--server", addr, "--json"}, clientTLS...)...)
	if code != 0 || !strings.Contains(out, `"done":100`) {
		t.Errorf("inspect over TLS after the refusals: exit %d, %s %s", code, out, stderr)
	}
}
