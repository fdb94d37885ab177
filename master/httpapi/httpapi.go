// Package httpapi serves a master's operator endpoints over HTTP: the
// Prometheus metrics, a live dashboard with its actions, and the health
// checks of process supervisors. It knows the master only through
// Backend, and the network only through net/http: the master owns the
// listener, the http.Server and the sampler goroutine (Handler.Run).
package httpapi

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/qm-dev/qm/wire"
)

// Backend is the master as the pages see it. Its methods are safe for
// concurrent use.
type Backend interface {
	// Queues returns the figures of every queue, sorted by name, and
	// why they could not be listed, if they could not (a gateway whose
	// cluster is out of its reach): then none, or some.
	Queues() ([]wire.QueueStats, error)
	// Clients returns the connected clients, of every gateway of a
	// cluster, with the tasks each of this one's holds; and, if those of
	// the others could not be asked for, why.
	Clients(ctx context.Context) ([]Client, string)
	// Peek returns up to n ready tasks of queue, left in place.
	Peek(queue string, n int) ([]wire.Task, error)
	// Purge drops the ready tasks of queue and returns how many.
	Purge(queue string) (int, error)
	// Pause stops queue from handing out tasks; Resume undoes it.
	Pause(queue string) error
	Resume(queue string) error
	// Requeue moves the dead tasks ids (all if none) of queue's
	// dead-letter queue back to queue, and returns how many it moved.
	Requeue(queue string, ids []uint64) (int, error)
	// Drop removes the ready tasks ids of queue for good, and returns how
	// many it removed.
	Drop(queue string, ids []uint64) (int, error)
	// Ready returns why the master cannot serve now (shutting down, a data
	// directory that cannot be written), or nil.
	Ready() error
	// Current returns what Ready does, or else why the engine under the
	// queues is not caught up with its cluster (a JetStream node embedded
	// here after a start), or nil.
	Current() error
}

// Client is one connected client and the tasks it holds.
type Client struct {
	wire.ClientInfo
	Tasks []Lease
}

// Lease is a task a client holds, and since when.
type Lease struct {
	Queue   string
	ID      uint64
	Attempt int
	Since   time.Time
}

// Defaults for zero Config fields.
const (
	DefaultSampleEvery = 5 * time.Second
	DefaultHistory     = 120 // ten minutes at DefaultSampleEvery
)

// Config configures a Handler. Zero values mean the defaults.
type Config struct {
	// Backend is the master; required.
	Backend Backend
	// Token is what every request but the health checks must present, as
	// "Authorization: Bearer TOKEN" or through the dashboard's login form
	// (then kept in an HttpOnly cookie). Empty serves everything to
	// anyone who can connect.
	Token []byte
	// Tokens, if not nil, supersedes Token: it returns the named
	// credentials accepted now (a master's admin keys), and is called on
	// each request, so that a change takes effect at once. An empty list
	// admits no one. Actions are logged with the name of the token used.
	Tokens func() []Token
	// Metrics serves /metrics (a promhttp handler); nil serves 404.
	Metrics http.Handler
	// SampleEvery is the period of the dashboard's charts; default 5s.
	SampleEvery time.Duration
	// History is how many samples the charts keep; default 120.
	History int
	// Logger receives the operators' actions; nil discards them.
	Logger *slog.Logger
	// Throttle, if set, slows the guessing of credentials: a request
	// that presents wrong ones is answered after the wait it says, and
	// one from an address it calls saturated is refused (429) unchecked.
	Throttle Throttle
}

// Throttle counts the failed authentications of each address (a master's
// --auth-fail-limit).
type Throttle interface {
	// Failed counts a request from ip refused for its credentials and
	// returns how long to wait before answering it; release, if not nil,
	// is called once it is answered.
	Failed(ip string) (wait time.Duration, release func())
	// Saturated reports whether ip has as many refused requests waiting
	// as it may: its next one is refused at once, its credentials not
	// looked at.
	Saturated(ip string) bool
}

// Handler serves the endpoints. Create it with New; run its sampler with
// Run.
type Handler struct {
	cfg  Config
	log  *slog.Logger
	mux  *http.ServeMux
	hist *history
	// failLogged is when a failed login was last logged (UnixNano): at
	// most one a second, so that guessing does not flood the log.
	failLogged atomic.Int64
	// sessionKey keys the session cookies (sessionValue), random for
	// each process.
	sessionKey [32]byte
}

// Token is one credential of the endpoints.
type Token struct {
	// Name names it in the log; letters, digits, '-', '_', '.'.
	Name string
	// Secret is what a request presents.
	Secret []byte
}

