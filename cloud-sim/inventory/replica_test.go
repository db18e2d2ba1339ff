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
			st := openStore(t)
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

// openStore opens a store of its own (an embedded NATS) for t.
func openStore(t *testing.T) *state.Store {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
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

// TestPendingStatusesSuperseded: a replica keeps, until its next flush,
// one status a deployment when each supersedes the last (a burst of a
// pull's progress), every other publication as it came, and still
// converges on another replica's write with what it kept.
func TestPendingStatusesSuperseded(t *testing.T) {
	birth := received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 3, Timestamp: timestamppb.New(time.Unix(10, 0))})
	web := func(rev int64, ph fleetv1.DeploymentStatus_Phase, sec int64) mqttclient.Received {
		return received(topic.Status, "gw-1", "web", statusAt(rev, ph, sec))
	}
	db := received(topic.Status, "gw-1", "db", statusAt(1, fleetv1.DeploymentStatus_RUNNING, 13))
	tests := []struct {
		name    string
		msgs    []mqttclient.Received
		writing bool // the gateway's record is being written meanwhile
		want    int  // publications kept
	}{
		{"a burst of one deployment", []mqttclient.Received{birth, web(2, fleetv1.DeploymentStatus_PULLING, 11), web(2, fleetv1.DeploymentStatus_PULLING, 12),
			web(2, fleetv1.DeploymentStatus_RUNNING, 13), web(3, fleetv1.DeploymentStatus_PULLING, 14)}, false, 2},
		{"another deployment in between", []mqttclient.Received{birth, web(2, fleetv1.DeploymentStatus_PULLING, 11), db, web(2, fleetv1.DeploymentStatus_RUNNING, 12)}, false, 4},
		{"an older status after a newer one", []mqttclient.Received{birth, web(2, fleetv1.DeploymentStatus_RUNNING, 12), web(2, fleetv1.DeploymentStatus_PULLING, 11)}, false, 3},
		{"while the record is written", []mqttclient.Received{birth, web(2, fleetv1.DeploymentStatus_PULLING, 11), web(2, fleetv1.DeploymentStatus_RUNNING, 12)}, true, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := openStore(t)
			a, b := replica(t, st), replica(t, st)
			k := state.Key("acme", "gw-1")
			for i, m := range tt.msgs {
				a.Apply(m)
				if i == 0 && tt.writing {
					a.mu.Lock()
					a.inflight[k] = struct{}{}
					a.mu.Unlock()
				}
			}
			a.mu.Lock()
			kept := len(a.pending[k])
			delete(a.inflight, k)
			a.mu.Unlock()
			if kept != tt.want {
				t.Fatalf("kept %d publications, want %d", kept, tt.want)
			}
			// b writes the gateway first: a's write conflicts, and a
			// replays what it kept on b's record.
			last := a.mustGet(t)
			b.Apply(birth)
			flush(t, b, st)
			waitFor(t, "a and b", func() bool {
				flush(t, a, st)
				flush(t, b, st)
				ga, gb := a.mustGet(t), b.mustGet(t)
				return sameDeployments(ga, last) && sameDeployments(gb, last)
			}, func() any { return []*Gateway{a.mustGet(t), b.mustGet(t)} })
		})
	}
}

func (inv *Inventory) mustGet(t *testing.T) *Gateway {
	t.Helper()
	g, ok := inv.Get("acme", "gw-1")
	if !ok {
		t.Fatal("gw-1 unknown")
	}
	return g
}

// sameDeployments reports whether g reports what want does of each
// deployment.
func sameDeployments(g, want *Gateway) bool {
	if len(g.Deployments) != len(want.Deployments) {
		return false
	}
	for name, d := range want.Deployments {
		if got := g.Deployments[name]; got == nil || got.Revision != d.Revision || got.Phase != d.Phase || !got.ReportedAt.Equal(d.ReportedAt) {
			return false
		}
	}
	return true
}
