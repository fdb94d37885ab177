// Package bytesize writes byte counts for people, in the binary units
// qm's flags take: "64 MiB", "1.5 KiB", "900 B".
package bytesize

import "strconv"

var units = []struct {
	name string
	size int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}}

// Format renders n in the largest unit it reaches: whole if it divides
// evenly, else to one decimal.
func Format(n int64) string {
	for _, u := range units {
		if n >= u.size {
			if n%u.size == 0 {
				return strconv.FormatInt(n/u.size, 10) + " " + u.name
			}
			return strconv.FormatFloat(float64(n)/float64(u.size), 'f', 1, 64) + " " + u.name
		}
	}
	return strconv.FormatInt(n, 10) + " B"
}
