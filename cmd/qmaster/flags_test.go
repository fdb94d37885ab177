package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qm-dev/qm/internal/cliflag"
	"github.com/qm-dev/qm/master/jsqueue"
)

// testFactory returns a factory on buffers, with an empty environment.
func testFactory(stdin string) (*factory, *bytes.Buffer, *bytes.Buffer) {
	var out, errOut bytes.Buffer
	return &factory{
		In:     strings.NewReader(stdin),
		Out:    &out,
		ErrOut: &errOut,
		Getenv: func(string) string { return "" },
	}, &out, &errOut
}

// execute runs cmd under a root like qmaster's with args and returns the
// exit code main would give.
func execute(t *testing.T, cmd *cobra.Command, args ...string) (int, string) {
	t.Helper()
	root := cmd
	if cmd.Name() != "qmaster" {
		root = &cobra.Command{Use: "qmaster"}
		setupRoot(root)
		root.AddCommand(cmd)
		args = append([]string{cmd.Name()}, args...)
	}
	root.SetArgs(args)
	root.SetOut(io.Discard)
	var errOut bytes.Buffer
	ran, err := root.ExecuteC()
	code := exitCode(&errOut, ran, err)
	return code, errOut.String()
}

func TestRootFlags(t *testing.T) {
	f, _, _ := testFactory("")
	var got *serveOptions
	cmd := newRootCmd(f, func(o *serveOptions) error { got = o; return nil })
	code, msg := execute(t, cmd, "--addr", "127.0.0.1:7000", "--authkey-file", "/k", "--max-attempts", "5",
		"--lease", "1m", "--max-queue-len", "10", "--max-message-size", "16MiB", "--handshake-timeout", "2s",
		"--shutdown-timeout", "0", "--log-level", "debug", "--log-format", "json",
		"--data-dir", "/d", "--fsync", "interval", "--fsync-interval", "50ms",
		"--py-typeid", "get_task_queue=jobs", "--py-typeid", "get_r=results", "--py-results-queue", "done",
		"--max-unauth-conns", "8", "--auth-fail-limit", "3", "--max-conns", "100", "--max-streams", "16",
		"--max-memory", "1GiB", "--tls-cert", "/c.pem", "--tls-key", "/k.pem", "--tls-client-ca", "/ca.pem",
		"--retry-backoff", "1s..1h", "--dedup-window", "5m")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	want := serveOptions{
		Addr: "127.0.0.1:7000", AuthkeyFile: "/k", MaxAttempts: 5, Lease: time.Minute, MaxQueueLen: 10,
		MaxMessageSize: 16 << 20, HandshakeTimeout: 2 * time.Second, ShutdownTimeout: 0,
		DataDir: "/d", Fsync: "interval", FsyncInterval: 50 * time.Millisecond,
		PyTypeIDs: map[string]string{"get_task_queue": "jobs", "get_r": "results"}, PyResultsQueue: "done",
		MaxUnauthConns: 8, AuthFailLimit: 3, MaxConns: 100, MaxStreams: 16, MaxMemory: 1 << 30,
		TLSCert: "/c.pem", TLSKey: "/k.pem", TLSClientCA: "/ca.pem",
		RetryBackoff: "1s..1h", DedupWindow: 5 * time.Minute,
		Engine: engineOptions{PackSpan: jsqueue.DefaultPackSpan}, // --pack unset: its default
	}
	if got.LogLevel.Level != slog.LevelDebug || got.LogFormat.String() != "json" {
		t.Errorf("log level %v format %v", got.LogLevel, got.LogFormat)
	}
	got.IO, got.LogLevel, got.LogFormat = nil, cliflag.LogLevel{}, nil
	if !reflect.DeepEqual(want, *got) {
		t.Errorf("options\n got %+v\nwant %+v", *got, want)
	}
}

func TestRootDefaults(t *testing.T) {
	f, _, _ := testFactory("")
	var got *serveOptions
	code, msg := execute(t, newRootCmd(f, func(o *serveOptions) error { got = o; return nil }))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	if got.Addr != ":5000" || got.MaxAttempts != 3 || got.Lease != 30*time.Second || got.MaxQueueLen != 0 ||
		got.MaxMessageSize != 64<<20 || got.HandshakeTimeout != 5*time.Second || got.ShutdownTimeout != 10*time.Second ||
		got.LogLevel.Level != slog.LevelInfo || got.LogFormat.String() != "text" {
		t.Errorf("defaults: %+v", got)
	}
}

