// Package cli holds cloud-sim's client verbs: they talk to a running
// `cloud-sim serve` through its HTTP API, print tables for humans or the
// API's JSON (-o json) for scripts, and exit non-zero when a command
// failed on any gateway.
package cli

import (
	"net/url"
	"strings"
)

func escape(parts ...string) string {
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}
