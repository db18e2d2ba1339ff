package console

import (
	"fmt"
	"html/template"
	"net/url"
	"sort"
	"strings"
	"time"
)

// funcs are the helpers every template may use.
func funcs() template.FuncMap {
	return template.FuncMap{
		"ago":      ago,
		"datetime": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
		"bytes":    humanBytes,
		"percent":  percent,
		"lower":    strings.ToLower,
		"join":     strings.Join,
		"state":    stateClass,
		"with":     withQuery,
		"sortedKeys": func(m map[string]int) []string {
			keys := make([]string, 0, len(m))
			for k := range m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			return keys
		},
		"labels": func(m map[string]string) string {
			parts := make([]string, 0, len(m))
			for k, v := range m {
				parts = append(parts, k+"="+v)
			}
			sort.Strings(parts)
			return strings.Join(parts, ", ")
		},
	}
}

// ago tells how long ago t was, roughly; "never" for the zero time.
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func percent(part, whole int) string {
	if whole == 0 {
		return "0%"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(part)/float64(whole))
}

// stateClass is the CSS class of a state, phase or result: ok, warn,
// bad or idle. The state is always written out too: colour never tells
// it alone.
func stateClass(s string) string {
	switch strings.ToUpper(s) {
	case "ONLINE", "RUNNING", "SUCCEEDED", "HEALTHY", "OK", "ACTIVE":
		return "ok"
	case "FAILED", "REJECTED", "UNDELIVERED", "UNHEALTHY", "ABORTED", "TIMED_OUT", "ERROR", "OFFLINE":
		return "bad"
	case "STALE", "PAUSED", "PENDING", "ACCEPTED", "PULLING", "STARTING", "ROLLING_BACK", "ROLLED_BACK", "WARNING", "IN_PROGRESS", "QUEUED":
		return "warn"
	}
	return "idle"
}

// withQuery returns the URL u with its query parameter key set to value
// ("" deletes it): for filter and pagination links.
func withQuery(u *url.URL, key, value string) string {
	q := u.Query()
	if value == "" {
		q.Del(key)
	} else {
		q.Set(key, value)
	}
	c := *u
	c.RawQuery = q.Encode()
	return c.RequestURI()
}
