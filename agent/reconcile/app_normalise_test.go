package reconcile

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/agent/engine"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestServicesNormalise(t *testing.T) {
	app := func(rev int64, mutate func(*fleetv1.DeploymentSpec)) *fleetv1.DeploymentSpec {
		s := &fleetv1.DeploymentSpec{Name: "shop", Revision: rev,
			Networks: []*fleetv1.AppNetwork{{Name: "back"}}, Volumes: []*fleetv1.AppVolume{{Name: "data"}},
			Services: map[string]*fleetv1.Service{
				"web":     {Image: "r/web:1", NetworkMode: "bridge", Networks: []string{"back"}, DependsOn: []*fleetv1.Dependency{{Service: "migrate", Condition: fleetv1.Dependency_COMPLETED_SUCCESSFULLY}}},
				"migrate": {Image: "r/db:1", DependsOn: []*fleetv1.Dependency{{Service: "db"}}},
				"db": {Image: "r/db:1", Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "data", Target: "/d"},
					{Type: fleetv1.Mount_VOLUME, Source: "other", Target: "/o"}}},
			}}
		if mutate != nil {
			mutate(s)
		}
		return s
	}
	single := &fleetv1.DeploymentSpec{Name: "web", Revision: 3, Image: "r/web:1"}
	type view struct {
		Names, Containers, Mounts []string
		Jobs                      []bool
		Net                       []engine.Network
		NetworkMode               string
	}
	see := func(spec *fleetv1.DeploymentSpec) view {
		var v view
		for _, s := range services(spec) {
			v.Names = append(v.Names, s.name)
			v.Containers = append(v.Containers, s.containerName(spec.GetRevision()))
			v.Jobs = append(v.Jobs, s.job)
			for _, m := range s.spec.GetMounts() {
				v.Mounts = append(v.Mounts, m.GetSource())
			}
			if s.name == "web" {
				v.Net, v.NetworkMode = s.networks, s.spec.GetNetworkMode()
			}
		}
		return v
	}
	tests := []struct {
		name string
		spec *fleetv1.DeploymentSpec
		want view
	}{
		{"single container", single, view{Names: []string{"web"}, Containers: []string{"fleet-web-r3"}, Jobs: []bool{false}}},
		{"application", app(2, nil), view{Names: []string{"db", "migrate", "web"},
			Containers: []string{"fleet-shop-db-r2", "fleet-shop-migrate-r2", "fleet-shop-web-r2"}, Jobs: []bool{false, true, false},
			Mounts: []string{"fleet-shop-data", "other"}, Net: []engine.Network{{Name: "fleet-shop-back", Aliases: []string{"web"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, see(tt.spec)); diff != "" {
				t.Errorf("normalised (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("hashes", func(t *testing.T) {
		hashes := func(spec *fleetv1.DeploymentSpec) map[string]string {
			out := map[string]string{}
			for _, s := range services(spec) {
				out[s.name] = s.hash
			}
			return out
		}
		if s := services(single)[0]; s.hash != engine.SpecHash(single) || s.spec != single {
			t.Errorf("single container's hash %s, want the spec's own %s", s.hash, engine.SpecHash(single))
		}
		r1, r2 := hashes(app(1, nil)), hashes(app(2, nil))
		if !cmp.Equal(r1, r2) {
			t.Errorf("hashes differ across revisions of the same services: %v, %v", r1, r2)
		}
		web2 := hashes(app(2, func(s *fleetv1.DeploymentSpec) { s.Services["web"].Image = "r/web:2" }))
		if web2["web"] == r1["web"] || web2["db"] != r1["db"] || web2["migrate"] != r1["migrate"] {
			t.Errorf("after web's image changed: %v (before %v), want only web's hash changed", web2, r1)
		}
		internal := hashes(app(2, func(s *fleetv1.DeploymentSpec) { s.Networks[0].Internal = true }))
		if internal["web"] == r1["web"] || internal["db"] != r1["db"] {
			t.Errorf("after the network became internal: %v (before %v), want web's hash changed", internal, r1)
		}
		deps := hashes(app(2, func(s *fleetv1.DeploymentSpec) {
			s.Services["migrate"].DependsOn[0].Condition = fleetv1.Dependency_STARTED
		}))
		if !cmp.Equal(deps, r1) {
			t.Errorf("a dependency's condition changed the containers' hashes: %v, %v", deps, r1)
		}
	})
}
