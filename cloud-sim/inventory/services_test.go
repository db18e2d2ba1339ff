package inventory

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// appStatus is the status of an application of n services.
func appStatus(revision int64, n int) *fleetv1.DeploymentStatus {
	s := &fleetv1.DeploymentStatus{Revision: revision, Phase: fleetv1.DeploymentStatus_RUNNING}
	for i := range n {
		s.Services = append(s.Services, &fleetv1.ServiceStatus{Name: fmt.Sprintf("s%d", i), Phase: fleetv1.DeploymentStatus_RUNNING})
	}
	return s
}

// TestServices: a deployment keeps the per-service statuses its status
// reports (phase, health, digest, exit), stores and restores them, and a
// gateway cannot make it hold more than the bounds.
func TestServices(t *testing.T) {
	status := &fleetv1.DeploymentStatus{Revision: 3, Phase: fleetv1.DeploymentStatus_STARTING, Services: []*fleetv1.ServiceStatus{
		{Name: "db", Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_HEALTHY, Image: "postgres:16", ImageDigest: "sha256:aa", ContainerId: "c1"},
		{Name: "migrate", Phase: fleetv1.DeploymentStatus_EXITED, ExitCode: 0, Image: "migrate:1"},
		{Name: "web", Phase: fleetv1.DeploymentStatus_FAILED, ExitCode: 137, OomKilled: true, RestartCount: 4, Code: fleetv1.Reply_UNHEALTHY, Message: "killed"},
	}}
	inv := New(Config{})
	inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}))
	inv.Apply(received(topic.Status, "gw-1", "shop", status))
	g, _ := inv.Get("acme", "gw-1")
	want := []Service{
		{Name: "db", Phase: Running, Health: Healthy, Image: "postgres:16", Digest: "sha256:aa", ContainerID: "c1"},
		{Name: "migrate", Phase: Phase(fleetv1.DeploymentStatus_EXITED), Image: "migrate:1"},
		{Name: "web", Phase: Failed, ExitCode: 137, OOMKilled: true, RestartCount: 4, Code: "UNHEALTHY", Message: "killed"},
	}
	if diff := cmp.Diff(want, g.Deployments["shop"].Services); diff != "" {
		t.Errorf("services (-want +got):\n%s", diff)
	}
	raw, err := json.Marshal(g.stored())
	if err != nil {
		t.Fatal(err)
	}
	var s state.Gateway
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, restore(&s).Deployments["shop"].Services); diff != "" {
		t.Errorf("restored services (-want +got):\n%s", diff)
	}

	tests := []struct {
		name string
		msgs []mqttclient.Received
		want map[string]int // services kept by deployment
	}{
		{"one deployment over its bound", []mqttclient.Received{received(topic.Status, "gw-1", "big", appStatus(1, maxServices+5))},
			map[string]int{"big": maxServices}},
		{"the gateway's bound", func() []mqttclient.Received {
			var out []mqttclient.Received
			for i := range maxGatewayServices/maxServices + 2 {
				out = append(out, received(topic.Status, "gw-1", fmt.Sprintf("d%d", i), appStatus(1, maxServices)))
			}
			return out
		}(), nil},
		{"a new revision replaces them", []mqttclient.Received{received(topic.Status, "gw-1", "app", appStatus(1, 3)), received(topic.Status, "gw-1", "app", appStatus(2, 1))},
			map[string]int{"app": 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := New(Config{})
			inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}))
			for _, m := range tt.msgs {
				inv.Apply(m)
			}
			g, _ := inv.Get("acme", "gw-1")
			total := 0
			for name, d := range g.Deployments {
				total += len(d.Services)
				if want, ok := tt.want[name]; ok && len(d.Services) != want {
					t.Errorf("%s: %d services, want %d", name, len(d.Services), want)
				}
			}
			if total > maxGatewayServices {
				t.Errorf("%d services kept, want at most %d", total, maxGatewayServices)
			}
		})
	}
}
