package scenarios

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// commanded lists the gateways a batch has commands for.
func commanded(b *api.BatchView) []string {
	var ids []string
	for _, c := range b.Commands {
		if !slices.Contains(ids, c.Gateway) {
			ids = append(ids, c.Gateway)
		}
	}
	slices.Sort(ids)
	return ids
}

// TestSecurityTargetReportedGroupsAndLabels: a gateway announcing groups
// [prod] and label env=prod in its birth, while the cloud provisioned it
// with neither, receives no command, credential push or rollout aimed at
// prod; the gateway the cloud provisioned in prod does. The API shows
// what a birth says apart from what the cloud assigned; labelling the
// gateway in the cloud (CLI) makes it a target. (Before: the announcing
// gateway got every one of them, the registry password included.)
func TestSecurityTargetReportedGroupsAndLabels(t *testing.T) {
	c := startCloud(t, 0)
	c.provisionAgentWith(t, "acme", "gw-prod", api.ProvisionRequest{Groups: []string{"prod"}, Labels: map[string]string{"env": "prod"}})
	c.provisionAgentWith(t, "acme", "gw-evil", api.ProvisionRequest{}, "--group", "prod", "--label", "env=prod")
	testenv.Eventually(t, "both gateways online", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?tenant=acme&online=true", &l)
		return l.Count == 2
	})
	const secret = "prod-registry-pa55word"
	cred, _ := protojson.Marshal(&fleetv1.Credential{Registry: "registry.example.com",
		Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "prod-robot", Password: secret}}})
	if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/acme/credentials", api.CredentialRequest{Credential: cred}, nil, nil); err != nil {
		t.Fatal(err)
	}
	push := func(target api.Target) *api.BatchView {
		var b api.BatchView
		if err := c.api.Do(context.Background(), "POST", "/v1/tenants/acme/credentials/push", api.PushRequest{Target: target, Registry: "registry.example.com"}, &b, nil); err != nil {
			t.Fatalf("push: %v", err)
		}
		return &b
	}
	tests := []struct {
		name string
		send func() *api.BatchView
	}{
		{"command to group prod", func() *api.BatchView {
			return c.send(t, api.Target{Tenant: "acme", Group: "prod"}, rebirthCmd(), "20s")
		}},
		{"command to selector env=prod", func() *api.BatchView {
			return c.send(t, api.Target{Tenant: "acme", Selector: "env=prod"}, rebirthCmd(), "20s")
		}},
		{"command to selector env", func() *api.BatchView {
			return c.send(t, api.Target{Tenant: "acme", Selector: "env"}, rebirthCmd(), "20s")
		}},
		{"credential push to group prod", func() *api.BatchView { return push(api.Target{Tenant: "acme", Group: "prod"}) }},
		{"credential push to selector env=prod", func() *api.BatchView { return push(api.Target{Tenant: "acme", Selector: "env=prod"}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := commanded(tt.send()); !slices.Equal(got, []string{"gw-prod"}) {
				t.Errorf("commands went to %v, want [gw-prod] only", got)
			}
		})
	}
	t.Run("rollout to group prod", func(t *testing.T) {
		v := createRollout(t, c, api.RolloutSpec{Tenant: "acme", Targets: api.RolloutTargets{Groups: []string{"prod"}},
			Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true})
		if v.Total != 1 {
			t.Errorf("rollout to group prod targets %d gateways, want 1 (gw-prod)", v.Total)
		}
	})

	evil := c.gateway(t, "acme", "gw-evil")
	if len(evil.Labels) != 0 || len(evil.Groups) != 0 || evil.ReportedLabels["env"] != "prod" || !slices.Equal(evil.ReportedGroups, []string{"prod"}) {
		t.Errorf("gw-evil: labels %v groups %v, reported labels %v groups %v; want none assigned, the birth's shown as reported",
			evil.Labels, evil.Groups, evil.ReportedLabels, evil.ReportedGroups)
	}
	if g := c.gateway(t, "acme", "gw-prod"); !g.Provisioned || g.Labels["env"] != "prod" || !slices.Equal(g.Groups, []string{"prod"}) {
		t.Errorf("gw-prod: labels %v groups %v, want the provisioned env=prod, [prod]", g.Labels, g.Groups)
	}
	for _, p := range []string{"/v1/gateways/acme/gw-evil", "/v1/gateways/acme/gw-prod", "/v1/batches"} {
		if raw := c.get(t, p, nil); bytes.Contains(raw, []byte(secret)) {
			t.Errorf("GET %s returned the secret", p)
		}
	}

	// The operator labels gw-evil in the cloud: now it is a target.
	run := func(args ...string) (int, string) {
		var out, errs bytes.Buffer
		env := cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errs, Getenv: func(string) string { return "" }}
		code := cli.Run(context.Background(), env, append(args, "--api", c.APIURL, "--data", c.dataDir))
		return code, out.String() + errs.String()
	}
	if code, out := run("label", "acme/gw-evil", "env=prod", "tier=canary"); code != 0 || !strings.Contains(out, "env=prod,tier=canary") {
		t.Fatalf("label: exit %d\n%s", code, out)
	}
	if code, out := run("label", "acme/gw-evil", "tier-", "-o", "json"); code != 0 || strings.Contains(out, "canary") {
		t.Fatalf("label tier-: exit %d\n%s", code, out)
	}
	if code, out := run("label", "acme/gw-evil", "bad key=x"); code != cli.ExitFailed || !strings.Contains(out, "labels") {
		t.Fatalf("label with a bad key: exit %d, want %d naming the field\n%s", code, cli.ExitFailed, out)
	}
	if code, out := run("label", "acme/nobody", "env=prod"); code != cli.ExitFailed || !strings.Contains(out, "not provisioned") {
		t.Fatalf("label an unprovisioned gateway: exit %d\n%s", code, out)
	}
	if got := commanded(c.send(t, api.Target{Tenant: "acme", Selector: "env=prod"}, rebirthCmd(), "20s")); !slices.Equal(got, []string{"gw-evil", "gw-prod"}) {
		t.Errorf("after labelling gw-evil in the cloud, env=prod selects %v; want both", got)
	}
	if code, out := run("group", "acme/gw-evil", "prod"); code != 0 || !strings.Contains(out, "prod") {
		t.Fatalf("group: exit %d\n%s", code, out)
	}
	testenv.Eventually(t, "gw-evil back online after its groups changed", func() bool { g := c.gateway(t, "acme", "gw-evil"); return g.Online && g.Session > evil.Session })
	if got := commanded(c.send(t, api.Target{Tenant: "acme", Group: "prod"}, rebirthCmd(), "20s")); !slices.Equal(got, []string{"gw-evil", "gw-prod"}) {
		t.Errorf("after assigning gw-evil to prod in the cloud, group prod selects %v; want both", got)
	}
}

