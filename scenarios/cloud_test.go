package scenarios

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// cloud is a cloud-sim serve started in the test, restartable on the same
// data directory and MQTT address.
type cloud struct {
	*serve.Server
	dataDir, mqtt string
	cfg           serve.Config
	api           *apiclient.Client
	// logs, when set, holds what the server logged (see threeReplicas).
	logs *testenv.LogBuffer
}

func startCloud(t testing.TB, sims int) *cloud {
	t.Helper()
	return newCloud(t, simfleet.Config{Count: sims, Tenant: "sim", PullTime: 10 * time.Millisecond})
}

// newCloud starts serve on a fresh data directory with the simulated
// fleet sim (none when sim.Count is 0), closed at cleanup.
func newCloud(t testing.TB, sim simfleet.Config) *cloud {
	t.Helper()
	c := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute, Sim: sim}
	c.start(t)
	t.Cleanup(func() {
		if c.Server != nil {
			c.Close()
		}
	})
	return c
}

// start starts serve for the first time: again, on new ports, when a
// port of the embedded broker chosen free (c.mqtt, and the TLS listener's)
// was taken before serve bound it.
func (c *cloud) start(t testing.TB) {
	t.Helper()
	attempt := 0
	testenv.FirstStart(t, "cloud-sim serve", func() error {
		if attempt++; attempt > 1 {
			if c.mqtt != "" && c.cfg.MQTTListen == c.mqtt {
				c.mqtt = testenv.FreeAddr(t)
				c.cfg.MQTTListen = c.mqtt
			}
			if c.cfg.MQTTTLSListen != "" {
				c.cfg.MQTTTLSListen = testenv.FreeAddr(t)
			}
		}
		return c.serve()
	})
}

func (c *cloud) serve() error {
	s, err := serve.Start(context.Background(), c.cfg)
	if err != nil {
		return err
	}
	c.Server, c.api = s, &apiclient.Client{Base: s.APIURL, Token: s.APIToken}
	return nil
}

// restart stops everything (the simulated fleet too) and starts again.
func (c *cloud) restart(t *testing.T) {
	t.Helper()
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	c.Server = nil
	// On the same ports: the agents know them.
	if err := c.serve(); err != nil {
		t.Fatal(err)
	}
}

func (c *cloud) get(t testing.TB, path string, out any) []byte {
	t.Helper()
	var raw []byte
	if err := c.api.Do(context.Background(), "GET", path, nil, out, &raw); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return raw
}

func (c *cloud) gateway(t *testing.T, tenant, id string) *api.Gateway {
	t.Helper()
	var g api.Gateway
	var raw []byte
	if err := c.api.Do(context.Background(), "GET", "/v1/gateways/"+tenant+"/"+id, nil, &g, &raw); err != nil {
		return nil
	}
	return &g
}

// provisionAgent creates the gateway's identity through the API and starts
// a real fleet-agent process with it and the tenant's command-signing keys.
func (c *cloud) provisionAgent(t *testing.T, tenant, id string, extra ...string) *testenv.Agent {
	t.Helper()
	return c.provisionAgentWith(t, tenant, id, api.ProvisionRequest{}, extra...).Agent
}

// provisioned is an agent started by provisionAgentWith, with its password.
type provisioned struct {
	*testenv.Agent
	password, pwFile string
}