// tokenName is the name of Config.Token.
const tokenName = "token"

// tokens returns the credentials accepted now; open says that none is
// needed.
func (h *Handler) tokens() (ts []Token, open bool) {
	if h.cfg.Tokens != nil {
		return h.cfg.Tokens(), false
	}
	if len(h.cfg.Token) == 0 {
		return nil, true
	}
	return []Token{{Name: tokenName, Secret: h.cfg.Token}}, false
}

// match returns the token whose secret is secret, comparing with every
// one in constant time so the cost tells nothing of which matched. Spaces
// around a secret do not count: a header or a form field cannot keep
// them, and a key file may hold them.
func match(ts []Token, secret []byte) (Token, bool) {
	if len(secret) == 0 {
		return Token{}, false
	}
	which := -1
	for i := len(ts) - 1; i >= 0; i-- {
		which = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(bytes.TrimSpace(ts[i].Secret), secret), i, which)
	}
	if which < 0 {
		return Token{}, false
	}
	return ts[which], true
}

// sessionValue is the session cookie of t: its name and a MAC of its
// secret under this Handler's random key, never the secret. It stays
// valid while t is accepted and this process runs. The random key keeps
// a guess of the secret from being turned into a cookie offline, and
// tried unthrottled (cookies are not counted as failures, see presents).
func (h *Handler) sessionValue(t Token) string {
	mac := hmac.New(sha256.New, h.sessionKey[:])
	mac.Write([]byte("qm dashboard session v3\x00" + t.Name + "\x00"))
	mac.Write(t.Secret)
	return t.Name + "." + hex.EncodeToString(mac.Sum(nil))
}

type tokenNameKey struct{}

// TokenName returns the name of the token that authorized the request of
// ctx, or "" if the endpoints are open.
func TokenName(ctx context.Context) string {
	name, _ := ctx.Value(tokenNameKey{}).(string)
	return name
}

// sessionCookie names the dashboard's cookie.
const sessionCookie = "qm_session"

//go:embed web
var webFS embed.FS

// New returns a Handler for cfg.
func New(cfg Config) (*Handler, error) {
	if cfg.Backend == nil {
		return nil, errors.New("httpapi: Config.Backend is required")
	}
	if cfg.SampleEvery < 0 || cfg.History < 0 {
		return nil, errors.New("httpapi: SampleEvery and History must not be negative")
	}
	if cfg.SampleEvery == 0 {
		cfg.SampleEvery = DefaultSampleEvery
	}
	if cfg.History == 0 {
		cfg.History = DefaultHistory
	}
	h := &Handler{cfg: cfg, log: cfg.Logger, hist: newHistory(cfg.History)}
	if _, err := rand.Read(h.sessionKey[:]); err != nil {
		return nil, fmt.Errorf("httpapi: session key: %w", err)
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	static, err := fs.Sub(webFS, "web")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { writeText(w, http.StatusOK, "ok\n") })
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("POST /login", h.login)
	mux.HandleFunc("POST /logout", h.logout)
	mux.Handle("GET /metrics", h.auth(h.metrics()))
	mux.Handle("GET /{$}", h.authPage(serveFile(static, "index.html")))
	mux.Handle("GET /static/", h.auth(http.StripPrefix("/static/", http.FileServerFS(static))))
	mux.Handle("GET /api/state", h.auth(http.HandlerFunc(h.state)))
	mux.Handle("POST /api/actions", h.auth(http.HandlerFunc(h.action)))
	h.mux = mux
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'")
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) metrics() http.Handler {
	if h.cfg.Metrics == nil {
		return http.NotFoundHandler()
	}
	return h.cfg.Metrics
}

// readyz answers whether the master serves (Backend.Ready), or with
// ?current whether it is also caught up with its cluster
// (Backend.Current): the check a rolling restart waits for before it
// takes the next node down.
func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	ready := h.cfg.Backend.Ready
	if r.URL.Query().Has("current") {
		ready = h.cfg.Backend.Current
	}
	if err := ready(); err != nil {
		writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error()+"\n")
		return
	}
	writeText(w, http.StatusOK, "ready\n")
}

// authorized reports whether r carries a token (as a bearer token or the
// session cookie), its name, and whether through the cookie.
func (h *Handler) authorized(r *http.Request) (name string, ok, byCookie bool) {
	ts, open := h.tokens()
	if open {
		return "", true, false
	}
	if tok, found := bearer(r); found {
		t, ok := match(ts, []byte(tok))
		return t.Name, ok, false
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		// The name may hold dots; the MAC after the last holds none.
		if i := strings.LastIndexByte(c.Value, '.'); i > 0 {
			name := c.Value[:i]
			for _, t := range ts {
				if t.Name == name && subtle.ConstantTimeCompare([]byte(c.Value), []byte(h.sessionValue(t))) == 1 {
					return name, true, true
				}
			}
		}
		return "", false, true
	}
	return "", false, false
}

