package inventory

import (
	"fmt"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
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

// TestReadsDuringIngest: pages, summaries and metrics read while gateways
// are added and report (run with -race).
func TestReadsDuringIngest(t *testing.T) {
	inv := New(Config{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 300 {
			id := fmt.Sprintf("gw-%d", i)
			inv.Apply(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "acme", Gateway: id}, Message: &fleetv1.Birth{Session: 1}, At: at(i)})
			inv.Apply(mqttclient.Received{Topic: topic.Topic{Kind: topic.Metrics, Tenant: "acme", Gateway: id}, Message: &fleetv1.Metrics{Load1: 1}, At: at(i)})
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		p := inv.ListPage(Filter{IDContains: "GW-1"}, 1, 5)
		if p.Total > 0 && len(p.Gateways) == 0 && p.Total > 1 {
			t.Fatalf("page %+v", p)
		}
		inv.Summarize("", at(0), 5)
		inv.Metrics("acme", "gw-1")
		inv.Get("acme", "gw-1")
	}
	if p := inv.ListPage(Filter{}, 0, 0); p.Total != 300 || p.Gateways[10].ID != "gw-10" {
		t.Errorf("after ingest: total %d, 11th %s", p.Total, p.Gateways[10].ID)
	}
}
