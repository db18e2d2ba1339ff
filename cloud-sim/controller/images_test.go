package controller

import (
	"encoding/base64"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestSpecImages: a single container's image, or each service's of an
// application, by service name, each with the field that names it.
func TestSpecImages(t *testing.T) {
	tests := []struct {
		name string
		spec *fleetv1.DeploymentSpec
		want []specImage
	}{
		{"single", &fleetv1.DeploymentSpec{Image: "web:1"}, []specImage{{"web:1", "command.deploy.spec.image"}}},
		{"application", &fleetv1.DeploymentSpec{Services: map[string]*fleetv1.Service{"web": {Image: "web:1"}, "db": {Image: "db:1"}}},
			[]specImage{{"db:1", "command.deploy.spec.services.db.image"}, {"web:1", "command.deploy.spec.services.web.image"}}},
		{"none", &fleetv1.DeploymentSpec{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, specImages(tt.spec, "command.deploy.spec"), cmp.AllowUnexported(specImage{})); diff != "" {
				t.Errorf("images (-want +got):\n%s", diff)
			}
		})
	}
}

// TestJobsSealMissingCredentials: a deploy whose images come from several
// registries is preceded by one set-credentials sealing the credentials
// the gateway does not hold yet, and none when it holds them all.
func TestJobsSealMissingCredentials(t *testing.T) {
	a := &fleetv1.Credential{Registry: "reg-a.example.com", Fingerprint: "aaaaaaaaaaaa", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}}
	b := &fleetv1.Credential{Registry: "reg-b.example.com", Fingerprint: "bbbbbbbbbbbb", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "u", Password: "p"}}}
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	cmd := &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{Name: "app", Revision: 1}}}}
	tests := []struct {
		name     string
		held     []*fleetv1.Credential
		wantSent []string // registries of the set-credentials, nil for none
	}{
		{"holds none", nil, []string{"reg-a.example.com", "reg-b.example.com"}},
		{"holds one", []*fleetv1.Credential{a}, []string{"reg-b.example.com"}},
		{"holds both", []*fleetv1.Credential{a, b}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &inventory.Gateway{Tenant: "acme", ID: "gw-1", PublicKey: key, Registries: describe(tt.held)}
			jobs := (&Controller{}).jobs(&dispatch.Batch{ID: "b-1", Tenant: "acme"}, []*inventory.Gateway{g}, cmd, []*fleetv1.Credential{a, b}, nil, 0)
			var sent []string
			verbs := 0
			for _, j := range jobs {
				if j.Body.GetSetCredentials() != nil {
					for _, r := range j.Command.Credentials {
						sent = append(sent, r.Registry)
					}
				}
				if j.Body.GetDeploy() != nil {
					verbs++
				}
			}
			slices.Sort(sent)
			if !slices.Equal(sent, tt.wantSent) || verbs != 1 {
				t.Errorf("set-credentials of %v and %d deploys, want %v and 1", sent, verbs, tt.wantSent)
			}
		})
	}
}

func describe(list []*fleetv1.Credential) []inventory.Registry {
	var out []inventory.Registry
	for _, c := range list {
		out = append(out, inventory.Registry{Registry: c.GetRegistry(), Fingerprint: c.GetFingerprint()})
	}
	return out
}
