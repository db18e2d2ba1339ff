package compose

import (
	"fmt"
	"strings"
)

// Table is the conformance table in Markdown, as docs/compose.md holds
// it (TestDocHoldsTheTable keeps the two equal).
func Table() string {
	var b strings.Builder
	b.WriteString("| Compose field | translation | protocol field | note |\n| --- | --- | --- | --- |\n")
	for _, f := range Fields() {
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", f.Path, f.Support, code(f.Proto), strings.ReplaceAll(f.Note, "|", `\|`))
	}
	return b.String()
}

func code(s string) string {
	if s == "" {
		return "—"
	}
	return "`" + s + "`"
}
