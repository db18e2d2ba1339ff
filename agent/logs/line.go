package logs

import (
	"strings"
	"unicode/utf8"
)

// pieces turns a line's bytes into LogLine texts: invalid UTF-8 replaced
// by U+FFFD, cut into pieces of at most max bytes, each at a character's
// boundary. An empty line is one empty piece.
func pieces(b []byte, max int) []string {
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	if len(s) <= max {
		return []string{s}
	}
	var out []string
	for len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		out = append(out, s[:cut])
		s = s[cut:]
	}
	if s != "" {
		out = append(out, s)
	}
	return out
}
