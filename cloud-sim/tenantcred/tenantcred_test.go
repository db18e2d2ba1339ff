package tenantcred

import (
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func basic(registry, password string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: password}}}
}

// TestHolds: a gateway holds a credential when it reports the same scope
// with the same fingerprint; a new secret must be sent again.
func TestHolds(t *testing.T) {
	cred := basic("quay.io/acme", "s3cret")
	held := Describe([]*fleetv1.Credential{cred})
	tests := []struct {
		name string
		held []inventory.Registry
		cred *fleetv1.Credential
		want bool
	}{
		{"same secret", held, cred, true},
		{"nothing held", nil, cred, false},
		{"rotated secret", held, basic("quay.io/acme", "n3w"), false},
		{"another scope", held, basic("quay.io/other", "s3cret"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Holds(tt.held, tt.cred); got != tt.want {
				t.Errorf("Holds = %v, want %v", got, tt.want)
			}
		})
	}
	if held[0].Registry != "quay.io/acme" || held[0].Username != "robot" || held[0].Kind == "" {
		t.Errorf("Describe = %+v, want scope quay.io/acme, user robot and a kind", held[0])
	}
}

func TestSealNeedsAKey(t *testing.T) {
	if _, err := Seal("", []*fleetv1.Credential{basic("quay.io/acme", "x")}); err == nil {
		t.Error("Seal without a public key: no error")
	}
}