// bearer returns the token of r's Authorization header, whose scheme is
// case-insensitive (RFC 9110).
func bearer(r *http.Request) (string, bool) {
	scheme, tok, found := strings.Cut(r.Header.Get("Authorization"), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(tok), true
}

// presents reports whether r carries a credential that may be guessed:
// an Authorization header. Only those (and logins) count as failed when
// refused; a session cookie is a MAC no one guesses, and a stale one (its
// key changed) would count a failure at each of the page's polls.
func presents(r *http.Request) bool { return r.Header.Get("Authorization") != "" }

// saturated answers r, and reports true, if its address may not try
// credentials now (Config.Throttle).
func (h *Handler) saturated(w http.ResponseWriter, r *http.Request) bool {
	if h.cfg.Throttle == nil || !h.cfg.Throttle.Saturated(clientIP(r)) {
		return false
	}
	w.Header().Set("Retry-After", "5")
	writeText(w, http.StatusTooManyRequests, "too many failed authentications from this address; try again later\n")
	return true
}

// failed counts r's wrong credentials and waits as Config.Throttle says,
// or until r ends.
func (h *Handler) failed(r *http.Request) {
	if h.cfg.Throttle == nil {
		return
	}
	wait, release := h.cfg.Throttle.Failed(clientIP(r))
	if release != nil {
		// The place stays held for the whole wait, however soon the
		// client hangs up: else a guesser that stops listening after a
		// few milliseconds would take it back at once.
		time.AfterFunc(max(wait, 0), release)
	}
	if wait <= 0 {
		return
	}
	done := time.NewTimer(wait)
	defer done.Stop()
	select {
	case <-done.C:
	case <-r.Context().Done():
	}
}

// clientIP is the address r came from, without its port.
func clientIP(r *http.Request) string {
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// auth serves next to authorized requests only. A state-changing request
// authorized by the cookie must also carry the header the page's script
// sets, which a form on another site cannot (SameSite=Strict is the
// first guard against such forgeries; this is the second).
func (h *Handler) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if presents(r) && h.saturated(w, r) {
			return
		}
		name, ok, byCookie := h.authorized(r)
		if !ok {
			if presents(r) {
				h.failed(r)
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="qm"`)
			writeText(w, http.StatusUnauthorized, "unauthorized: send Authorization: Bearer KEY (the master's authkey, --http-token, or with --acl the secret of a key with admin)\n")
			return
		}
		if byCookie && r.Method != http.MethodGet && r.Header.Get("X-QM-Dashboard") != "1" {
			writeText(w, http.StatusForbidden, "forbidden: missing X-QM-Dashboard header\n")
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenNameKey{}, name)))
	})
}

// authPage is auth for the dashboard: an unauthorized visitor gets the
// login form instead of a bare 401.
func (h *Handler) authPage(next http.Handler) http.Handler {
	login := serveFile(webFS, "web/login.html")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if presents(r) && h.saturated(w, r) {
			return
		}
		if _, ok, _ := h.authorized(r); !ok {
			if presents(r) {
				h.failed(r)
			}
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusUnauthorized)
			login.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// login checks the token of the login form and, if it is right, keeps
// the session in an HttpOnly cookie.
func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	if h.saturated(w, r) {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	tok := strings.TrimSpace(r.PostFormValue("token"))
	ts, open := h.tokens()
	t, ok := match(ts, []byte(tok))
	if !open && !ok {
		h.failed(r)
		if now := time.Now().UnixNano(); now-h.failLogged.Load() >= int64(time.Second) {
			h.failLogged.Store(now)
			h.log.Warn("dashboard login failed (at most one such line a second)", "remote", r.RemoteAddr)
		}
		b, err := fs.ReadFile(webFS, "web/login.html")
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		b = bytes.Replace(b, []byte("<!--error-->"), []byte(`<p class="err" role="alert">That key is not right.</p>`), 1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write(b)
		return
	}
	if !open {
		http.SetCookie(w, &http.Cookie{
			Name: sessionCookie, Value: h.sessionValue(t), Path: "/",
			HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
		})
	}
	h.log.Info("dashboard login", "remote", r.RemoteAddr, "key", t.Name)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// serveFile serves one file of fsys whatever the request path.
func serveFile(fsys fs.FS, name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
		}
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(b)
	})
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(s))
}
