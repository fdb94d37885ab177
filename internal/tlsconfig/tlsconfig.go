// Package tlsconfig builds the crypto/tls configurations of qm's commands
// from their certificate and key files.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// Server returns the master's TLS configuration (TLS 1.2 and later) with
// the certificate in certFile and its key in keyFile. A non-empty
// clientCAFile requires every client to present a certificate signed by a
// CA in that file.
func Server(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientOptions are a client's TLS settings, as its flags give them.
type ClientOptions struct {
	// Enabled uses TLS even without any of the files (system roots).
	Enabled bool
	// CAFile holds the CA certificates to trust instead of the system's.
	CAFile string
	// CertFile and KeyFile are a client certificate and its key.
	CertFile, KeyFile string
	// ServerName is the name to verify in the master's certificate;
	// default the host of the address dialled.
	ServerName string
}

// On reports whether the options ask for TLS at all.
func (o ClientOptions) On() bool {
	return o.Enabled || o.CAFile != "" || o.CertFile != "" || o.KeyFile != "" || o.ServerName != ""
}

// Client returns a client's TLS configuration, or nil if o does not ask
// for TLS.
func Client(o ClientOptions) (*tls.Config, error) {
	if !o.On() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pool, err := loadPool(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if err := o.Check(); err != nil {
		return nil, err
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// AddClientFlags registers a client's TLS flags on fs: --tls, --tls-ca,
// --tls-cert, --tls-key and --tls-server-name.
func AddClientFlags(fs *pflag.FlagSet, o *ClientOptions) {
	fs.BoolVar(&o.Enabled, "tls", false, "connect over TLS, trusting the system's CAs (implied by the other --tls-* flags)")
	fs.StringVar(&o.CAFile, "tls-ca", "", "connect over TLS, trusting the CA certificates in this PEM `file` instead of the system's")
	fs.StringVar(&o.CertFile, "tls-cert", "", "client certificate (PEM `file`), for a master started with --tls-client-ca")
	fs.StringVar(&o.KeyFile, "tls-key", "", "private key (PEM `file`) of --tls-cert")
	fs.StringVar(&o.ServerName, "tls-server-name", "", "`name` the master's certificate must carry (default: the host of --server)")
}

// Check reports flags that cannot work together, without reading files.
func (o ClientOptions) Check() error {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	return nil
}