func TestUsageErrors(t *testing.T) {
	never := func(t *testing.T) func(any) error {
		return func(any) error { t.Error("ran despite a usage error"); return nil }
	}
	tests := []struct {
		name string
		cmd  func(t *testing.T) *cobra.Command
		args []string
		want string
	}{
		{"root unknown flag", rootCmd, []string{"--bogus"}, "unknown flag: --bogus"},
		{"root bad log format", rootCmd, []string{"--log-format", "xml"}, "want text or json"},
		{"root bad log level", rootCmd, []string{"--log-level", "loud"}, "want debug, info, warn or error"},
		{"root bad size", rootCmd, []string{"--max-message-size", "12XB"}, "want a byte count"},
		{"root key and insecure", rootCmd, []string{"--insecure-no-auth", "--authkey", "k"}, "--insecure-no-auth"},
		{"root zero attempts", rootCmd, []string{"--max-attempts", "0"}, "--max-attempts must be at least 1"},
		{"root bad backoff", rootCmd, []string{"--retry-backoff", "soon"}, "--retry-backoff: \"soon\""},
		{"root zero dedup window", rootCmd, []string{"--dedup-window", "0"}, "--dedup-window must be positive"},
		{"root argument", rootCmd, []string{"serve"}, `unknown command "serve"`},
		{"root argument before a subcommand's flag", rootCmd, []string{"inpsect", "--server", "x"}, `unknown command "inpsect"`},
		{"root tls cert without key", rootCmd, []string{"--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{"root client ca without cert", rootCmd, []string{"--tls-client-ca", "ca.pem"}, "--tls-client-ca needs --tls-cert"},
		{"root zero conns", rootCmd, []string{"--max-conns", "0"}, "--max-conns must be at least 1"},
		{"nats and cluster", rootCmd, []string{"--nats", "nats://a:4222", "--cluster-listen", ":6222", "--cluster-peers", "a:6222", "--data-dir", "d"}, "--nats and --cluster-listen do not go together"},
		{"nats and data dir", rootCmd, []string{"--nats", "nats://a:4222", "--data-dir", "d"}, "--data-dir does not go with --nats"},
		{"cluster without data dir", rootCmd, []string{"--cluster-listen", ":6222", "--cluster-peers", "a:6222"}, "--cluster-listen needs --data-dir"},
		{"cluster without peers", rootCmd, []string{"--cluster-listen", ":6222", "--data-dir", "d"}, "--cluster-listen needs --cluster-peers"},
		{"peers without cluster", rootCmd, []string{"--cluster-peers", "a:6222"}, "go with --cluster-listen"},
		{"acl cluster without a cluster key", rootCmd, []string{"--acl", "acl.toml", "--cluster-listen", ":6222", "--cluster-peers", "a:6222", "--data-dir", "d"}, "--acl with --cluster-listen needs --cluster-key-file"},
		{"cluster key alone", rootCmd, []string{"--cluster-key-file", "k"}, "--cluster-key-file goes with --cluster-listen or --nats"},
		{"cluster key and URL credentials", rootCmd, []string{"--nats", "nats://u:p@a:4222", "--cluster-key-file", "k"}, "do not go together"},
		{"replicas alone", rootCmd, []string{"--replicas", "3"}, "--replicas goes with --nats or --cluster-listen"},
		{"pack alone", rootCmd, []string{"--pack", "8"}, "--pack goes with --nats or --cluster-listen"},
		{"fsync without data dir", rootCmd, []string{"--fsync", "never"}, "--fsync goes with --data-dir"},
		{"fsync interval without data dir", rootCmd, []string{"--fsync-interval", "1s"}, "--fsync-interval goes with --data-dir"},
		{"pack too big", rootCmd, []string{"--nats", "nats://a:4222", "--pack", "65"}, "--pack must be between 1 and 64"},
		{"pack span negative", rootCmd, []string{"--nats", "nats://a:4222", "--pack-span", "-1s"}, "--pack-span must be >= 0"},
		{"replicas over peers", rootCmd, []string{"--cluster-listen", "a:6222", "--cluster-peers", "a:6222,b:6222", "--data-dir", "d", "--replicas", "3"}, "more than the 2 nodes"},
		{"peer named twice", rootCmd, []string{"--cluster-listen", ":6222", "--cluster-peers", "a:6222,a:6222,b:6222", "--data-dir", "d"}, "names a:6222 twice"},
		{"peers without this node", rootCmd, []string{"--cluster-listen", ":6222", "--cluster-peers", "a:6223,b:6223,c:6223", "--data-dir", "d"}, "must name this node too"},
		{"peer without port", rootCmd, []string{"--cluster-listen", ":6222", "--cluster-peers", "a,b:6222", "--data-dir", "d"}, "--cluster-peers: a:"},
		{"put tls key without cert", func(t *testing.T) *cobra.Command {
			return newCmdPut(&factory{}, func(o *putOptions) error { return never(t)(o) })
		}, []string{"q", "1", "--tls-key", "k.pem"}, "--tls-cert and --tls-key go together"},
		{"put no queue", func(t *testing.T) *cobra.Command {
			return newCmdPut(&factory{}, func(o *putOptions) error { return never(t)(o) })
		}, nil, "missing QUEUE"},
		{"put empty key", func(t *testing.T) *cobra.Command {
			return newCmdPut(&factory{}, func(o *putOptions) error { return never(t)(o) })
		}, []string{"q", "1", "--key", ""}, "--key must not be empty"},
		{"get two queues", func(t *testing.T) *cobra.Command {
			return newCmdGet(&factory{}, func(o *getOptions) error { return never(t)(o) })
		}, []string{"a", "b"}, `unexpected argument "b"`},
		{"get zero", func(t *testing.T) *cobra.Command {
			return newCmdGet(&factory{}, func(o *getOptions) error { return never(t)(o) })
		}, []string{"a", "-n", "0"}, "-n must be at least 1"},
		{"inspect interval without watch", func(t *testing.T) *cobra.Command {
			return newCmdInspect(&factory{}, func(o *inspectOptions) error { return never(t)(o) })
		}, []string{"--interval", "2s"}, "--interval needs --watch"},
		{"map results is tasks", func(t *testing.T) *cobra.Command {
			return newCmdMap(&factory{}, func(o *mapOptions) error { return never(t)(o) })
		}, []string{"--results", "tasks"}, "--results must differ from --tasks"},
		{"client key and insecure", func(t *testing.T) *cobra.Command {
			return newCmdQueues(&factory{}, func(o *queuesOptions) error { return never(t)(o) })
		}, []string{"--insecure-no-auth", "--authkey-file", "k"}, "--insecure-no-auth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := execute(t, tt.cmd(t), tt.args...)
			if code != exitUsage || !strings.Contains(msg, tt.want) || !strings.Contains(msg, "--help' for usage") {
				t.Errorf("exit %d, message %q; want %d and %q", code, msg, exitUsage, tt.want)
			}
		})
	}
}

func rootCmd(t *testing.T) *cobra.Command {
	return newRootCmd(&factory{}, func(*serveOptions) error { t.Error("ran despite a usage error"); return nil })
}

func TestPutFlags(t *testing.T) {
	var got *putOptions
	cmd := newCmdPut(&factory{}, func(o *putOptions) error { got = o; return nil })
	code, msg := execute(t, cmd, "jobs", "a", "{\"b\":1}", "--reply-to", "done", "--timeout", "2s", "--ids", "--batch", "10",
		"--server", "10.0.0.1:5000", "--authkey", "k", "--connect-timeout", "1s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	want := putOptions{
		Client: clientOptions{Server: "10.0.0.1:5000", Authkey: "k", ConnectTimeout: time.Second},
		Queue:  "jobs", Items: []string{"a", `{"b":1}`}, ReplyTo: "done", Timeout: 2 * time.Second, IDs: true, Batch: 10,
	}
	got.IO = nil
	if !reflect.DeepEqual(want, *got) {
		t.Errorf("options\n got %+v\nwant %+v", *got, want)
	}
}

func TestGetFlags(t *testing.T) {
	var got *getOptions
	cmd := newCmdGet(&factory{}, func(o *getOptions) error { got = o; return nil })
	if code, msg := execute(t, cmd, "results", "-n", "3", "--timeout", "200ms"); code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	if got.Queue != "results" || got.N != 3 || got.Timeout != 200*time.Millisecond {
		t.Errorf("options %+v", got)
	}
	if got.Client.Server != "127.0.0.1:5000" || got.Client.ConnectTimeout != 5*time.Second {
		t.Errorf("client defaults %+v", got.Client)
	}
}

func TestMapFlags(t *testing.T) {
	var got *mapOptions
	cmd := newCmdMap(&factory{}, func(o *mapOptions) error { got = o; return nil })
	if code, msg := execute(t, cmd); code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	if got.Tasks != "tasks" || got.Results != "" || got.Batch != 1000 || got.Timeout != 0 {
		t.Errorf("defaults %+v", got)
	}
}

func TestInspectFlags(t *testing.T) {
	var got *inspectOptions
	cmd := newCmdInspect(&factory{}, func(o *inspectOptions) error { got = o; return nil })
	if code, msg := execute(t, cmd, "-w", "--interval", "250ms", "--json"); code != 0 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	if !got.Watch || !got.JSON || got.Interval != 250*time.Millisecond {
		t.Errorf("options %+v", got)
	}
}

func TestHelpHasExamples(t *testing.T) {
	root := newRootCmd(&factory{}, nil)
	for _, c := range append(root.Commands(), root) {
		if c.Hidden || c.Name() == "help" || c.Name() == "completion" {
			continue
		}
		if c.Example == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
		c.LocalFlags().VisitAll(func(fl *pflag.Flag) {
			if fl.Usage == "" {
				t.Errorf("%s --%s has no help", c.CommandPath(), fl.Name)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	root := newRootCmd(&factory{}, nil)
	get, _, _ := root.Find([]string{"get"})
	tests := []struct {
		name string
		cmd  *cobra.Command
		err  error
		code int
		msg  string
	}{
		{"ok", get, nil, 0, ""},
		{"error", get, errors.New("no item in q within 1s"), 1, "qmaster get: no item in q within 1s\n"},
		{"conn", get, &connError{errors.New("authentication failed: x")}, 1, "qmaster: authentication failed: x\n"},
		{"usage", get, usageErrorf("missing QUEUE"), 2, "qmaster get: missing QUEUE\nRun 'qmaster get --help' for usage.\n"},
		{"signal", root, context.Canceled, 1, "qmaster: interrupted\n"},
		{"signal wrapped", get, fmt.Errorf("get from q: %w", context.Canceled), 1, "qmaster get: get from q: interrupted\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if code := exitCode(&b, tt.cmd, tt.err); code != tt.code || b.String() != tt.msg {
				t.Errorf("exitCode = %d, %q; want %d, %q", code, b.String(), tt.code, tt.msg)
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{
		"1048576": 1 << 20, "64MiB": 64 << 20, "64mib": 64 << 20, "2 KiB": 2048, "1GiB": 1 << 30,
		"5MB": 5e6, "10KB": 1e4, "512B": 512,
	} {
		var b byteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5MiB", "12XB", "99999999999GiB"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) = %d, want an error", in, b)
		}
	}
	for n, want := range map[byteSize]string{64 << 20: "64MiB", 1 << 30: "1GiB", 3072: "3KiB", 1536: "1536", 1000: "1000", 0: "0"} {
		if got := n.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(n), got, want)
		}
	}
}

func TestHumanAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 850 * time.Millisecond: "0s", 3 * time.Second: "3s", 245 * time.Second: "4m05s",
		2*time.Hour + 13*time.Minute: "2h13m", 76 * time.Hour: "3d4h",
	} {
		if got := humanAge(d); got != want {
			t.Errorf("humanAge(%s) = %q, want %q", d, got, want)
		}
	}
}

// --pack unset packs 32 tasks a message; --pack 1 turns packing off.
func TestPackDefault(t *testing.T) {
	for _, c := range []struct {
		set, want int
	}{{0, defaultPack}, {1, 1}, {8, 8}} {
		if got := (&engineOptions{Pack: c.set}).pack(); got != c.want {
			t.Errorf("--pack %d: packs %d, want %d", c.set, got, c.want)
		}
	}
	if defaultPack != 32 {
		t.Errorf("default pack %d, documented as 32", defaultPack)
	}
}
