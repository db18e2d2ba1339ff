package inventory

import (
	"testing"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestSelector(t *testing.T) {
	labels := map[string]string{"site": "berlin", "tier": "canary"}
	tests := []struct {
		sel     string
		want    bool
		wantErr bool
	}{
		{"", true, false},
		{"site=berlin", true, false},
		{"site==berlin", true, false},
		{"site=paris", false, false},
		{"site=berlin,tier!=canary", false, false},
		{"site=berlin,tier!=main", true, false},
		{"tier", true, false},
		{"!tier", false, false},
		{"!zone", true, false},
		{"zone!=x", true, false},
		{" site = berlin , tier ", true, false},
		{"=berlin", false, true},
		{"!", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.sel, func(t *testing.T) {
			s, err := ParseSelector(tt.sel)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseSelector(%q) error = %v, want error %v", tt.sel, err, tt.wantErr)
			}
			if err == nil && s.Matches(labels) != tt.want {
				t.Errorf("%q matches %v = %v, want %v", tt.sel, labels, !tt.want, tt.want)
			}
		})
	}
}

// TestBirthsAndDeaths applies certificates in the orders a broker may
// deliver them (retained ones after a reconnect come in any order).
func TestBirthsAndDeaths(t *testing.T) {
	birth := func(s uint64) *fleetv1.Birth { return &fleetv1.Birth{Session: s} }
	death := func(s uint64) *fleetv1.Death {
		return &fleetv1.Death{Session: s, Reason: fleetv1.Death_CONNECTION_LOST}
	}
	tests := []struct {
		name       string
		seq        []any
		wantOnline bool
		wantSess   uint64
	}{
		{"birth", []any{birth(1)}, true, 1},
		{"birth then its death", []any{birth(1), death(1)}, false, 1},
		{"death of an older session after a birth", []any{birth(2), death(1)}, true, 2},
		{"retained old birth after its death", []any{death(3), birth(3)}, false, 3},
		{"new birth after a death", []any{birth(1), death(1), birth(2)}, true, 2},
		{"older birth after a newer one", []any{birth(5), birth(4)}, true, 5},
		{"duplicate death", []any{birth(1), death(1), death(1)}, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &Gateway{Tenant: "acme", ID: "gw-1"}
			for _, m := range tt.seq {
				switch m := m.(type) {
				case *fleetv1.Birth:
					g.applyBirth(m, time.Now())
				case *fleetv1.Death:
					g.applyDeath(m, time.Now())
				}
			}
			if g.Online != tt.wantOnline || g.Session != tt.wantSess {
				t.Errorf("online=%v session=%d, want online=%v session=%d", g.Online, g.Session, tt.wantOnline, tt.wantSess)
			}
		})
	}
}
