package inventory

import (
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestHeartbeatsWriteSeldom: a heartbeat, event or status that changes
// nothing stored but times (lastSeen, a deployment's updatedAt) marks the
// gateway for writing only when what is stored is half the stale
// threshold old (a minute, at the default 2); one that changes anything
// else (another running count, another phase, message or revision), at
// once. A pull's progress, which the inventory does not keep, is most of
// a rollout's statuses: each rewrote the gateway's whole record.
func TestHeartbeatsWriteSeldom(t *testing.T) {
	at := func(sec int) time.Time { return time.Unix(1000+int64(sec), 0) }
	beat := func(sec int, running uint32) mqttclient.Received {
		r := received(topic.Metrics, "gw-1", "", &fleetv1.Metrics{RunningCount: running})
		r.At = at(sec)
		return r
	}
	event := func(sec int) mqttclient.Received {
		r := received(topic.Events, "gw-1", "", &fleetv1.Event{Kind: "pulled", Message: "web"})
		r.At = at(sec)
		return r
	}
	pulling := func(done uint64) *fleetv1.DeploymentStatus {
		return &fleetv1.DeploymentStatus{Name: "web", Revision: 2, Phase: fleetv1.DeploymentStatus_PULLING, Image: "r.example/web:2",
			PullProgress: &fleetv1.PullProgress{BytesDone: done, BytesTotal: 100}}
	}
	status := func(sec int, st *fleetv1.DeploymentStatus) mqttclient.Received {
		st.UpdatedAt = timestamppb.New(at(sec))
		r := received(topic.Status, "gw-1", "web", st)
		r.At = at(sec)
		return r
	}
	running := &fleetv1.DeploymentStatus{Name: "web", Revision: 2, Phase: fleetv1.DeploymentStatus_RUNNING, Image: "r.example/web:2"}
	failing := pulling(50)
	failing.Message = "retrying: connection reset"
	tests := []struct {
		name      string
		pub       mqttclient.Received
		wantDirty bool
	}{
		{"same count, the next heartbeat (30 s)", beat(30, 1), false},
		{"same count, a minute after the write", beat(60, 1), true},
		{"another count", beat(10, 2), true},
		{"an event", event(10), false},
		{"a pull's progress", status(10, pulling(50)), false},
		{"a pull's progress, a minute after the write", status(60, pulling(90)), true},
		{"the pull's progress reported before", status(-10, pulling(5)), false},
		{"running", status(10, running), true},
		{"another message", status(10, failing), true},
		{"another deployment", received(topic.Status, "gw-1", "db", pulling(1)), true},
		{"the deployment removed", received(topic.Status, "gw-1", "web", nil), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := New(Config{})
			birth := received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1})
			birth.At = at(0)
			inv.Apply(birth)
			inv.Apply(beat(0, 1))
			inv.Apply(status(0, pulling(10)))
			inv.mu.Lock()
			inv.gateways[state.Key("acme", "gw-1")].stored() // written
			inv.dirty = map[string]struct{}{}
			inv.mu.Unlock()
			inv.Apply(tt.pub)
			inv.mu.Lock()
			_, dirty := inv.dirty[state.Key("acme", "gw-1")]
			inv.mu.Unlock()
			if dirty != tt.wantDirty {
				t.Errorf("marked for writing: %v, want %v", dirty, tt.wantDirty)
			}
			want := tt.pub.At
			if want.Before(at(0)) {
				want = at(0) // never back
			}
			if g, _ := inv.Get("acme", "gw-1"); !g.LastSeen.Equal(want) {
				t.Errorf("lastSeen %v, want %v (in memory at once)", g.LastSeen, want)
			}
		})
	}
}
