package inventory

import (
	"encoding/json"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/console"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func received(kind topic.Kind, gw, dep string, msg proto.Message) console.Received {
	return console.Received{Topic: topic.Topic{Kind: kind, Tenant: "acme", Gateway: gw, Deployment: dep}, Message: msg, At: time.Unix(100, 0)}
}

func TestApply(t *testing.T) {
	running := &fleetv1.DeploymentStatus{Revision: 2, Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_HEALTHY}
	tests := []struct {
		name        string
		msgs        []console.Received
		wantKnown   bool
		wantOnline  bool
		wantPhase   Phase
		wantHealth  Health
		wantChanges []string
	}{
		{"status before any birth is ignored", []console.Received{received(topic.Status, "gw-1", "web", running)}, false, false, 0, 0, nil},
		{"birth then status", []console.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Status, "gw-1", "web", running)},
			true, true, Running, Healthy, []string{"gateway.online", "deployment.status"}},
		{"status removed", []console.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Status, "gw-1", "web", running), received(topic.Status, "gw-1", "web", nil)},
			true, true, 0, 0, []string{"gateway.online", "deployment.status", "deployment.removed"}},
		{"death", []console.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Death, "gw-1", "", &fleetv1.Death{Session: 1})},
			true, false, 0, 0, []string{"gateway.online", "gateway.offline"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hub := new(changes.Hub)
			sub := hub.Subscribe(16)
			inv := New(Config{Changes: hub})
			for _, m := range tt.msgs {
				inv.Apply(m)
			}
			o := inv.Observe(state.Key("acme", "gw-1"), "web")
			if o.Known != tt.wantKnown || o.Online != tt.wantOnline || o.Deployment.Phase != tt.wantPhase || o.Deployment.Health != tt.wantHealth {
				t.Errorf("got %+v, want known=%v online=%v phase=%v health=%v", o, tt.wantKnown, tt.wantOnline, tt.wantPhase, tt.wantHealth)
			}
			var kinds []string
			for len(sub.C) > 0 {
				kinds = append(kinds, (<-sub.C).Kind)
			}
			if len(kinds) != len(tt.wantChanges) {
				t.Fatalf("changes %v, want %v", kinds, tt.wantChanges)
			}
			for i := range kinds {
				if kinds[i] != tt.wantChanges[i] {
					t.Errorf("changes %v, want %v", kinds, tt.wantChanges)
				}
			}
		})
	}
}

// TestStored: the record is stored as before the phase and health were
// typed ("RUNNING", "healthy"), and restored as it was.
func TestStored(t *testing.T) {
	g := &Gateway{Tenant: "acme", ID: "gw-1", Online: true, Session: 3, Host: &Host{Hostname: "h"},
		Deployments: map[string]*Deployment{"web": {Name: "web", Revision: 2, Phase: Running, Health: Healthy},
			"db": {Name: "db", Phase: Phase(fleetv1.DeploymentStatus_PULLING)}},
		Registries: []Registry{{Registry: "quay.io/acme", Kind: "basic"}}}
	raw, err := json.Marshal(g.stored())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"tenant":"acme","id":"gw-1","online":true,"session":3,"host":{"hostname":"h"},` +
		`"deployments":{"db":{"name":"db","revision":0,"phase":"PULLING"},"web":{"name":"web","revision":2,"phase":"RUNNING","health":"healthy"}},` +
		`"registries":[{"registry":"quay.io/acme","kind":"basic"}],"running":0}`
	if string(raw) != want {
		t.Errorf("stored\n got %s\nwant %s", raw, want)
	}
	var s state.Gateway
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	back := restore(&s)
	if d := back.Deployments["web"]; d.Phase != Running || d.Health != Healthy || back.Host.Hostname != "h" || back.Registries[0].Kind != "basic" {
		t.Errorf("restored %+v, web %+v; want what was stored", back, d)
	}
}

func TestFilterAndIDs(t *testing.T) {
	inv := New(Config{})
	for i, labels := range []map[string]string{{"site": "berlin"}, {"site": "paris"}} {
		id := []string{"gw-1", "gw-2"}[i]
		inv.Apply(received(topic.Birth, id, "", &fleetv1.Birth{Session: 1, Labels: labels, Groups: []string{labels["site"]}}))
	}
	sel, _ := ParseSelector("site=berlin")
	if got := inv.IDs(Filter{Tenant: "acme", Selector: sel}); len(got) != 1 || got[0] != "gw-1" {
		t.Errorf("IDs(site=berlin) = %v, want [gw-1]", got)
	}
	if got := inv.List(Filter{AnyGroup: []string{"paris", "rome"}}); len(got) != 1 || got[0].ID != "gw-2" {
		t.Errorf("List(any group paris, rome) = %d gateways, want gw-2", len(got))
	}
	if got := inv.List(Filter{Tenant: "other"}); len(got) != 0 {
		t.Errorf("List(other tenant) = %d gateways, want 0", len(got))
	}
}
