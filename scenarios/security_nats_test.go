package scenarios

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// evilSpec is what a forged work item asks a gateway to run.
var evilSpec = json.RawMessage(`{"name": "evil", "revision": 1, "image": "registry.example.com/evil:1"}`)

// natsLogin reads the embedded NATS's login file (user:password).
func natsLogin(t *testing.T, c *cloud) (user, password string) {
	t.Helper()
	b, err := os.ReadFile(c.NATSCreds)
	if err != nil {
		t.Fatal(err)
	}
	user, password, _ = strings.Cut(strings.TrimSpace(string(b)), ":")
	return user, password
}

// natsClient connects to the cloud's NATS as any client holding its
// credentials does (a compromised replica, a leaked login).
func natsClient(t *testing.T, c *cloud) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(c.NATSURL, nats.UserInfo(natsLogin(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// forgeWork publishes item on the rollout work queue and waits until the
// controller refused it (an event) or sent its command; it fails the test
// when a command with the item's id went out.
func forgeWork(t *testing.T, c *cloud, js jetstream.JetStream, item map[string]any) {
	t.Helper()
	sub := c.Controller.Subscribe(1024)
	defer sub.Close()
	id, _ := item["commandId"].(string)
	data, _ := json.Marshal(item)
	if _, err := js.Publish(context.Background(), state.WorkSubjects, data); err != nil {
		t.Fatal(err)
	}
	var refused *changes.Change
	testenv.Eventually(t, "the forged item refused or sent", func() bool {
		for {
			select {
			case ch := <-sub.C:
				if ch.Kind == "rollout.work.refused" && ch.Command == id {
					refused = &ch
					return true
				}
			default:
				_, sent := c.Controller.Command(id)
				return sent
			}
		}
	})
	if cmd, sent := c.Controller.Command(id); sent {
		t.Fatalf("forged work item %s sent command %s (%s) to %s/%s", item, id, cmd.Verb, cmd.Tenant, cmd.Gateway)
	}
	t.Logf("refused: %s", refused.Message)
}

// TestSecurityNATSForgedWork: a work item a NATS client publishes on the
// rollout work queue, for a rollout the store does not hold, a gateway not
// in the rollout, a gateway the rollout has not dispatched, or a command
// the rollout did not dispatch, sends nothing to any gateway, whatever
// spec it carries; the rollout itself goes on.
func TestSecurityNATSForgedWork(t *testing.T) {
	c := simCloud(t, 3, simfleet.Config{})
	// The canary (one of sim-1, sim-2) is dispatched; the other waits out
	// the soak; sim-3 is not in the rollout.
	r := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{Gateways: []string{"sim-1", "sim-2"}},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{Canary: &api.Canary{Count: 1, Soak: api.Duration(time.Hour)}}})
	var canary, queued string
	testenv.Eventually(t, "the canary dispatched", func() bool {
		for _, g := range rolloutStatus(t, c, r.ID).Gateways {
			switch g.State {
			case api.GwQueued:
				queued = g.Gateway
			case api.GwSucceeded:
				canary = g.Gateway
			}
		}
		return canary != "" && queued != ""
	})
	js := natsClient(t, c)
	tests := []struct {
		name string
		item map[string]any
	}{
		{"unknown rollout", map[string]any{"rollout": "r-forged", "tenant": "sim", "gateway": "sim-3", "commandId": "ro-forged-1", "spec": evilSpec}},
		{"gateway not in the rollout", map[string]any{"rollout": r.ID, "tenant": "sim", "gateway": "sim-3",
			"commandId": rollout.CommandID(r.ID, "sim-3", 1, "deploy"), "spec": evilSpec}},
		{"gateway not dispatched, another spec", map[string]any{"rollout": r.ID, "tenant": "sim", "gateway": queued,
			"commandId": rollout.CommandID(r.ID, queued, 1, "deploy"), "spec": evilSpec}},
		{"command the rollout did not dispatch", map[string]any{"rollout": r.ID, "tenant": "sim", "gateway": canary,
			"commandId": "ro-forged-4", "spec": evilSpec}},
		{"rollback the rollout did not decide", map[string]any{"rollout": r.ID, "tenant": "sim", "gateway": canary,
			"commandId": rollout.CommandID(r.ID, canary, 1, "rollback"), "spec": evilSpec}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { forgeWork(t, c, js, tt.item) })
	}
	for _, id := range []string{"sim-1", "sim-2", "sim-3"} {
		if g := c.gateway(t, "sim", id); g == nil || g.Deployments["evil"] != nil {
			t.Errorf("sim/%s runs the forged deployment: %+v", id, g)
		}
	}
	if v := rolloutStatus(t, c, r.ID); v.State != api.RolloutRunning || v.Counts[api.GwSucceeded] != 1 || v.Counts[api.GwQueued] != 1 {
		t.Errorf("rollout after the forged items: %s %v, want RUNNING with the canary SUCCEEDED and one QUEUED", v.State, v.Counts)
	}
}

// TestSecurityNATSForgedWorkRealAgent: a forged work item naming another
// tenant's real agent under a known rollout reaches no agent.
func TestSecurityNATSForgedWorkRealAgent(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	c := simCloud(t, 1, simfleet.Config{})
	agent := c.provisionAgent(t, "acme", gw1)
	testenv.Eventually(t, "acme/gw-1 online", func() bool {
		g := c.gateway(t, "acme", gw1)
		return g != nil && g.Online
	})
	r := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true})
	forgeWork(t, c, natsClient(t, c), map[string]any{"rollout": r.ID, "tenant": "acme", "gateway": gw1,
		"commandId": "ro-forged-agent", "spec": evilSpec})
	if g := c.gateway(t, "acme", gw1); g == nil || len(g.Deployments) != 0 {
		t.Errorf("acme/gw-1 after the forged item: %+v", g)
	}
	if strings.Contains(agent.Logs(), "ro-forged-agent") {
		t.Errorf("the agent received the forged command:\n%s", agent.Logs())
	}
	if v := waitRollout(t, c, r.ID, time.Minute); v.State != api.RolloutSucceeded {
		t.Errorf("the legitimate rollout: %s %v", v.State, v.Counts)
	}
}

