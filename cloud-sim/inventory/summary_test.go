package inventory

import (
	"testing"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestFailing(t *testing.T) {
	exited := Phase(fleetv1.DeploymentStatus_EXITED)
	tests := []struct {
		name string
		d    Deployment
		want bool
	}{
		{"running", Deployment{Phase: Running, Health: Healthy}, false},
		{"failed", Deployment{Phase: Failed}, true},
		{"unhealthy", Deployment{Phase: Running, Health: Unhealthy}, true},
		{"restarting", Deployment{Phase: exited, RestartCount: 3}, true},
		{"restarted once, running again", Deployment{Phase: Running, RestartCount: 1}, false},
		{"exited, never restarted", Deployment{Phase: exited}, false},
	}
	for _, tt := range tests {
		if got := failing(&tt.d); got != tt.want {
			t.Errorf("%s: failing = %v, want %v", tt.name, got, tt.want)
		}
	}
}
