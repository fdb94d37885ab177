package master_test

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qm-dev/qm/internal/qmtest"
	"github.com/qm-dev/qm/internal/tlsconfig"
	"github.com/qm-dev/qm/master"
	"github.com/qm-dev/qm/wire"
)

// tlsDial connects to addr over TLS with tcfg (nil: plaintext).
func tlsDial(t *testing.T, addr string, tcfg *tls.Config) (*wire.Client, error) {
	t.Helper()
	c, err := wire.Dial(ctxFor(t, 10*time.Second), wire.Config{
		Addr: addr, Authkey: qmtest.Authkey, Role: "producer", Name: t.Name(), TLS: tcfg, HandshakeTimeout: 5 * time.Second,
	})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func tlsClient(t *testing.T, o tlsconfig.ClientOptions) *tls.Config {
	t.Helper()
	cfg, err := tlsconfig.Client(o)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// roundTrip puts one item and takes it back through c.
func roundTrip(t *testing.T, c *wire.Client) {
	t.Helper()
	ctx := ctxFor(t, 10*time.Second)
	if _, err := c.Put(ctx, "tls", []any{"hello"}, wire.PutOptions{}); err != nil {
		t.Fatalf("put: %v", err)
	}
	tasks, err := c.Get(ctx, "tls", wire.GetOptions{NoAck: true, Timeout: time.Second})
	if err != nil || len(tasks) != 1 {
		t.Fatalf("get: %d tasks, %v", len(tasks), err)
	}
}

func TestTLS(t *testing.T) {
	ca := qmtest.NewCA(t, "qm-test")
	other := qmtest.NewCA(t, "other")
	certFile, keyFile := ca.Issue(t, "master")
	scfg, err := tlsconfig.Server(certFile, keyFile, "")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := qmtest.StartMaster(t, master.Config{TLS: scfg, HandshakeTimeout: 1500 * time.Millisecond})

	t.Run("trusted CA", func(t *testing.T) {
		c, err := tlsDial(t, addr, tlsClient(t, tlsconfig.ClientOptions{CAFile: ca.CertFile}))
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		roundTrip(t, c)
	})
	t.Run("other CA refused", func(t *testing.T) {
		_, err := tlsDial(t, addr, tlsClient(t, tlsconfig.ClientOptions{CAFile: other.CertFile}))
		var cve *tls.CertificateVerificationError
		if !errors.As(err, &cve) || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Fatalf("dial with another CA: %v, want a certificate verification error", err)
		}
		t.Logf("client error: %v", err)
	})
	t.Run("wrong server name refused", func(t *testing.T) {
		_, err := tlsDial(t, addr, tlsClient(t, tlsconfig.ClientOptions{CAFile: ca.CertFile, ServerName: "elsewhere.example"}))
		if err == nil || !strings.Contains(err.Error(), "elsewhere.example") {
			t.Fatalf("dial with a wrong server name: %v", err)
		}
	})
	t.Run("plaintext client", func(t *testing.T) {
		start := time.Now()
		_, err := tlsDial(t, addr, nil)
		if err == nil || !strings.Contains(err.Error(), "does the master require TLS?") {
			t.Fatalf("plaintext dial: %v, want a hint at TLS", err)
		}
		t.Logf("client error: %v", err)
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("plaintext dial took %s", d)
		}
	})
	t.Run("master unharmed", func(t *testing.T) {
		c, err := tlsDial(t, addr, tlsClient(t, tlsconfig.ClientOptions{CAFile: ca.CertFile}))
		if err != nil {
			t.Fatalf("dial after the failures: %v", err)
		}
		roundTrip(t, c)
	})
}

func TestTLSClientCertificates(t *testing.T) {
	ca := qmtest.NewCA(t, "qm-test")
	other := qmtest.NewCA(t, "other")
	certFile, keyFile := ca.Issue(t, "master")
	scfg, err := tlsconfig.Server(certFile, keyFile, ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	addr, url, _ := qmtest.StartMasterHTTP(t, master.Config{TLS: scfg})
	clientCert, clientKey := ca.Issue(t, "worker")
	strangerCert, strangerKey := other.Issue(t, "stranger")

	for _, tc := range []struct {
		name       string
		cert, key  string
		wantRefuse bool
	}{
		{"no client certificate", "", "", true},
		{"certificate of another CA", strangerCert, strangerKey, true},
		{"certificate of the CA", clientCert, clientKey, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tlsDial(t, addr, tlsClient(t, tlsconfig.ClientOptions{CAFile: ca.CertFile, CertFile: tc.cert, KeyFile: tc.key}))
			if !tc.wantRefuse {
				if err != nil {
					t.Fatalf("dial: %v", err)
				}
				roundTrip(t, c)
				return
			}
			if err == nil || !strings.Contains(err.Error(), "tls: ") {
				t.Fatalf("dial: %v, want a TLS error", err)
			}
			t.Logf("client error: %v", err)
		})
	}
	waitMetric(t, url, "qm_handshake_failures_total", 2, "reason", "tls")
}

func TestTLSConfigErrors(t *testing.T) {
	if _, err := master.New(master.Config{Authkey: qmtest.Authkey, TLS: &tls.Config{MinVersion: tls.VersionTLS11}}); err == nil {
		t.Error("master.New accepted TLS 1.1")
	}
	if _, err := tlsconfig.Server("", "key.pem", ""); err == nil {
		t.Error("tlsconfig.Server accepted no certificate")
	}
	if _, err := tlsconfig.Client(tlsconfig.ClientOptions{CertFile: "c.pem"}); err == nil {
		t.Error("tlsconfig.Client accepted a certificate without its key")
	}
	if _, err := tlsconfig.Client(tlsconfig.ClientOptions{CAFile: "/nonexistent/ca.pem"}); err == nil {
		t.Error("tlsconfig.Client accepted a missing CA file")
	}
}
