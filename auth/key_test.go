package auth_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qm-dev/qm/auth"
)

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyFile := file("key", "from-file\n")
	crlfFile := file("crlf", "from-file\r\n")
	emptyFile := file("empty", "")
	newlineFile := file("newline", "\n")
	env := func(v string) func(string) string {
		return func(name string) string {
			if name == auth.KeyEnv {
				return v
			}
			return ""
		}
	}

	tests := []struct {
		name    string
		flag    string
		path    string
		env     string
		want    string
		wantNil bool
		wantErr bool
	}{
		{name: "flag", flag: "from-flag", env: "from-env", want: "from-flag"},
		{name: "file", path: keyFile, env: "from-env", want: "from-file"},
		{name: "file with crlf", path: crlfFile, want: "from-file"},
		{name: "env", env: "from-env", want: "from-env"},
		{name: "none", wantNil: true},
		{name: "flag and file", flag: "x", path: keyFile, wantErr: true},
		{name: "empty file", path: emptyFile, wantErr: true},
		{name: "newline only file", path: newlineFile, wantErr: true},
		{name: "missing file", path: filepath.Join(dir, "missing"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := auth.LoadKey(tt.flag, tt.path, env(tt.env))
			switch {
			case tt.wantErr:
				if err == nil {
					t.Fatalf("LoadKey = %q, want an error", got)
				}
			case err != nil:
				t.Fatal(err)
			case tt.wantNil && got != nil:
				t.Fatalf("LoadKey = %q, want nil", got)
			case !tt.wantNil && string(got) != tt.want:
				t.Fatalf("LoadKey = %q, want %q", got, tt.want)
			}
		})
	}
}
