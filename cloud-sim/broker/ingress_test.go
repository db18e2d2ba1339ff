package broker

import (
	"testing"

	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestIngressCount: what gateways publish for the inventory is counted,
// under the scheme's prefix only; replies, logs, commands and malformed
// names are not.
func TestIngressCount(t *testing.T) {
	custom, err := topic.NewScheme("site/a")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		scheme topic.Scheme
		name   string
		want   int64
	}{
		{topic.Default(), "fleet/v1/acme/gw-1/birth", 1},
		{topic.Default(), "fleet/v1/acme/gw-1/death", 1},
		{topic.Default(), "fleet/v1/acme/gw-1/events", 1},
		{topic.Default(), "fleet/v1/acme/gw-1/metrics", 1},
		{topic.Default(), "fleet/v1/acme/gw-1/status/web", 1},
		{topic.Default(), "fleet/v1/acme/gw-1/status", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/status/", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/status/web/x", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/birth/x", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/reply", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/reply/console-1", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/logs/req-1", 0},
		{topic.Default(), "fleet/v1/acme/gw-1/cmd/deploy", 0},
		{topic.Default(), "other/acme/gw-1/birth", 0},
		{topic.Default(), "fleet/v1", 0},
		{custom, "site/a/acme/gw-1/status/web", 1},
		{custom, "fleet/v1/acme/gw-1/status/web", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newIngressHook(tt.scheme)
			h.count(tt.name)
			if got := h.n.Load(); got != tt.want {
				t.Errorf("count(%q) under %q = %d, want %d", tt.name, tt.scheme.Prefix(), got, tt.want)
			}
		})
	}
}