// TestSecurityNATSLogin: cloud-sim serve's embedded NATS listens on
// loopback and refuses a client without the login it made in the data
// directory (mode 0600), so that a local process cannot queue work or
// read the fleet's state; the controller and a client with the login
// get in.
func TestSecurityNATSLogin(t *testing.T) {
	c := newCloud(t, simfleet.Config{})
	if want := filepath.Join(c.dataDir, "nats-login"); c.NATSCreds != want {
		t.Errorf("NATS login file %s, want %s", c.NATSCreds, want)
	}
	if fi, err := os.Stat(c.NATSCreds); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("NATS login file: %v; want mode 0600", err)
	}
	if !strings.HasPrefix(c.NATSURL, "nats://127.0.0.1:") {
		t.Errorf("embedded NATS at %s, want loopback", c.NATSURL)
	}
	user, password := natsLogin(t, c)
	for _, tt := range []struct {
		name string
		opts []nats.Option
		ok   bool
	}{
		{"no login", nil, false},
		{"a guessed password", []nats.Option{nats.UserInfo(user, "password")}, false},
		{"the login", []nats.Option{nats.UserInfo(user, password)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(c.NATSURL, tt.opts...)
			if nc != nil {
				nc.Close()
			}
			if tt.ok != (err == nil) {
				t.Errorf("connect %s: %v; want ok %v", tt.name, err, tt.ok)
			}
		})
	}
	// The same login after a restart: other replicas keep theirs.
	c.restart(t)
	if u, p := natsLogin(t, c); u != user || p != password {
		t.Error("the NATS login changed on restart")
	}
}