// provisionAgentWith provisions the gateway with req (groups, labels) and
// starts a real fleet-agent with its password and the tenant's
// command-signing keys.
func (c *cloud) provisionAgentWith(t *testing.T, tenant, id string, req api.ProvisionRequest, extra ...string) *provisioned {
	t.Helper()
	var p api.Provisioned
	if err := c.api.Do(context.Background(), "POST", "/v1/gateways/"+tenant+"/"+id+"/provision", req, &p, nil); err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(p.Password), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, _ := json.Marshal(cmdsig.KeySet{Keys: p.CommandSigningKeys})
	keysFile := filepath.Join(t.TempDir(), "command-signing-keys.json")
	if err := os.WriteFile(keysFile, keys, 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--broker-username", p.Username, "--broker-password-file", pwFile, "--command-signing-keys", keysFile}, extra...)
	return &provisioned{Agent: testenv.StartAgent(t, "mqtt://"+c.mqtt, tenant, id, args...), password: p.Password, pwFile: pwFile}
}

func (c *cloud) send(t *testing.T, target api.Target, cmd *fleetv1.Command, wait string) *api.BatchView {
	t.Helper()
	body, _ := protojson.Marshal(cmd)
	var b api.BatchView
	if err := c.api.Do(context.Background(), "POST", "/v1/commands", api.CommandRequest{Target: target, Command: body, Wait: wait}, &b, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	return &b
}

func rebirthCmd() *fleetv1.Command {
	return &fleetv1.Command{Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}
}

// TestCloudInventoryAndCommands follows real agents and simulated gateways
// through the API: connects, a kill (the Will), a clean shutdown; a
// command to an offline gateway shown pending and delivered on reconnect;
// a selector; and a cloud-sim restart that loses no inventory, credential
// or command outcome.
func TestCloudInventoryAndCommands(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	c := startCloud(t, 5)
	agent := c.provisionAgent(t, "acme", gw1, "--label", "site=berlin")
	testenv.Eventually(t, "5 simulated and 1 real gateway online", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?online=true", &l)
		return l.Count == 6
	})
	g := c.gateway(t, "acme", gw1)
	if g.Simulated || g.ReportedLabels["site"] != "berlin" || g.PublicKey == "" || g.Session == 0 {
		t.Fatalf("real gateway in the inventory: %+v", g)
	}
	if s := c.gateway(t, "sim", "sim-1"); s == nil || !s.Simulated {
		t.Fatalf("simulated gateway not marked simulated: %+v", s)
	}

	// A selector picks the simulated gateways of one site.
	var l api.GatewayList
	c.get(t, "/v1/gateways?tenant=sim&selector=site%3Dsite-1", &l)
	if l.Count != 1 || l.Gateways[0].ID != "sim-1" {
		t.Fatalf("selector site=site-1: %d gateways", l.Count)
	}
	b := c.send(t, api.Target{Tenant: "sim", Selector: "tier=main"}, rebirthCmd(), "20s")
	if !b.Done || b.Counts[api.StateSucceeded] != 5 {
		t.Fatalf("rebirth to tier=main: %+v", b.Counts)
	}

	// Killed: the broker publishes the Will.
	agent.Kill()
	testenv.Eventually(t, "killed gateway offline (connection lost)", func() bool {
		g := c.gateway(t, "acme", gw1)
		return !g.Online && g.DeathReason == "connection_lost"
	})

	// A command to an offline gateway waits in its session, shown pending.
	b = c.send(t, api.Target{Tenant: "acme", Gateways: []string{gw1}}, rebirthCmd(), "")
	cmdID := b.Commands[0].ID
	var cmd api.Command
	c.get(t, "/v1/commands/"+cmdID, &cmd)
	if cmd.State != api.StatePending || !cmd.OfflineWhenSent {
		t.Fatalf("command to an offline gateway: %+v", cmd)
	}
	agent.Start(t)
	testenv.Eventually(t, "the queued command answered after reconnect", func() bool {
		c.get(t, "/v1/commands/"+cmdID, &cmd)
		return cmd.State == api.StateSucceeded
	})

	// A credential, to check that a restart keeps it (and never shows it).
	const secret = "pa55-word-never-shown"
	cred, _ := protojson.Marshal(&fleetv1.Credential{Registry: "registry.example.com",
		Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: secret}}})
	if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/acme/credentials", api.CredentialRequest{Credential: cred}, nil, nil); err != nil {
		t.Fatal(err)
	}

	// Restarted mid-operation: a command is on its way to the gateway.
	agent.Term(t)
	testenv.Eventually(t, "stopped gateway offline (shutdown)", func() bool {
		g := c.gateway(t, "acme", gw1)
		return !g.Online && g.DeathReason == "shutdown"
	})
	pending := c.send(t, api.Target{Tenant: "acme", Gateways: []string{gw1}}, rebirthCmd(), "").Commands[0].ID
	c.restart(t)
	var creds struct {
		Credentials []api.CredentialView `json:"credentials"`
	}
	c.get(t, "/v1/tenants/acme/credentials", &creds)
	if len(creds.Credentials) != 1 || creds.Credentials[0].Username != "robot" {
		t.Fatalf("credentials after restart: %+v", creds)
	}
	c.get(t, "/v1/commands/"+cmdID, &cmd)
	if cmd.State != api.StateSucceeded {
		t.Fatalf("command outcome after restart: %+v", cmd)
	}
	if g := c.gateway(t, "acme", gw1); g == nil || g.Online || g.PublicKey == "" {
		t.Fatalf("inventory after restart: %+v", g)
	}
	agent.Start(t)
	testenv.Eventually(t, "the command sent before the restart answered after it", func() bool {
		c.get(t, "/v1/commands/"+pending, &cmd)
		return cmd.State == api.StateSucceeded
	})
	testenv.Eventually(t, "simulated gateways back online after the restart", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?tenant=sim&online=true", &l)
		return l.Count == 5
	})

	// The API never returns the secret, wherever one looks.
	for _, p := range []string{"/v1/gateways", "/v1/gateways/acme/" + gw1, "/v1/tenants/acme/credentials", "/v1/batches", "/v1/commands/" + cmdID} {
		if raw := c.get(t, p, nil); bytes.Contains(raw, []byte(secret)) {
			t.Errorf("GET %s returned the secret", p)
		}
	}
}

