package scenarios

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/url"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// rogueSigner signs with a key of its own, which no gateway trusts.
type rogueSigner struct{ key ed25519.PrivateKey }

func (r rogueSigner) Sign(_ context.Context, _, topicName, contentType string, payload []byte) (string, string, error) {
	return cmdsig.Sign(r.key, topicName, contentType, payload)
}

// TestSecuritySignedCommands: whoever holds the controller's broker
// password (or any publish right on command topics) cannot command a
// gateway provisioned with its tenant's command-signing keys: unsigned
// commands, commands signed with another key and unsigned sealed
// credentials are refused UNAUTHENTICATED and nothing runs. The normal API
// path, which signs, still deploys to the real agent and to simulated
// gateways.
func TestSecuritySignedCommands(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	docker := testenv.DockerClient(t)
	c := startCloud(t, 1)
	agent := c.provisionAgent(t, "acme", gw1)
	testenv.RemoveOwned(t, docker, "acme/"+gw1, "")
	var birth *api.Gateway
	testenv.Eventually(t, "gw-1 and sim-1 online", func() bool {
		birth = c.gateway(t, "acme", gw1)
		sim := c.gateway(t, "sim", "sim-1")
		return birth != nil && birth.Online && sim != nil && sim.Online
	})
	if !strings.Contains(agent.Logs(), "commands must be signed") {
		t.Errorf("the agent did not say it requires signed commands:\n%s", agent.Logs())
	}

	// The leaked controller password, another client id.
	u, _ := url.Parse(c.BrokerURL.String())
	dial := func(id string, signer mqttclient.Signer) *mqttclient.Console {
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
		defer cancel()
		con, err := mqttclient.Dial(ctx, mqttclient.Config{BrokerURL: u, ID: id, Username: identity.ControllerUser, Password: []byte(c.ControllerPassword),
			Scheme: topic.Default(), Encoding: codec.JSON, Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { con.Close() })
		return con
	}
	unsigned := dial("rogue-1", nil)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	forged := dial("rogue-2", rogueSigner{other})

	sealed, err := credential.Seal(birth.PublicKey, []byte(`{"credentials": [{"registry": "registry.example.com", "basic": {"username": "u", "password": "attacker"}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	now := timestamppb.Now()
	evil := &fleetv1.DeploymentSpec{Name: "evil", Revision: 1, Image: "registry.example.com/evil:1", NetworkMode: "none"}
	tests := []struct {
		name string
		con  *mqttclient.Console
		gw   string
		cmd  *fleetv1.Command
	}{
		{"unsigned deploy to the agent", unsigned, gw1, &fleetv1.Command{Id: "evil-1", IssuedAt: now, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: evil}}}},
		{"forged deploy to the agent", forged, gw1, &fleetv1.Command{Id: "evil-2", IssuedAt: now, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: evil}}}},
		{"unsigned sealed credentials", unsigned, gw1, &fleetv1.Command{Id: "evil-3", IssuedAt: now, Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: sealed}}}},
		{"unsigned deploy to a simulated gateway", unsigned, "sim-1", &fleetv1.Command{Id: "evil-4", IssuedAt: now, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: evil}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant := "acme"
			if tt.gw == "sim-1" {
				tenant = "sim"
			}
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			req, err := tt.con.Send(ctx, tenant, tt.gw, tt.cmd)
			if err != nil {
				t.Fatal(err)
			}
			r, err := req.Final(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != fleetv1.Reply_UNAUTHENTICATED || r.GetField() != "signature" {
				t.Errorf("reply = %v, want REJECTED UNAUTHENTICATED on signature", r)
			}
		})
	}
	g := c.gateway(t, "acme", gw1)
	if _, ok := g.Deployments["evil"]; ok || slices.ContainsFunc(g.Registries, func(r api.Registry) bool { return r.Registry == "registry.example.com" }) {
		t.Errorf("a refused command took effect: deployments %v, registries %v", g.Deployments, g.Registries)
	}

	// The API path signs: it deploys to the real agent and the simulated one.
	reg := testimage.NewRegistry(t)
	testenv.RemoveOwned(t, docker, "acme/"+gw1, reg.Host+"/")
	img, _ := reg.Push(t, testimage.Spec{Repo: "acme/web", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	for _, target := range []api.Target{{Tenant: "acme", Gateways: []string{gw1}}, {Tenant: "sim", All: true}} {
		cmd := &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{
			Name: "web", Revision: 1, Image: img, NetworkMode: "none"}}}}
		b := c.sendUnchecked(t, target, cmd, "90s")
		if !b.Done || b.Failed != 0 || b.Counts["SUCCEEDED"] != 1 {
			t.Errorf("deploy to %+v through the API: %+v, want SUCCEEDED", target, b)
		}
	}
}

// sendUnchecked is send with skipRegistryCheck: the test registry is on
// loopback.
func (c *cloud) sendUnchecked(t *testing.T, target api.Target, cmd *fleetv1.Command, wait string) *api.BatchView {
	t.Helper()
	body, _ := protojson.Marshal(cmd)
	var b api.BatchView
	if err := c.api.Do(context.Background(), "POST", "/v1/commands", api.CommandRequest{Target: target, Command: body, Wait: wait, SkipRegistryCheck: true}, &b, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	return &b
}