// TestSecurityTargetDeprovision: a connected agent is disconnected at once
// when deprovisioned and cannot log in again; its inventory record stays,
// offline. (Before: there was no deprovision, and a new password left the
// session logged in with the old one connected.)
func TestSecurityTargetDeprovision(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	c := startCloud(t, 0)
	agent := c.provisionAgentWith(t, "acme", gw1, api.ProvisionRequest{Labels: map[string]string{"site": "berlin"}})
	testenv.Eventually(t, "gw-1 online", func() bool { g := c.gateway(t, "acme", gw1); return g != nil && g.Online })

	var d api.Deprovisioned
	if err := c.api.Do(context.Background(), "POST", "/v1/gateways/acme/"+gw1+"/deprovision", nil, &d, nil); err != nil {
		t.Fatal(err)
	}
	if !d.Disconnected || d.Inventory != "kept" {
		t.Errorf("deprovision: %+v, want disconnected and the record kept", d)
	}
	testenv.Eventually(t, "gw-1 offline after deprovision", func() bool { return !c.gateway(t, "acme", gw1).Online })
	old := c.gateway(t, "acme", gw1)
	if _, ack, err := dial(t, c.mqtt, "acme/"+gw1, "acme/"+gw1, agent.password, nil); err == nil {
		t.Fatalf("a deprovisioned gateway logged in: %+v", ack)
	}
	var l api.GatewayList
	c.get(t, "/v1/gateways?tenant=acme&selector=site%3Dberlin", &l)
	if l.Count != 0 {
		t.Errorf("a deprovisioned gateway still matches its labels: %d gateways", l.Count)
	}
	var e api.Error
	if err := c.api.Do(context.Background(), "POST", "/v1/gateways/acme/"+gw1+"/deprovision", nil, &e, nil); err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("deprovision twice: %v, want NOT_FOUND", err)
	}
	if err := c.api.Do(context.Background(), "GET", "/v1/gateways/acme/"+gw1+"/identity", nil, nil, nil); err == nil {
		t.Error("the identity of a deprovisioned gateway is still served")
	}
	if g := c.gateway(t, "acme", gw1); g == nil || g.Online || g.Provisioned || g.Session != old.Session {
		t.Errorf("inventory record after deprovision: %+v, want kept, offline, not provisioned, no new session", g)
	}
}

