package tenantcred

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func basic(registry, password string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: password}}}
}

// TestHolds: a gateway holds a credential when it reports the same scope
// with the same fingerprint, as the controller stamped it; a new secret
// must be sent again, and so must a credential without a fingerprint.
func TestHolds(t *testing.T) {
	c := newCredentials(t)
	stamped := func(cr *fleetv1.Credential) *fleetv1.Credential { c.Stamp("acme", cr); return cr }
	cred := stamped(basic("quay.io/acme", "s3cret"))
	held := Describe([]*fleetv1.Credential{cred})
	tests := []struct {
		name string
		held []inventory.Registry
		cred *fleetv1.Credential
		want bool
	}{
		{"same secret", held, cred, true},
		{"nothing held", nil, cred, false},
		{"same secret, stamped again", held, stamped(basic("quay.io/acme", "s3cret")), true},
		{"rotated secret", held, stamped(basic("quay.io/acme", "n3w")), false},
		{"another scope", held, stamped(basic("quay.io/other", "s3cret")), false},
		{"not stamped", Describe([]*fleetv1.Credential{basic("quay.io/acme", "s3cret")}), basic("quay.io/acme", "s3cret"), false},
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

// TestStored: a credential is stored as before its record moved to
// package state, and restored as it was.
func TestStored(t *testing.T) {
	at := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	rec := &Credential{CredentialView: CredentialView{Tenant: "acme", Registry: "quay.io/acme", Kind: "basic", UpdatedAt: at,
		LastCheck: &CheckResult{Image: "quay.io/acme/web:1", OK: true, CheckedAt: at}}, Secret: []byte{1, 2}}
	raw, err := json.Marshal(rec.stored())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"tenant":"acme","registry":"quay.io/acme","kind":"basic","updatedAt":"2026-11-30T12:00:00Z",` +
		`"lastCheck":{"image":"quay.io/acme/web:1","ok":true,"checkedAt":"2026-11-30T12:00:00Z"},"secret":"AQI="}`
	if string(raw) != want {
		t.Errorf("stored\n got %s\nwant %s", raw, want)
	}
	var s state.Credential
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if back := restore(&s); !reflect.DeepEqual(back, rec) {
		t.Errorf("restored %+v, want %+v", back, rec)
	}
	// A credential that says insecure keeps saying so.
	rec.Insecure = true
	if err := json.Unmarshal(must(json.Marshal(rec.stored())), &s); err != nil {
		t.Fatal(err)
	}
	if back := restore(&s); !back.Insecure {
		t.Error("insecure lost between store and restore")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}
