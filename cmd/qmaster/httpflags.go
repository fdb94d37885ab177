package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/qm-dev/qm/master"
	"github.com/spf13/cobra"
)

// httpOptions are the root command's flags for the operators' HTTP
// endpoints (metrics, dashboard, health checks).
type httpOptions struct {
	Addr      string
	Token     string
	TokenFile string
}

// httpTokenEnv is read for the HTTP token when no flag gives one.
const httpTokenEnv = "QM_HTTP_TOKEN"

func addHTTPFlags(cmd *cobra.Command, o *httpOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.Addr, "http-addr", "", "serve /metrics, the dashboard, /healthz and /readyz on this `host:port` (off by default; e.g. 127.0.0.1:5080)")
	fl.StringVar(&o.Token, "http-token", "", "the bearer `token` of the HTTP endpoints instead of the authkey (with --acl: besides the secrets of the keys with admin); visible in `ps`: prefer "+httpTokenEnv+" or --http-token-file")
	fl.StringVar(&o.TokenFile, "http-token-file", "", "read the HTTP endpoints' token from this `file`")
}

func (o *httpOptions) validate() error {
	switch {
	case o.Addr == "" && (o.Token != "" || o.TokenFile != ""):
		return usageErrorf("--http-token and --http-token-file need --http-addr")
	case o.Token != "" && o.TokenFile != "":
		return usageErrorf("give --http-token or --http-token-file, not both")
	}
	return nil
}

// token returns the HTTP token the flags or the environment give, or nil
// (then the authkey serves).
func (o *httpOptions) token(getenv func(string) string) ([]byte, error) {
	switch {
	case o.Addr == "":
		return nil, nil
	case o.Token != "":
		return []byte(o.Token), nil
	case o.TokenFile != "":
		b, err := os.ReadFile(o.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("read HTTP token file: %w", err)
		}
		if b = bytes.TrimRight(b, "\r\n"); len(b) == 0 {
			return nil, fmt.Errorf("HTTP token file %s is empty", o.TokenFile)
		}
		return b, nil
	}
	if v := getenv(httpTokenEnv); v != "" {
		return []byte(v), nil
	}
	return nil, nil
}

// serveHTTP starts the HTTP endpoints of srv if --http-addr is set, and
// returns a func that waits for them to stop (after srv's Shutdown or
// Close).
func (o *httpOptions) serveHTTP(srv *master.Server, log *slog.Logger) (wait func(), err error) {
	if o.Addr == "" {
		return func() {}, nil
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("--http-addr: %w", err)
	}
	log.Info("HTTP endpoints listening", "http_addr", ln.Addr().String(),
		"metrics", "/metrics", "dashboard", "/", "health", "/healthz /readyz")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.ServeAdmin(ln); err != nil && !errors.Is(err, master.ErrServerClosed) {
			log.Error("HTTP endpoints stopped", "err", err)
		}
	}()
	return func() { <-done }, nil
}
