package controller

import (
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

type ownCommands map[string]dispatch.State

func (o ownCommands) Outcome(id string) (dispatch.State, string, string, bool) {
	st, ok := o[id]
	return st, "", "", ok
}

// TestRolloutCommands: the scheduler learns the final replies to rollout
// commands another replica sent; this replica's own records come first;
// ACCEPTED and replies to commands that are not a rollout's are not kept.
func TestRolloutCommands(t *testing.T) {
	peers := new(peerOutcomes)
	rc := rolloutCommands{disp: ownCommands{"ro-own": dispatch.Accepted}, peers: peers}
	for _, rep := range []*fleetv1.Reply{
		{CommandId: "ro-peer", Result: fleetv1.Reply_FAILED, Code: fleetv1.Reply_NO_SPACE, Message: "disk full"},
		{CommandId: "ro-accepted", Result: fleetv1.Reply_ACCEPTED},
		{CommandId: "c-console", Result: fleetv1.Reply_SUCCEEDED},
		{CommandId: "ro-own", Result: fleetv1.Reply_SUCCEEDED},
	} {
		peers.note("acme", "gw-1", rep)
	}
	tests := []struct {
		id     string
		want   dispatch.State
		code   string
		wantOK bool
	}{
		{"ro-peer", dispatch.Failed, "NO_SPACE", true},
		{"ro-own", dispatch.Accepted, "", true},
		{"ro-accepted", "", "", false},
		{"c-console", "", "", false},
	}
	for _, tt := range tests {
		st, code, _, ok := rc.Outcome(tt.id)
		if st != tt.want || code != tt.code || ok != tt.wantOK {
			t.Errorf("Outcome(%s) = %s %s %v, want %s %s %v", tt.id, st, code, ok, tt.want, tt.code, tt.wantOK)
		}
	}
}
