package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/qm-dev/qm/auth"
	"github.com/qm-dev/qm/internal/tlsconfig"
	"github.com/qm-dev/qm/wire"
	"github.com/spf13/cobra"
)

// clientOptions are the flags every subcommand that talks to a master
// shares.
type clientOptions struct {
	Server         string
	Authkey        string
	AuthkeyFile    string
	InsecureNoAuth bool
	ConnectTimeout time.Duration
	TLS            tlsconfig.ClientOptions
}

// Help texts shared by the server and its client subcommands.
const (
	authkeyHelp     = "the shared `key`; visible to other users in `ps`; prefer QM_AUTHKEY or --authkey-file"
	authkeyFileHelp = "read the shared key from this `file` (trailing newlines are ignored)"
)

// addClientFlags registers the connection flags on cmd.
func addClientFlags(cmd *cobra.Command, o *clientOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.Server, "server", "127.0.0.1:5000", "`host:port` of the master, or several, comma-separated, of gateways to one cluster (tried from a random one)")
	fl.StringVar(&o.Authkey, "authkey", "", authkeyHelp)
	fl.StringVar(&o.AuthkeyFile, "authkey-file", "", authkeyFileHelp)
	fl.BoolVar(&o.InsecureNoAuth, "insecure-no-auth", false, "connect to a master started with --insecure-no-auth (sends no key)")
	fl.DurationVar(&o.ConnectTimeout, "connect-timeout", 5*time.Second, "how long to wait to connect and authenticate")
	tlsconfig.AddClientFlags(fl, &o.TLS)
}

// validate checks the flags without side effects.
func (o *clientOptions) validate() error {
	if o.InsecureNoAuth && (o.Authkey != "" || o.AuthkeyFile != "") {
		return usageErrorf("--insecure-no-auth sends no key: drop --authkey and --authkey-file")
	}
	if o.ConnectTimeout <= 0 {
		return usageErrorf("--connect-timeout must be positive")
	}
	if err := o.TLS.Check(); err != nil {
		return &usageError{Err: err}
	}
	return nil
}

// key returns the authkey to present: nil under --insecure-no-auth, which
// also ignores QM_AUTHKEY.
func (o *clientOptions) key(getenv func(string) string) ([]byte, error) {
	if o.InsecureNoAuth {
		return nil, nil
	}
	key, err := auth.LoadKey(o.Authkey, o.AuthkeyFile, getenv)
	if err != nil {
		return nil, err
	}
	if key == nil {
		return nil, errors.New("no authkey: give the master's key with --authkey-file FILE, " +
			"the QM_AUTHKEY environment variable or --authkey KEY " +
			"(or --insecure-no-auth if the master runs without one)")
	}
	return key, nil
}

// connect dials the master as role. name tells the master which command
// this is. Connection and authentication failures are *connError.
func (o *clientOptions) connect(ctx context.Context, f *factory, role, name string) (*wire.Client, error) {
	key, err := o.key(f.getenv)
	if err != nil {
		return nil, err
	}
	tcfg, err := tlsconfig.Client(o.TLS)
	if err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	dctx, cancel := context.WithTimeout(ctx, o.ConnectTimeout)
	defer cancel()
	c, err := wire.Dial(dctx, wire.Config{
		Addr:             o.Server,
		Authkey:          key,
		Role:             role,
		Name:             fmt.Sprintf("qmaster %s (%s:%d)", name, host, os.Getpid()),
		DialTimeout:      o.ConnectTimeout,
		HandshakeTimeout: o.ConnectTimeout,
		TLS:              tcfg,
	})
	if err == nil {
		return c, nil
	}
	switch {
	case errors.Is(err, auth.ErrAuthFailed):
		err = fmt.Errorf("%s (master %s; the key comes from --authkey-file, QM_AUTHKEY or --authkey)", authMessage(err), o.Server)
	case errors.Is(err, wire.ErrBadPreamble) && key == nil:
		err = fmt.Errorf("%w (drop --insecure-no-auth and give the key with --authkey-file, QM_AUTHKEY or --authkey)", err)
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case dctx.Err() != nil:
		// The connect timed out. If it did so in the handshake, the master
		// may be waiting for a TLS client: wire asks that of an early end,
		// and it stands here too, whichever timeout ran out first.
		msg := fmt.Sprintf("connect %s: no answer within %s", o.Server, o.ConnectTimeout)
		if tcfg == nil && inHandshake(err) {
			msg += " (" + tlsQuestion + ")"
		}
		err = errors.New(msg)
	}
	return nil, &connError{err}
}

// tlsQuestion is what a plaintext client that got no challenge asks.
const tlsQuestion = "does the master require TLS? see --tls and --tls-ca"

// inHandshake reports whether err came after the TCP connection was made:
// the master closed it or did not answer in the handshake. A failed TCP
// connect is a "dial" error.
func inHandshake(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Op != "dial"
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// authMessage returns the outermost part of an authentication error that
// starts with "authentication failed", dropping the "connect ADDR:"
// context that the caller reports in its own words.
func authMessage(err error) string {
	if s, ok := authPart(err); ok {
		return s
	}
	return auth.ErrAuthFailed.Error() + ": " + err.Error()
}

// authPart finds authMessage's part in err's tree. wire.Dial joins the
// errors of the masters it tried, which errors.Unwrap does not open.
func authPart(err error) (string, bool) {
	if s := err.Error(); strings.HasPrefix(s, auth.ErrAuthFailed.Error()) {
		return s, true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if e := u.Unwrap(); e != nil {
			return authPart(e)
		}
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if errors.Is(e, auth.ErrAuthFailed) {
				return authPart(e)
			}
		}
	}
	return "", false
}
