package inventory

import (
	"context"
	"fmt"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestReplicaCountsRefusalsOnce: a replicated inventory that writes
// while refusals arrive counts each once, whatever its own writes echo.
func TestReplicaCountsRefusalsOnce(t *testing.T) {
	ctx := context.Background()
	st, err := state.Open(ctx, state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	inv := New(Config{Replicated: true, Limits: Limits{MaxDeployments: 4}})
	if err := inv.Load(ctx, st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Close)
	inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}))
	const sent = 40
	for i := range sent {
		name := fmt.Sprintf("app-%d", i)
		inv.Apply(received(topic.Status, "gw-1", name, &fleetv1.DeploymentStatus{Name: name, Revision: 1, Phase: fleetv1.DeploymentStatus_RUNNING}))
		if i%3 == 0 {
			flush(t, inv, st)
		}
	}
	flush(t, inv, st)
	waitFor(t, "refusals", func() bool {
		g, _ := inv.Get("acme", "gw-1")
		return len(g.Refused) == 1 && g.Refused[0].Count == sent-4
	}, func() any { g, _ := inv.Get("acme", "gw-1"); return g.Refused })
}