// TestCloudStaleDeathIgnored publishes, as the controller could see after
// a reconnect, a retained death of an older session after a newer birth.
func TestCloudStaleDeathIgnored(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	c := startCloud(t, 0)
	agent := c.provisionAgent(t, "acme", gw1)
	testenv.Eventually(t, "gateway online", func() bool { g := c.gateway(t, "acme", gw1); return g != nil && g.Online })
	agent.Kill()
	testenv.Eventually(t, "gateway offline", func() bool { return !c.gateway(t, "acme", gw1).Online })
	agent.Start(t)
	testenv.Eventually(t, "gateway online in a newer session", func() bool { g := c.gateway(t, "acme", gw1); return g.Online && g.Session == 2 })
	// The old session's death arrives late: it must not take the gateway offline.
	c.Controller.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Death, Tenant: "acme", Gateway: gw1},
		Message: &fleetv1.Death{Session: 1, Reason: fleetv1.Death_CONNECTION_LOST}, At: time.Now()})
	if g := c.gateway(t, "acme", gw1); !g.Online || g.Session != 2 {
		t.Fatalf("a death of session 1 after the birth of session 2 changed the gateway: online=%v session=%d", g.Online, g.Session)
	}
}

// TestCloudCLI runs the client verbs against serve: tables, -o json,
// exit codes, and the event stream.
func TestCloudCLI(t *testing.T) {
	c := startCloud(t, 3)
	testenv.Eventually(t, "3 simulated gateways online", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?online=true", &l)
		return l.Count == 3
	})
	events := sse(t, c, "/v1/events?tenant=sim")
	// run returns stdout, or stdout and stderr when the verb failed.
	run := func(stdin string, args ...string) (int, string) {
		var out, errs bytes.Buffer
		env := cli.Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errs, Getenv: func(string) string { return "" }}
		code := cli.Run(context.Background(), env, append(args, "--api", c.APIURL, "--data", c.dataDir))
		if code != 0 {
			return code, out.String() + errs.String()
		}
		return code, out.String()
	}
	code, out := run("", "gateways", "--tenant", "sim")
	if code != 0 || !strings.Contains(out, "3 gateways, 3 online") || !strings.Contains(out, "[simulated]") {
		t.Fatalf("gateways: exit %d\n%s", code, out)
	}
	code, out = run("", "gateways", "--tenant", "sim", "-o", "json")
	var l api.GatewayList
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || l.Count != 3 {
		t.Fatalf("gateways -o json: exit %d\n%s", code, out)
	}
	spec := filepath.Join(t.TempDir(), "spec.yaml")
	os.WriteFile(spec, []byte("name: web\nrevision: 1\nimage: registry.example.com/web:1\n"), 0o600)
	code, out = run("", "deploy", "--tenant", "sim", "--selector", "tier=main", "-f", spec, "--skip-registry-check", "--wait", "20s")
	if code != 0 || !strings.Contains(out, "3 succeeded") {
		t.Fatalf("deploy: exit %d\n%s", code, out)
	}
	// The final reply and the retained status travel on different topics:
	// the status may reach the inventory just after the reply.
	testenv.Eventually(t, "gateway sim/sim-2 shows web RUNNING", func() bool {
		code, out = run("", "gateway", "sim/sim-2")
		return code == 0 && strings.Contains(out, "RUNNING")
	})
	// A revision lower than the running one fails on every gateway: exit 1.
	os.WriteFile(spec, []byte("name: web\nrevision: 0\nimage: registry.example.com/web:0\n"), 0o600)
	code, out = run("", "deploy", "--gateway", "sim/sim-1", "-f", spec, "--skip-registry-check", "--wait", "20s")
	if code != cli.ExitFailed || !strings.Contains(out, "REJECTED") {
		t.Fatalf("failing deploy: exit %d, want %d\n%s", code, cli.ExitFailed, out)
	}
	code, out = run("", "stop", "--gateway", "sim/sim-1", "web", "-o", "json")
	var b api.BatchView
	if code != 0 || json.Unmarshal([]byte(out), &b) != nil || b.Counts[api.StateSucceeded] != 1 {
		t.Fatalf("stop -o json: exit %d\n%s", code, out)
	}
	code, out = run("", "deploy", "-f", spec)
	if code != cli.ExitUsage || !strings.Contains(out, "--gateway TENANT/ID") {
		t.Fatalf("deploy without target: exit %d\n%s", code, out)
	}
	code, out = run("", "gateway", "sim/nope")
	if code != cli.ExitFailed || !strings.Contains(out, "NOT_FOUND") {
		t.Fatalf("unknown gateway: exit %d\n%s", code, out)
	}
	code, out = run("s3cr3t\n", "credentials", "set", "--tenant", "sim", "--registry", "quay.io/acme", "--username", "acme+robot", "--password-stdin")
	if code != 0 {
		t.Fatalf("credentials set: exit %d\n%s", code, out)
	}
	code, out = run("", "credentials", "list", "--tenant", "sim", "-o", "json")
	if code != 0 || !strings.Contains(out, "acme+robot") || strings.Contains(out, "s3cr3t") {
		t.Fatalf("credentials list: exit %d\n%s", code, out)
	}
	events.expect(t, "deployment.status")
	events.expect(t, "command.finished")
}

