package inventory

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func received(kind topic.Kind, gw, dep string, msg proto.Message) mqttclient.Received {
	return mqttclient.Received{Topic: topic.Topic{Kind: kind, Tenant: "acme", Gateway: gw, Deployment: dep}, Message: msg, At: time.Unix(100, 0)}
}

func TestApply(t *testing.T) {
	running := &fleetv1.DeploymentStatus{Revision: 2, Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_HEALTHY}
	older := &fleetv1.DeploymentStatus{Revision: 1, Phase: fleetv1.DeploymentStatus_FAILED}
	tests := []struct {
		name        string
		msgs        []mqttclient.Received
		wantKnown   bool
		wantOnline  bool
		wantPhase   Phase
		wantHealth  Health
		wantChanges []string
	}{
		{"status before any birth is ignored", []mqttclient.Received{received(topic.Status, "gw-1", "web", running)}, false, false, 0, 0, nil},
		{"birth then status", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Status, "gw-1", "web", running)},
			true, true, Running, Healthy, []string{"gateway.online", "deployment.status"}},
		{"status removed", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Status, "gw-1", "web", running), received(topic.Status, "gw-1", "web", nil)},
			true, true, 0, 0, []string{"gateway.online", "deployment.status", "deployment.removed"}},
		{"the same status again, or an older one: one change", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}),
			received(topic.Status, "gw-1", "web", running), received(topic.Status, "gw-1", "web", running), received(topic.Status, "gw-1", "web", older)},
			true, true, Running, Healthy, []string{"gateway.online", "deployment.status"}},
		{"death", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}), received(topic.Death, "gw-1", "", &fleetv1.Death{Session: 1})},
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
		Deployments: map[string]*Deployment{"web": {Name: "web", Revision: 2, Phase: Running, Health: Healthy, ContainerID: "c0ffee"},
			"db": {Name: "db", Phase: Phase(fleetv1.DeploymentStatus_PULLING)}},
		Registries: []Registry{{Registry: "quay.io/acme", Kind: "basic"}}}
	raw, err := json.Marshal(g.stored())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"tenant":"acme","id":"gw-1","online":true,"session":3,"host":{"hostname":"h"},` +
		`"deployments":{"db":{"name":"db","revision":0,"phase":"PULLING"},"web":{"name":"web","revision":2,"phase":"RUNNING","health":"healthy","containerId":"c0ffee"}},` +
		`"registries":[{"registry":"quay.io/acme","kind":"basic"}],"running":0}`
	if string(raw) != want {
		t.Errorf("stored\n got %s\nwant %s", raw, want)
	}
	var s state.Gateway
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	back := restore(&s)
	if d := back.Deployments["web"]; d.Phase != Running || d.Health != Healthy || d.ContainerID != "c0ffee" || back.Host.Hostname != "h" || back.Registries[0].Kind != "basic" {
		t.Errorf("restored %+v, web %+v; want what was stored", back, d)
	}
}

// assigned is a hand-written Assigner: groups and labels by gateway id.
type assigned map[string]struct {
	groups []string
	labels map[string]string
}

func (a assigned) Assigned(_, id string) ([]string, map[string]string, bool) {
	g, ok := a[id]
	return g.groups, g.labels, ok
}

// TestFilterAndIDs: filters select by what the cloud assigned; a gateway
// announcing another group or label in its birth is not selected by it.
func TestFilterAndIDs(t *testing.T) {
	inv := New(Config{Assigned: assigned{
		"gw-1": {groups: []string{"berlin"}, labels: map[string]string{"site": "berlin"}},
		"gw-2": {groups: []string{"paris"}, labels: map[string]string{"site": "paris"}},
	}})
	// gw-3 is not provisioned and claims everything; gw-2 claims prod.
	for id, b := range map[string]*fleetv1.Birth{
		"gw-1": {Session: 1, Labels: map[string]string{"site": "berlin"}, Groups: []string{"berlin"}},
		"gw-2": {Session: 1, Labels: map[string]string{"site": "berlin", "env": "prod"}, Groups: []string{"prod", "berlin"}},
		"gw-3": {Session: 1, Labels: map[string]string{"site": "berlin", "env": "prod"}, Groups: []string{"prod", "berlin"}},
	} {
		inv.Apply(received(topic.Birth, id, "", b))
	}
	ids := func(f Filter) []string {
		got := inv.IDs(f)
		slices.Sort(got)
		return got
	}
	sel := func(s string) Selector {
		sel, err := ParseSelector(s)
		if err != nil {
			t.Fatal(err)
		}
		return sel
	}
	tests := []struct {
		name string
		f    Filter
		want []string
	}{
		{"selector", Filter{Tenant: "acme", Selector: sel("site=berlin")}, []string{"gw-1"}},
		{"a label only reported", Filter{Selector: sel("env=prod")}, nil},
		{"a label only reported, by existence", Filter{Selector: sel("env")}, nil},
		{"group", Filter{Group: "berlin"}, []string{"gw-1"}},
		{"a group only reported", Filter{Group: "prod"}, nil},
		{"any group", Filter{AnyGroup: []string{"paris", "rome"}}, []string{"gw-2"}},
		{"any group, one only reported", Filter{AnyGroup: []string{"prod"}}, nil},
		{"whole tenant", Filter{Tenant: "acme"}, []string{"gw-1", "gw-2", "gw-3"}},
		{"other tenant", Filter{Tenant: "other"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(tt.f); !slices.Equal(got, tt.want) {
				t.Errorf("IDs = %v, want %v", got, tt.want)
			}
			if got := inv.List(tt.f); len(got) != len(tt.want) {
				t.Errorf("List = %d gateways, want %d", len(got), len(tt.want))
			}
		})
	}
	if g, _ := inv.Get("acme", "gw-3"); g.Provisioned {
		t.Error("gw-3, which the cloud did not provision, is shown provisioned")
	}
	g, _ := inv.Get("acme", "gw-2")
	if !g.Provisioned {
		t.Error("gw-2 is not shown provisioned")
	}
	if g.Labels["site"] != "paris" || !slices.Equal(g.Groups, []string{"paris"}) || g.ReportedLabels["env"] != "prod" || !slices.Equal(g.ReportedGroups, []string{"prod", "berlin"}) {
		t.Errorf("gw-2: labels %v groups %v, reported %v %v; want the assigned ones apart from the reported ones", g.Labels, g.Groups, g.ReportedLabels, g.ReportedGroups)
	}
}

// TestDelivered: only credentials the cloud delivered count as delivered,
// not the registries a birth lists; they survive a new birth and a reload.
func TestDelivered(t *testing.T) {
	inv := New(Config{})
	inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1, Registries: []*fleetv1.RegistrySummary{{Registry: "claimed.example.com", Kind: "basic"}}}))
	inv.NoteCredentials("acme", "gw-1", []Registry{{Registry: "sent.example.com", Kind: "basic"}})
	inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 2}))
	g, _ := inv.Get("acme", "gw-1")
	if !slices.Equal(g.Delivered, []string{"sent.example.com"}) {
		t.Errorf("Delivered = %v, want [sent.example.com]", g.Delivered)
	}
	raw, _ := json.Marshal(g.stored())
	var s state.Gateway
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if back := restore(&s); !slices.Equal(back.Delivered, g.Delivered) {
		t.Errorf("restored Delivered = %v, want %v", back.Delivered, g.Delivered)
	}
}

// TestStatusFields: what a status says of its container is kept.
func TestStatusFields(t *testing.T) {
	inv := New(Config{})
	inv.Apply(received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1}))
	inv.Apply(received(topic.Status, "gw-1", "web", &fleetv1.DeploymentStatus{Name: "web", Revision: 1, Phase: fleetv1.DeploymentStatus_RUNNING,
		ImageDigest: "sha256:ab", ContainerId: "c0ffee", RestartCount: 2}))
	g, ok := inv.Get("acme", "gw-1")
	if !ok {
		t.Fatal("gateway not known after its birth")
	}
	if d := g.Deployments["web"]; d == nil || d.ContainerID != "c0ffee" || d.Digest != "sha256:ab" || d.RestartCount != 2 {
		t.Errorf("deployment %+v, want container c0ffee, digest sha256:ab, 2 restarts", d)
	}
}
