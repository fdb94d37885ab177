package acl

import (
	"errors"
	"strings"
	"unicode"
)

// checkPattern reports why p cannot be a queue pattern, or nil.
func checkPattern(p string) error {
	if p == "" {
		return errors.New("empty pattern")
	}
	if strings.IndexFunc(p, unicode.IsControl) >= 0 {
		return errors.New("control character in pattern")
	}
	return nil
}

// match reports whether name matches pattern, in which '*' stands for
// any run of characters (none included) and every other byte for itself.
// It runs in O(len(pattern)·len(name)) at worst: each literal segment
// is taken at its leftmost place after the previous one, which is
// enough since '*' can absorb whatever lies between.
func match(pattern, name string) bool {
	first, rest, star := strings.Cut(pattern, "*")
	if !star {
		return pattern == name
	}
	if !strings.HasPrefix(name, first) {
		return false
	}
	name = name[len(first):]
	for {
		seg, more, star := strings.Cut(rest, "*")
		if !star {
			// The last segment is anchored at the end.
			return len(name) >= len(seg) && name[len(name)-len(seg):] == seg
		}
		i := strings.Index(name, seg)
		if i < 0 {
			return false
		}
		name, rest = name[i+len(seg):], more
	}
}

// matchAny reports whether name matches one of patterns.
func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if match(p, name) {
			return true
		}
	}
	return false
}
