package version

import (
	"runtime/debug"
	"testing"
)

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		module   string
		settings []debug.BuildSetting
		want     string
	}{
		{"v1.2.0", nil, "v1.2.0"},
		{"v0.0.0-20261206145257-84aaefc5b47c+dirty", []debug.BuildSetting{{Key: "vcs.revision", Value: "84aaefc0123456789"}}, "v0.0.0-20261206145257-84aaefc5b47c+dirty"},
		{"(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: "84aaefc0123456789"}, {Key: "vcs.time", Value: "2026-12-06T14:52:58Z"}, {Key: "vcs.modified", Value: "false"}},
			"(devel) 84aaefc 2026-12-06T14:52:58Z"},
		{"(devel)", []debug.BuildSetting{{Key: "vcs.revision", Value: "84aaefc0123456789"}, {Key: "vcs.modified", Value: "true"}}, "(devel) 84aaefc+modified"},
		{"", nil, "(devel)"},
	} {
		if got := describe(tc.module, tc.settings); got != tc.want {
			t.Errorf("describe(%q, %v) = %q, want %q", tc.module, tc.settings, got, tc.want)
		}
	}
}
