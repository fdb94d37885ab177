// Package version says which build of qm a binary is, from what the Go
// toolchain records in it: the module's version when built with go
// install, and the commit and its time when built in a git checkout.
package version

import (
	"runtime/debug"
	"strings"
)

// String returns the binary's version: a release's ("v1.2.0"), the
// pseudo-version Go makes from a checkout's commit
// ("v0.0.0-20261206145257-84aaefc5b47c+dirty"), "(devel) 84aaefc
// 2026-12-06T14:52:58Z" from older toolchains, "(devel)" without any, or
// "unknown" for a binary built without build information.
func String() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	return describe(bi.Main.Version, bi.Settings)
}

func describe(module string, settings []debug.BuildSetting) string {
	if module != "" && module != "(devel)" {
		// A release, or the pseudo-version Go makes from the commit
		// (v0.0.0-20261206145257-84aaefc5b47c, +dirty if modified).
		return module
	}
	var rev, at string
	modified := false
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value[:min(len(s.Value), 7)]
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	parts := []string{"(devel)"}
	if rev != "" {
		if modified {
			rev += "+modified"
		}
		parts = append(parts, rev)
		if at != "" {
			parts = append(parts, at)
		}
	}
	return strings.Join(parts, " ")
}
