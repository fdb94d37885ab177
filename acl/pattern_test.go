package acl

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"jobs", "jobs", true},
		{"jobs", "jobs2", false},
		{"jobs.*", "jobs.", true},
		{"jobs.*", "jobs.a/b", true},
		{"jobs.*", "jobs", false},
		{"*", "", true},
		{"*", "anything", true},
		{"*.dead", "jobs.dead", true},
		{"*.dead", "jobs.deadx", false},
		{"a*b*c", "abc", true},
		{"a*b*c", "aXbYbZc", true},
		{"a*b*c", "acb", false},
		{"a*a", "a", false},
		{"**", "x", true},
		{"?", "x", false},
	} {
		if got := match(c.pattern, c.name); got != c.want {
			t.Errorf("match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

// FuzzMatch checks match against a regular expression built from the
// pattern.
func FuzzMatch(f *testing.F) {
	for _, s := range [][2]string{{"jobs.*", "jobs.a"}, {"a*b*c", "aXbYc"}, {"*", ""}, {"*a*", "bab"}, {"a*a", "a"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if len(pattern) > 64 || len(name) > 256 || !utf8.ValidString(pattern) || !utf8.ValidString(name) {
			return // regexp reads invalid UTF-8 as U+FFFD; match compares bytes
		}
		parts := strings.Split(pattern, "*")
		for i, p := range parts {
			parts[i] = regexp.QuoteMeta(p)
		}
		re, err := regexp.Compile(`^(?s:` + strings.Join(parts, ".*") + `)$`)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := match(pattern, name), re.MatchString(name); got != want {
			t.Fatalf("match(%q, %q) = %v, regexp says %v", pattern, name, got, want)
		}
	})
}
