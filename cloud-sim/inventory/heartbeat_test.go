package inventory

import (
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestHeartbeatsWriteSeldom: a heartbeat that changes nothing but
// lastSeen marks the gateway for writing only when its stored lastSeen is
// half the stale threshold old (a minute, at the default 2); one that
// reports another running count, at once.
func TestHeartbeatsWriteSeldom(t *testing.T) {
	at := func(sec int) time.Time { return time.Unix(1000+int64(sec), 0) }
	beat := func(sec int, running uint32) mqttclient.Received {
		r := received(topic.Metrics, "gw-1", "", &fleetv1.Metrics{RunningCount: running})
		r.At = at(sec)
		return r
	}
	tests := []struct {
		name      string
		beat      mqttclient.Received
		wantDirty bool
	}{
		{"same count, the next heartbeat (30 s)", beat(30, 1), false},
		{"same count, a minute after the write", beat(60, 1), true},
		{"another count", beat(10, 2), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := New(Config{})
			birth := received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1})
			birth.At = at(0)
			inv.Apply(birth)
			inv.Apply(beat(0, 1))
			inv.mu.Lock()
			inv.gateways[state.Key("acme", "gw-1")].stored() // written
			inv.dirty = map[string]struct{}{}
			inv.mu.Unlock()
			inv.Apply(tt.beat)
			inv.mu.Lock()
			_, dirty := inv.dirty[state.Key("acme", "gw-1")]
			inv.mu.Unlock()
			if dirty != tt.wantDirty {
				t.Errorf("marked for writing: %v, want %v", dirty, tt.wantDirty)
			}
			if g, _ := inv.Get("acme", "gw-1"); !g.LastSeen.Equal(tt.beat.At) {
				t.Errorf("lastSeen %v, want %v (in memory at once)", g.LastSeen, tt.beat.At)
			}
		})
	}
}
