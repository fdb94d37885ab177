package master

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/qm-dev/qm/master/httpapi"
)

// adminHTTP is the state of the operator HTTP endpoints (ServeAdmin).
type adminHTTP struct {
	once    sync.Once
	handler *httpapi.Handler
	err     error

	// servers are the http.Servers of running ServeAdmin calls; guarded
	// by Server.mu.
	servers map[*http.Server]struct{}
}

// ServeAdmin serves the operators' HTTP endpoints on ln until Shutdown or
// Close, then returns ErrServerClosed; it closes ln. The endpoints are
// /metrics (Prometheus), the dashboard at / with its API under /api/,
// and /healthz and /readyz. All but the health checks need
// Config.HTTPToken (or the authkey) as a bearer token or the dashboard's
// cookie.
func (s *Server) ServeAdmin(ln net.Listener) error {
	h, err := s.adminHandler()
	if err != nil {
		ln.Close()
		return err
	}
	hs := &http.Server{
		Handler:           s.joinHTTP(h),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(&throttledLog{log: s.log.With("http", ln.Addr().String()), every: logEvery{period: time.Second}}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.http.servers == nil {
		s.http.servers = make(map[*http.Server]struct{})
	}
	s.http.servers[hs] = struct{}{}
	s.mu.Unlock()

	err = hs.Serve(ln)
	s.mu.Lock()
	delete(s.http.servers, hs)
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return err
}

// throttledLog is the HTTP server's error log: its lines go to log as
// warnings, at most one a second, so that a flood of connections (accepts
// failing at a full table of file descriptors, one after another) cannot
// flood the log. The next line let through counts those dropped.
type throttledLog struct {
	log     *slog.Logger
	every   logEvery
	dropped atomic.Int64
}

func (l *throttledLog) Write(p []byte) (int, error) {
	if !l.every.ok(time.Now()) {
		l.dropped.Add(1)
		return len(p), nil
	}
	msg := strings.TrimSuffix(string(p), "\n")
	if n := l.dropped.Swap(0); n > 0 {
		l.log.Warn(msg, "http_errors_not_logged", n)
	} else {
		l.log.Warn(msg)
	}
	return len(p), nil
}

// joinHTTP runs each request as a goroutine the server owns, so that
// Close and Shutdown return only once every handler has (http.Server's
// Close does not wait for them).
func (s *Server) joinHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			http.Error(w, "master shutting down", http.StatusServiceUnavailable)
			return
		}
		s.wg.Add(1)
		s.mu.Unlock()
		defer s.wg.Done()
		next.ServeHTTP(w, r)
	})
}

// adminHandler returns the endpoints' handler, made on first use along
// with the goroutine that samples the queues for the dashboard's charts.
func (s *Server) adminHandler() (*httpapi.Handler, error) {
	a := &s.http
	a.once.Do(func() {
		token := s.cfg.HTTPToken
		if len(token) == 0 {
			token = s.cfg.Authkey
		}
		if len(token) == 0 && s.cfg.ACL == nil {
			s.log.Warn("HTTP endpoints without authentication (--insecure-no-auth and no --http-token): anyone who can connect may purge queues")
		}
		a.handler, a.err = httpapi.New(httpapi.Config{
			Backend:     adminBackend{s},
			Token:       token,
			Tokens:      s.httpTokens(),
			Metrics:     promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}),
			SampleEvery: s.cfg.DashboardSampleEvery,
			Logger:      s.log,
			Throttle:    httpThrottle{s: s, fails: newFailTracker(&s.cfg)},
		})
		if a.err == nil {
			s.goRun(func() { a.handler.Run(s.ctx) })
		}
	})
	return a.handler, a.err
}

// shutdownHTTP stops the HTTP endpoints, letting requests in progress
// finish until ctx ends.
func (s *Server) shutdownHTTP(ctx context.Context) {
	for _, hs := range s.httpServers() {
		if err := hs.Shutdown(ctx); err != nil {
			hs.Close()
		}
	}
}

// closeHTTP stops the HTTP endpoints at once.
func (s *Server) closeHTTP() {
	for _, hs := range s.httpServers() {
		hs.Close()
	}
}

func (s *Server) httpServers() []*http.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*http.Server, 0, len(s.http.servers))
	for hs := range s.http.servers {
		out = append(out, hs)
	}
	return out
}

// httpTokenName names HTTPToken among the HTTP endpoints' credentials
// when an ACL is served.
const httpTokenName = "http-token"

// httpTokens returns, with an ACL, what tells the HTTP endpoints which
// credentials they accept: the secret of every key with admin, under
// its name, read at each request so that SetACL takes effect at once,
// and HTTPToken (as "http-token") if set. Without an ACL it returns nil:
// the endpoints take HTTPToken or the Authkey.
func (s *Server) httpTokens() func() []httpapi.Token {
	if s.cfg.ACL == nil {
		return nil
	}
	return func() []httpapi.Token {
		var ts []httpapi.Token
		if len(s.cfg.HTTPToken) > 0 {
			ts = append(ts, httpapi.Token{Name: httpTokenName, Secret: s.cfg.HTTPToken})
		}
		for _, k := range s.access.rules.Load().Keys() {
			if k.Admin {
				ts = append(ts, httpapi.Token{Name: k.Name, Secret: k.Secret})
			}
		}
		return ts
	}
}
