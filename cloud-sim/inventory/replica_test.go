package inventory

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// statusAt is a status of revision rev in phase ph that the gateway
// reported at second sec.
func statusAt(rev int64, ph fleetv1.DeploymentStatus_Phase, sec int64) *fleetv1.DeploymentStatus {
	return &fleetv1.DeploymentStatus{Revision: rev, Phase: ph, UpdatedAt: timestamppb.New(time.Unix(sec, 0))}
}

// TestReplicasConverge: two replicas share one store and each applies
// part of one gateway's publications, in whichever order the broker
// handed them out; after both flush, both hold the record a single
// controller would have built from the publications in order.
func TestReplicasConverge(t *testing.T) {
	birth := received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 3, Timestamp: timestamppb.New(time.Unix(10, 0)),
		Deployments: []*fleetv1.DeploymentSummary{{Name: "web", Revision: 1, Phase: fleetv1.DeploymentStatus_RUNNING}}})
	pulling := received(topic.Status, "gw-1", "web", statusAt(2, fleetv1.DeploymentStatus_PULLING, 11))
	running := received(topic.Status, "gw-1", "web", statusAt(2, fleetv1.DeploymentStatus_RUNNING, 12))
	db := received(topic.Status, "gw-1", "db", statusAt(1, fleetv1.DeploymentStatus_RUNNING, 13))
	tests := []struct {
		name string
		a, b []mqttclient.Received // applied by replica a, then by b
		// flushFirst flushes a before b applies anything.
		flushFirst bool
	}{
		{"in order, alternating", []mqttclient.Received{birth, running}, []mqttclient.Received{pulling, db}, true},
		{"the later status first", []mqttclient.Received{birth, running}, []mqttclient.Received{birth, pulling, db}, false},
		{"birth applied last", []mqttclient.Received{pulling, running, db}, []mqttclient.Received{birth}, false},
		{"all on b, stale on a", []mqttclient.Received{birth, pulling}, []mqttclient.Received{birth, pulling, running, db}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			st, err := state.Open(ctx, state.Config{Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(st.Close)
			a, b := replica(t, st), replica(t, st)
			// a gateway unknown to a replica is created by its birth only:
			// give b the birth through the store first when a has it.
			for _, m := range tt.a {
				a.Apply(m)
			}
			if tt.flushFirst {
				flush(t, a, st)
				waitRemote(t, b, 1)
			}
			for _, m := range tt.b {
				b.Apply(m)
			}
			// the controller's flush loop: each replica writes what it
			// applied, and what it rebased on the other's writes.
			for name, inv := range map[string]*Inventory{"a": a, "b": b} {
				waitFor(t, name, func() bool {
					flush(t, a, st)
					flush(t, b, st)
					g, ok := inv.Get("acme", "gw-1")
					return ok && g.Online && g.Session == 3 && len(g.Deployments) == 2 &&
						g.Deployments["web"].Revision == 2 && g.Deployments["web"].Phase == Running && g.Deployments["db"].Phase == Running
				}, func() any { g, _ := inv.Get("acme", "gw-1"); return g })
			}
		})
	}
}

func replica(t *testing.T, st *state.Store) *Inventory {
	t.Helper()
	inv := New(Config{Replicated: true})
	if err := inv.Load(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(inv.Close)
	return inv
}

func flush(t *testing.T, inv *Inventory, st *state.Store) {
	t.Helper()
	if err := inv.Flush(context.Background(), st); err != nil {
		t.Fatal(err)
	}
}

func waitRemote(t *testing.T, inv *Inventory, n uint64) {
	t.Helper()
	waitFor(t, "remote", func() bool { return inv.Remote() >= n }, func() any { return inv.Remote() })
}

func waitFor(t *testing.T, what string, ok func() bool, got func() any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not converged: %+v", what, got())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for time
	}
}