type sseStream struct {
	mu    sync.Mutex
	kinds []string
}

func sse(t *testing.T, c *cloud, path string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.APIURL+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.APIToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("event stream content type %q", ct)
	}
	s := &sseStream{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if k, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				s.mu.Lock()
				s.kinds = append(s.kinds, k)
				s.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
	return s
}

func (s *sseStream) expect(t *testing.T, kind string) {
	t.Helper()
	testenv.Eventually(t, "event "+kind+" on the stream", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, k := range s.kinds {
			if k == kind {
				return true
			}
		}
		return false
	})
}

// TestCloudECRIssuedTokens: an ECR credential with issueTokens keeps the
// AWS keys in the cloud; gateways get ECR tokens, and a new one before
// the current one expires.
func TestCloudECRIssuedTokens(t *testing.T) {
	ecrAPI := &registry.ECR{Keys: map[string]string{"AKIDCLOUD": "cloud-secret-access-key"}, Region: "eu-west-1", TokenTTL: 8 * time.Second}
	reg := testimage.NewRegistry(t, testimage.WithAuth(ecrAPI))
	t.Setenv("AWS_ENDPOINT_URL_ECR", reg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	c := startCloud(t, 3)
	testenv.Eventually(t, "3 simulated gateways online", func() bool {
		var l api.GatewayList
		c.get(t, "/v1/gateways?online=true&tenant=sim", &l)
		return l.Count == 3
	})
	cred, _ := protojson.Marshal(&fleetv1.Credential{Registry: reg.Host, Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{
		Region: "eu-west-1", AccessKeyId: "AKIDCLOUD", SecretAccessKey: "cloud-secret-access-key"}}})
	var view api.CredentialView
	if err := c.api.Do(context.Background(), "PUT", "/v1/tenants/sim/credentials", api.CredentialRequest{Credential: cred, IssueTokens: true}, &view, nil); err != nil {
		t.Fatal(err)
	}
	if view.TokenFingerprint == "" || view.TokenExpiresAt.IsZero() {
		t.Fatalf("no token issued: %+v", view)
	}
	var b api.BatchView
	if err := c.api.Do(context.Background(), "POST", "/v1/tenants/sim/credentials/push",
		api.PushRequest{Target: api.Target{Tenant: "sim", All: true}, Registry: reg.Host}, &b, nil); err != nil {
		t.Fatal(err)
	}
	holds := func(fp string) bool {
		for _, id := range []string{"sim-1", "sim-2", "sim-3"} {
			g := c.gateway(t, "sim", id)
			if g == nil || len(g.Registries) != 1 || g.Registries[0].Kind != "ecr-token" || g.Registries[0].Fingerprint != fp {
				return false
			}
		}
		return true
	}
	testenv.Eventually(t, "every gateway holds the issued token", func() bool { return holds(view.TokenFingerprint) })
	first := view.TokenFingerprint
	testenv.Eventually(t, "a new token issued before the first expires, and sent", func() bool {
		var list struct {
			Credentials []api.CredentialView `json:"credentials"`
		}
		c.get(t, "/v1/tenants/sim/credentials", &list)
		fp := list.Credentials[0].TokenFingerprint
		return fp != first && holds(fp)
	})
	if ecrAPI.TokenCalls() < 2 {
		t.Errorf("GetAuthorizationToken called %d times", ecrAPI.TokenCalls())
	}
	for _, p := range []string{"/v1/gateways/sim/sim-1", "/v1/tenants/sim/credentials", "/v1/batches"} {
		if raw := c.get(t, p, nil); bytes.Contains(raw, []byte("cloud-secret-access-key")) {
			t.Errorf("GET %s returned the AWS secret", p)
		}
	}
}