// TestSecurityTargetReprovisionDropsSession: a new password disconnects
// the session logged in with the old one at once; the old password no
// longer logs in, the new one does, and the labels stay.
func TestSecurityTargetReprovisionDropsSession(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	c := startCloud(t, 0)
	agent := c.provisionAgentWith(t, "acme", gw1, api.ProvisionRequest{Labels: map[string]string{"site": "berlin"}})
	testenv.Eventually(t, "gw-1 online", func() bool { g := c.gateway(t, "acme", gw1); return g != nil && g.Online })
	first := c.gateway(t, "acme", gw1).Session

	var p api.Provisioned
	if err := c.api.Do(context.Background(), "POST", "/v1/gateways/acme/"+gw1+"/provision", api.ProvisionRequest{}, &p, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the session of the old password dropped", func() bool { return !c.gateway(t, "acme", gw1).Online })
	if _, ack, err := dial(t, c.mqtt, "acme/"+gw1, "acme/"+gw1, agent.password, nil); err == nil {
		t.Fatalf("the old password still logs in: %+v", ack)
	}
	if err := os.WriteFile(agent.pwFile, []byte(p.Password), 0o600); err != nil {
		t.Fatal(err)
	}
	agent.Kill()
	agent.Start(t)
	testenv.Eventually(t, "gw-1 back online with the new password", func() bool {
		g := c.gateway(t, "acme", gw1)
		return g.Online && g.Session > first
	})
	if g := c.gateway(t, "acme", gw1); g.Labels["site"] != "berlin" {
		t.Errorf("labels after a new password: %v, want site=berlin kept", g.Labels)
	}
}

// TestSecurityTargetTokenRefreshOnlyToDelivered: a gateway whose birth
// claims it holds an older token of a tenant's ECR registry does not get
// the refreshed token; the gateway the cloud delivered it to does.
// (Before: refreshed tokens went to every gateway whose birth listed the
// registry.)
func TestSecurityTargetTokenRefreshOnlyToDelivered(t *testing.T) {
	ecrAPI := &registry.ECR{Keys: map[string]string{"AKIDCLOUD": "cloud-secret-access-key"}, Region: "eu-west-1", TokenTTL: 8 * time.Second}
	reg := testimage.NewRegistry(t, testimage.WithAuth(ecrAPI))
	t.Setenv("AWS_ENDPOINT_URL_ECR", reg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	c := startCloud(t, 2)
	waitOnline(t, c, "sim", 2)
	cred, _ := protojson.Marshal(&fleetv1.Credential{Registry: reg.Host, Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{
		Region: "eu-west-1", AccessKeyId: "AKIDCLOUD", SecretAccessKey: "cloud-secret-access-key"}}})
	var view api.CredentialView
	if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/sim/credentials", api.CredentialRequest{Credential: cred, IssueTokens: true}, &view, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.api.Do(context.Background(), "POST", "/v1/tenants/sim/credentials/push",
		api.PushRequest{Target: api.Target{Tenant: "sim", Gateways: []string{"sim-1"}}, Registry: reg.Host}, nil, nil); err != nil {
		t.Fatal(err)
	}
	holds := func(id, fp string) bool {
		g := c.gateway(t, "sim", id)
		return g != nil && len(g.Registries) == 1 && g.Registries[0].Fingerprint == fp
	}
	testenv.Eventually(t, "sim-1 holds the issued token", func() bool { return holds("sim-1", view.TokenFingerprint) })
	// sim-2 publishes a birth claiming an older token of that registry.
	g2 := c.gateway(t, "sim", "sim-2")
	c.Controller.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Birth, Tenant: "sim", Gateway: "sim-2"}, At: time.Now(),
		Message: &fleetv1.Birth{Session: g2.Session, PublicKey: g2.PublicKey, Simulated: true,
			Registries: []*fleetv1.RegistrySummary{{Registry: reg.Host, Kind: "ecr-token", Fingerprint: "0123456789ab"}}}})
	testenv.Eventually(t, "a new token issued and sent to sim-1", func() bool {
		var list struct {
			Credentials []api.CredentialView `json:"credentials"`
		}
		c.get(t, "/v1/tenants/sim/credentials", &list)
		fp := list.Credentials[0].TokenFingerprint
		return fp != view.TokenFingerprint && holds("sim-1", fp)
	})
	var batches struct {
		Batches []api.Batch `json:"batches"`
	}
	c.get(t, "/v1/batches", &batches)
	for _, b := range batches.Batches {
		var v api.BatchView
		c.get(t, "/v1/batches/"+b.ID, &v)
		if slices.Contains(commanded(&v), "sim-2") {
			t.Errorf("batch %s (%s) sent to sim-2, which only claimed the registry", b.ID, b.Verb)
		}
	}
}
