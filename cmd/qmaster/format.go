package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// byteSize is a flag value: a plain byte count, or one with a unit suffix
// (KiB, MiB, GiB in powers of 1024; KB, MB, GB in powers of 1000).
type byteSize int64

var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

func (b *byteSize) Set(s string) error {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range byteUnits {
		if len(s) > len(u.suffix) && strings.EqualFold(s[len(s)-len(u.suffix):], u.suffix) {
			mult = u.mult
			s = strings.TrimSpace(s[:len(s)-len(u.suffix)])
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("want a byte count such as 1048576 or 64MiB")
	}
	if n > (1<<62)/mult {
		return fmt.Errorf("too large")
	}
	*b = byteSize(n * mult)
	return nil
}

func (b byteSize) String() string {
	n := int64(b)
	for _, u := range []int{2, 1, 0} { // GiB, MiB, KiB
		if m := byteUnits[u].mult; n > 0 && n%m == 0 {
			return strconv.FormatInt(n/m, 10) + byteUnits[u].suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Type() string { return "bytes" }

// humanAge renders a duration briefly: "0s", "3s", "4m05s", "2h13m",
// "3d4h". It drops what a reader of a table does not need.
func humanAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		d = max(d, 0)
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", d/time.Minute, (d%time.Minute)/time.Second)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", d/time.Hour, (d%time.Hour)/time.Minute)
	}
	return fmt.Sprintf("%dd%dh", d/(24*time.Hour), (d%(24*time.Hour))/time.Hour)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
}

// writeJSON writes v as JSON on one line, or indented when pretty.
func writeJSON(w io.Writer, v any, pretty bool) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if pretty {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}
