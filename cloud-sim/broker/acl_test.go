package broker

import (
	"testing"

	"github.com/fleet-agent/fleet/protocol/topic"
)

func TestIdentityAllowed(t *testing.T) {
	gw := Identity{Tenant: "acme", Gateway: "gw-1", Groups: []string{"berlin"}}
	tests := []struct {
		name  string
		id    Identity
		topic string
		write bool
		want  bool
	}{
		{"own birth", gw, "fleet/v1/acme/gw-1/birth", true, true},
		{"own death", gw, "fleet/v1/acme/gw-1/death", true, true},
		{"own reply", gw, "fleet/v1/acme/gw-1/reply", true, true},
		{"own console reply", gw, "fleet/v1/acme/gw-1/reply/controller", true, true},
		{"own status", gw, "fleet/v1/acme/gw-1/status/web", true, true},
		{"own events", gw, "fleet/v1/acme/gw-1/events", true, true},
		{"own metrics", gw, "fleet/v1/acme/gw-1/metrics", true, true},
		{"own logs stream", gw, "fleet/v1/acme/gw-1/logs/c-0123", true, true},
		{"another gateway's logs stream", gw, "fleet/v1/acme/gw-2/logs/c-0123", true, false},
		{"another tenant's logs stream", gw, "fleet/v1/other/gw-1/logs/c-0123", true, false},
		{"logs stream with two levels", gw, "fleet/v1/acme/gw-1/logs/c-0123/x", true, false},
		{"logs of every request", gw, "fleet/v1/acme/gw-1/logs/+", true, false},
		{"read own logs stream", gw, "fleet/v1/acme/gw-1/logs/c-0123", false, false},
		{"controller reads a logs stream", Identity{Controller: true}, "fleet/v1/acme/gw-1/logs/c-0123", false, true},
		{"another gateway's birth", gw, "fleet/v1/acme/gw-2/birth", true, false},
		{"another tenant's birth", gw, "fleet/v1/other/gw-1/birth", true, false},
		{"its own command topic", gw, "fleet/v1/acme/gw-1/cmd/deploy", true, false},
		{"a status with two levels", gw, "fleet/v1/acme/gw-1/status/web/x", true, false},
		{"wildcard in a publish", gw, "fleet/v1/acme/gw-1/status/+", true, false},
		{"outside the prefix", gw, "other/acme/gw-1/birth", true, false},
		{"read own commands", gw, "fleet/v1/acme/gw-1/cmd/+", false, true},
		{"read one own verb", gw, "fleet/v1/acme/gw-1/cmd/deploy", false, true},
		{"read its prefetch verb", gw, "fleet/v1/acme/gw-1/cmd/prefetch", false, true},
		{"read its group's prefetch verb", gw, "fleet/v1/acme/group/berlin/cmd/prefetch", false, true},
		{"read another gateway's commands", gw, "fleet/v1/acme/gw-2/cmd/+", false, false},
		{"read everything", gw, "fleet/v1/#", false, false},
		{"read the tenant with a wildcard", gw, "fleet/v1/acme/+/cmd/+", false, false},
		{"read own group's commands", gw, "fleet/v1/acme/group/berlin/cmd/+", false, true},
		{"read another group's commands", gw, "fleet/v1/acme/group/paris/cmd/+", false, false},
		{"read own births", gw, "fleet/v1/acme/gw-1/birth", false, false},
		{"controller reads everything", Identity{Controller: true}, "fleet/v1/#", false, true},
		{"controller publishes commands", Identity{Controller: true}, "fleet/v1/acme/gw-1/cmd/deploy", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.id.Allowed(topic.Default(), tt.topic, tt.write); got != tt.want {
				t.Errorf("Allowed(%q, write=%v) = %v, want %v", tt.topic, tt.write, got, tt.want)
			}
		})
	}
}
