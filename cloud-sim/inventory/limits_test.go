package inventory

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func birthWith(n int) *fleetv1.Birth {
	b := &fleetv1.Birth{Session: 1}
	for i := range n {
		b.Deployments = append(b.Deployments, &fleetv1.DeploymentSummary{Name: fmt.Sprintf("d%d", i), Revision: 1})
	}
	return b
}

func statuses(n int) []mqttclient.Received {
	var out []mqttclient.Received
	for i := range n {
		out = append(out, received(topic.Status, "gw-1", fmt.Sprintf("s%d", i), &fleetv1.DeploymentStatus{Revision: 1}))
	}
	return out
}

func events(n int, at time.Time) []mqttclient.Received {
	var out []mqttclient.Received
	for range n {
		r := received(topic.Events, "gw-1", "", &fleetv1.Event{Kind: "x"})
		r.At = at
		out = append(out, r)
	}
	return out
}

// TestLimits: what exceeds a gateway's limits is refused and recorded on
// its record, once a limit, with a change; what is within them passes.
func TestLimits(t *testing.T) {
	limits := Limits{MaxDeployments: 4, EventRate: 1, EventBurst: 3}
	t0 := time.Unix(100, 0)
	tests := []struct {
		name         string
		msgs         []mqttclient.Received
		wantOnline   bool
		wantDeps     int
		wantRefused  map[Limit]uint64
		wantChanges  int // gateway.refused changes
		wantEventsOK int
	}{
		{"birth at the limit", []mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(4))}, true, 4, nil, 0, 0},
		{"birth over the limit", []mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(5))}, false, 0, map[Limit]uint64{LimitDeployments: 1}, 1, 0},
		{"birth too large", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1,
			Labels: map[string]string{"big": strings.Repeat("x", 300<<10)}})}, false, 0, map[Limit]uint64{LimitBirth: 1}, 1, 0},
		{"birth with too many labels", []mqttclient.Received{received(topic.Birth, "gw-1", "", &fleetv1.Birth{Session: 1,
			Labels: manyLabels(300)})}, false, 0, map[Limit]uint64{LimitBirth: 1}, 1, 0},
		{"statuses over the limit", append([]mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(2))}, statuses(5)...),
			true, 4, map[Limit]uint64{LimitDeployments: 3}, 1, 0},
		{"a known deployment's status at the limit", append([]mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(4))},
			received(topic.Status, "gw-1", "d0", &fleetv1.DeploymentStatus{Revision: 2})), true, 4, nil, 0, 0},
		{"events over the burst", append([]mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(0))}, events(10, t0)...),
			true, 0, map[Limit]uint64{LimitEvents: 7}, 1, 3},
		{"events at the rate", append(append(append([]mqttclient.Received{received(topic.Birth, "gw-1", "", birthWith(0))},
			events(3, t0)...), events(2, t0.Add(2*time.Second))...), events(1, t0.Add(3*time.Second))...), true, 0, nil, 0, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hub := new(changes.Hub)
			sub := hub.Subscribe(64)
			inv := New(Config{Changes: hub, Limits: limits})
			for _, m := range tt.msgs {
				inv.Apply(m)
			}
			g, ok := inv.Get("acme", "gw-1")
			if !ok {
				t.Fatal("no record for the gateway")
			}
			if g.Online != tt.wantOnline || len(g.Deployments) != tt.wantDeps {
				t.Errorf("online %v with %d deployments, want %v with %d", g.Online, len(g.Deployments), tt.wantOnline, tt.wantDeps)
			}
			got := map[Limit]uint64{}
			for _, r := range g.Refused {
				got[r.Limit] = r.Count
				if !strings.Contains(r.Message, "refused") && !strings.Contains(r.Message, "dropped") || !strings.Contains(r.Message, "limit") {
					t.Errorf("refusal message %q does not say what was refused and which setting allows it", r.Message)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantRefused) && !(len(got) == 0 && len(tt.wantRefused) == 0) {
				t.Errorf("refused %v, want %v", got, tt.wantRefused)
			}
			refusedChanges, eventChanges := 0, 0
			for len(sub.C) > 0 {
				switch (<-sub.C).Kind {
				case "gateway.refused":
					refusedChanges++
				case "event":
					eventChanges++
				}
			}
			if refusedChanges != tt.wantChanges || eventChanges != tt.wantEventsOK {
				t.Errorf("%d gateway.refused and %d event changes, want %d and %d", refusedChanges, eventChanges, tt.wantChanges, tt.wantEventsOK)
			}
		})
	}
}

// TestRecordBounded: a gateway that reports the most it may, each text
// as long as a packet allows, keeps a record of bounded size, and the
// refusals survive a store round trip.
func TestRecordBounded(t *testing.T) {
	inv := New(Config{})
	inv.Apply(received(topic.Birth, "gw-1", "", birthWith(DefaultMaxDeployments)))
	long := strings.Repeat("é", 512<<10)
	for i := range DefaultMaxDeployments + 10 {
		inv.Apply(received(topic.Status, "gw-1", fmt.Sprintf("d%d", i), &fleetv1.DeploymentStatus{Revision: 2, Message: long, Image: long, ImageDigest: long}))
	}
	g, _ := inv.Get("acme", "gw-1")
	raw, err := json.Marshal(g.stored())
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 1<<20 {
		t.Errorf("stored record is %d bytes, want at most 1 MiB (NATS's maximum message)", len(raw))
	}
	if len(g.Refused) != 1 || g.Refused[0].Count != 10 {
		t.Errorf("refused %+v, want 10 statuses refused", g.Refused)
	}
	back := restore(g.stored())
	if len(back.Refused) != 1 || back.Refused[0].Count != 10 || back.Refused[0].Limit != LimitDeployments {
		t.Errorf("restored refusals %+v", back.Refused)
	}
}

func manyLabels(n int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprint("k", i)] = "v"
	}
	return m
}
