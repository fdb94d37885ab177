package bytesize

import "testing"

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		n    int64
		want string
	}{
		{0, "0 B"}, {900, "900 B"}, {1 << 10, "1 KiB"}, {1536, "1.5 KiB"},
		{2 << 20, "2 MiB"}, {(1 << 20) + 1, "1.0 MiB"}, {64 << 30, "64 GiB"},
	} {
		if got := Format(tt.n); got != tt.want {
			t.Errorf("Format(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
