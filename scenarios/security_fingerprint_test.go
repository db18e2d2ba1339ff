package scenarios

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestSecurityCredentialFingerprint performs issue 12 item 13: the
// fingerprint of a credential, shown by the API and published in
// gateways' births, was the unsalted sha256(username\0password)[:12], so
// anyone reading either could test guessed passwords offline. Now it is a
// MAC keyed with the controller's key: not reproducible from the username
// and password (this failed before), and still what tells a gateway
// holding the current credential (which gets no set-credentials ahead of
// a deploy) from a stale one (which does).
func TestSecurityCredentialFingerprint(t *testing.T) {
	const user, registry, image = "robot", "registry.example.com/team", "registry.example.com/team/web:1"
	c := startCloud(t, 2)
	testenv.Eventually(t, "2 simulated gateways online", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?online=true&tenant=sim", &l)
		return l.Count == 2
	})
	setCred := func(password string) string {
		t.Helper()
		cred, _ := protojson.Marshal(basic(registry, user, password))
		var v api.CredentialView
		if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/sim/credentials", api.CredentialRequest{Credential: cred}, &v, nil); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(user + "\x00" + password))
		if unsalted := hex.EncodeToString(sum[:])[:12]; v.Fingerprint == unsalted || len(v.Fingerprint) != 12 {
			t.Fatalf("fingerprint %q: want 12 hex digits, not the unsalted SHA-256 of username and password %q", v.Fingerprint, unsalted)
		}
		return v.Fingerprint
	}
	rev := int64(0)
	// deploy deploys image to gws and returns, per gateway, the verbs of
	// the commands it got.
	deploy := func(gws ...string) map[string][]string {
		t.Helper()
		rev++
		body, _ := protojson.Marshal(&fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{
			Spec: &fleetv1.DeploymentSpec{Name: "web", Revision: rev, Image: image}}}})
		var b api.BatchView
		req := api.CommandRequest{Target: api.Target{Tenant: "sim", Gateways: gws}, Command: body, Wait: "1m", SkipRegistryCheck: true}
		if err := c.api.Do(context.Background(), "POST", "/v1/commands", req, &b, nil); err != nil {
			t.Fatal(err)
		}
		verbs := map[string][]string{}
		for _, cmd := range b.Commands {
			if cmd.Verb == string(topic.SetCredentials) && cmd.State != "SUCCEEDED" {
				t.Fatalf("set-credentials to %s: %s %s", cmd.Gateway, cmd.State, cmd.Message)
			}
			verbs[cmd.Gateway] = append(verbs[cmd.Gateway], cmd.Verb)
		}
		return verbs
	}
	holds := func(id, fp string) bool {
		g := c.gateway(t, "sim", id)
		return g != nil && slices.ContainsFunc(g.Registries, func(r api.Registry) bool { return r.Registry == registry && r.Fingerprint == fp })
	}
	sentAhead := func(verbs []string) bool { return slices.Contains(verbs, string(topic.SetCredentials)) }

	first := setCred("hunter2")
	if v := deploy("sim-1", "sim-2"); !sentAhead(v["sim-1"]) || !sentAhead(v["sim-2"]) {
		t.Fatalf("first deploy sent %v, want the credential ahead to both", v)
	}
	testenv.Eventually(t, "both gateways report the credential's fingerprint", func() bool { return holds("sim-1", first) && holds("sim-2", first) })

	current := setCred("hunter3")
	if current == first {
		t.Fatalf("a new password kept fingerprint %s", first)
	}
	if v := deploy("sim-1"); !sentAhead(v["sim-1"]) {
		t.Fatalf("deploy after the rotation sent %v, want the new credential ahead", v)
	}
	// sim-1 holds the current credential, sim-2 a stale one: the cloud
	// tells them apart by fingerprint.
	if v := deploy("sim-1", "sim-2"); sentAhead(v["sim-1"]) || !sentAhead(v["sim-2"]) {
		t.Errorf("deploy sent %v, want the credential ahead to sim-2 (stale) only, not sim-1 (current)", v)
	}
	// The birth reports what the gateway stored, fingerprint included.
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-1", "sim-2"}}, rebirthCmd(), "30s")
	testenv.Eventually(t, "births report the current fingerprint", func() bool { return holds("sim-1", current) && holds("sim-2", current) })
}
