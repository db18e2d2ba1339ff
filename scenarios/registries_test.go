package scenarios

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/docker/docker/api/types/network"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

func checkRegistry(image string) *fleetv1.Command {
	return &fleetv1.Command{Id: fmt.Sprint("check-", time.Now().UnixNano()), Body: &fleetv1.Command_CheckRegistry{CheckRegistry: &fleetv1.CheckRegistry{Image: image}}}
}

func anonymous(registry string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}
}

func ecrKeys(registry, akid, secret string) *fleetv1.Credential {
	return &fleetv1.Credential{Registry: registry, Kind: &fleetv1.Credential_Ecr{Ecr: &fleetv1.EcrAuth{Region: "eu-west-1", AccessKeyId: akid, SecretAccessKey: secret}}}
}

func eventsOf(e deployEnv, kind string) []*fleetv1.Event {
	var out []*fleetv1.Event
	for _, m := range e.rec.All(mqttclienttest.Kind(topic.Events, e.gw)) {
		if ev, ok := m.Message.(*fleetv1.Event); ok && ev.GetKind() == kind {
			out = append(out, ev)
		}
	}
	return out
}

// TestRegistryFamilies pulls, on the real Docker Engine, from an emulated
// registry of each family the fleet uses: a clear UNAUTHENTICATED with a
// wrong credential, check-registry saying the same without pulling, then
// success with the right one, set sealed over MQTT without a restart. ECR
// tokens come from the emulated AWS API through the SDK
// (AWS_ENDPOINT_URL_ECR), once per lifetime; a revoked token is replaced on
// the registry's 401. No secret appears anywhere.
func TestRegistryFamilies(t *testing.T) {
	const gcrKey = `{"type": "service_account", "project_id": "fleet", "private_key_id": "k1", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQ-gcr-secret\n-----END PRIVATE KEY-----\n"}`
	ecrAPI := &registry.ECR{Keys: map[string]string{"AKIDFLEETTEST": "ecr-secret-access-key-0001"}, Region: "eu-west-1", TokenTTL: 6 * time.Second}
	hub := testimage.NewRegistry(t, testimage.WithAuth(&registry.Bearer{Users: map[string]string{"fleetops": "dckr_pat_hub-secret-0001"}, Service: "registry.docker.io"}))
	quay := testimage.NewRegistry(t, testimage.WithBasicAuth("fleet+robot", "quay-robot-secret-0001"))
	gcr := testimage.NewRegistry(t, testimage.WithAuth(registry.Basic{Users: map[string]string{"_json_key": gcrKey}}))
	ecrReg := testimage.NewRegistry(t, testimage.WithAuth(ecrAPI))
	public := testimage.NewRegistry(t)
	t.Setenv("AWS_ENDPOINT_URL_ECR", ecrReg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))

	e := newDeployEnv(t, "gw-regs", brokertest.Embedded, "--registry-certs-dir", t.TempDir())
	key := e.birth.GetPublicKey()
	tests := []struct {
		name         string
		reg          *testimage.Registry
		wrong, right *fleetv1.Credential
	}{
		{"docker hub bearer realm", hub, basic(hub.Host, "fleetops", "dckr_pat_wrong"), basic(hub.Host, "fleetops", "dckr_pat_hub-secret-0001")},
		{"quay robot basic", quay, basic(quay.Host, "fleet+robot", "wrong"), basic(quay.Host, "fleet+robot", "quay-robot-secret-0001")},
		// The key as a console pastes it: reformatted JSON still works.
		{"gcr json key", gcr, basic(gcr.Host, "_json_key", `{"type":"service_account"}`), basic(gcr.Host, "_json_key", strings.ReplaceAll(gcrKey, ", ", ",\n    "))},
		{"ecr", ecrReg, ecrKeys(ecrReg.Host, "AKIDFLEETTEST", "wrong-secret"), ecrKeys(ecrReg.Host, "AKIDFLEETTEST", "ecr-secret-access-key-0001")},
		{"public registry", public, nil, anonymous(public.Host)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.RemoveOwned(t, e.cli, e.owner, tt.reg.Host+"/")
			img, digest := tt.reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve"}})
			spec := func(rev int64) *fleetv1.DeploymentSpec {
				return &fleetv1.DeploymentSpec{Name: fmt.Sprint("reg", i), Revision: rev, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
			}
			if tt.wrong != nil {
				if r := send(t, e.rec, e.gw, setCredentials(t, key, true, tt.wrong)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
					t.Fatalf("set wrong credential = %v", r)
				}
				if r := send(t, e.rec, e.gw, checkRegistry(img)); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED || !r.GetRegistryCheck().GetReachable() || r.GetRegistryCheck().GetAuthenticated() {
					t.Errorf("check-registry with the wrong credential = %v, want UNAUTHENTICATED, reachable", r)
				}
				if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED {
					t.Errorf("deploy with the wrong credential = %v, want UNAUTHENTICATED", r)
				}
			}
			if r := send(t, e.rec, e.gw, setCredentials(t, key, true, tt.right)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Fatalf("set credential = %v", r)
			}
			r := send(t, e.rec, e.gw, checkRegistry(img))
			if rc := r.GetRegistryCheck(); r.GetResult() != fleetv1.Reply_SUCCEEDED || !rc.GetImageFound() || rc.GetDigest() != digest {
				t.Errorf("check-registry = %v, want SUCCEEDED with digest %s", r, digest)
			}
			if r := sendLong(t, e.rec, e.gw, deploy(spec(2))); r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
				t.Fatalf("deploy = %v, want SUCCEEDED RUNNING", r)
			}
		})
	}

	t.Run("ecr token refreshed", func(t *testing.T) {
		// The token lives 6 s; pulls across two lifetimes use the cached
		// token, refreshed in the background, never one call per pull.
		img := ecrReg.Host + "/team/app:1"
		start, calls := time.Now(), ecrAPI.TokenCalls()
		testenv.Eventually(t, "two background refreshes", func() bool { return ecrAPI.TokenCalls() >= calls+2 })
		for rev := int64(3); rev < 6; rev++ {
			spec := &fleetv1.DeploymentSpec{Name: "reg3", Revision: rev, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
			if r := sendLong(t, e.rec, e.gw, deploy(spec)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Fatalf("deploy r%d = %v", rev, r)
			}
		}
		lifetimes := int64(time.Since(start)/ecrAPI.TokenTTL) + 1
		if got := ecrAPI.TokenCalls() - calls; got > lifetimes+1 {
			t.Errorf("GetAuthorizationToken calls = %d over %d token lifetimes, want at most one per lifetime", got, lifetimes)
		}
		// A revoked token: the registry answers 401, the agent fetches a new
		// token at once and the pull succeeds.
		ecrAPI.RevokeTokens()
		before := ecrAPI.TokenCalls()
		spec := &fleetv1.DeploymentSpec{Name: "reg3", Revision: 6, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
		if r := sendLong(t, e.rec, e.gw, deploy(spec)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
			t.Fatalf("deploy after the token was revoked = %v", r)
		}
		if ecrAPI.TokenCalls() == before {
			t.Error("no new token was fetched after the registry refused the revoked one")
		}
	})

	send(t, e.rec, e.gw, rebirth(fmt.Sprint("rb-", time.Now().UnixNano())))
	births := e.rec.All(mqttclienttest.Kind(topic.Birth, e.gw))
	regs := birthOf(births[len(births)-1]).GetRegistries()
	if len(regs) != len(tests) {
		t.Errorf("birth lists %d registries, want %d", len(regs), len(tests))
	}
	for _, r := range regs {
		if r.GetKind() == "ecr" && (r.GetExpiresAt() == nil || r.GetUsername() != "AWS") {
			t.Errorf("ecr summary = %v, want the token's expiry", r)
		}
	}
	assertNoSecret(t, e, "dckr_pat_hub-secret-0001", "quay-robot-secret-0001", "MIIEvQ-gcr-secret", "ecr-secret-access-key-0001")
}

// TestEcrTokenExpiry: a token produced elsewhere (as by aws ecr
// get-login-password) and pushed with its expiry is used until then; the
// agent warns in an event and its birth, and afterwards refuses clearly.
func TestEcrTokenExpiry(t *testing.T) {
	ecrAPI := &registry.ECR{Keys: map[string]string{"AKIDCONSOLE": "console-secret"}, Region: "eu-west-1", TokenTTL: 8 * time.Second}
	reg := testimage.NewRegistry(t, testimage.WithAuth(ecrAPI))
	client := ecr.New(ecr.Options{Region: "eu-west-1", BaseEndpoint: aws.String(reg.APIEndpoint()),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDCONSOLE", "console-secret", "")})
	out, err := client.GetAuthorizationToken(context.Background(), &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(aws.ToString(out.AuthorizationData[0].AuthorizationToken))
	password := strings.TrimPrefix(string(raw), "AWS:")
	expires := aws.ToTime(out.AuthorizationData[0].ExpiresAt)

	e := newDeployEnv(t, "gw-ecrtok", brokertest.Embedded, "--registry-certs-dir", t.TempDir(), "--credentials-expiry-warning", "1h")
	testenv.RemoveOwned(t, e.cli, e.owner, reg.Host+"/")
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	spec := func(rev int64) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "tok", Revision: rev, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
	}
	cred := &fleetv1.Credential{Registry: reg.Host, Kind: &fleetv1.Credential_EcrToken{EcrToken: &fleetv1.EcrToken{Password: password, ExpiresAt: timestamppb.New(expires)}}}
	if r := send(t, e.rec, e.gw, setCredentials(t, e.birth.GetPublicKey(), true, cred)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("set ecr-token = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy with a valid ecr-token = %v", r)
	}
	testenv.Eventually(t, "credential.expiring event", func() bool { return len(eventsOf(e, "credential.expiring")) > 0 })
	send(t, e.rec, e.gw, rebirth(fmt.Sprint("rb-", time.Now().UnixNano())))
	births := e.rec.All(mqttclienttest.Kind(topic.Birth, e.gw))
	if regs := birthOf(births[len(births)-1]).GetRegistries(); len(regs) != 1 || regs[0].GetWarning() == "" || !regs[0].GetExpiresAt().AsTime().Equal(expires) {
		t.Errorf("birth registries = %v, want the ecr-token with its expiry and a warning", regs)
	}
	testenv.Eventually(t, "credential.expired event", func() bool { return len(eventsOf(e, "credential.expired")) > 0 })
	r := sendLong(t, e.rec, e.gw, deploy(spec(2)))
	if r.GetCode() != fleetv1.Reply_UNAUTHENTICATED || !strings.Contains(r.GetMessage(), "expired at") {
		t.Errorf("deploy after the ecr-token expired = %v, want UNAUTHENTICATED saying it expired", r)
	}
	assertNoSecret(t, e, password)
}

// TestPrivateCARegistry: a registry whose certificate a private CA signs,
// reached on a Docker network the test creates (the engine treats
// 127.0.0.0/8 as insecure and would not verify TLS there). The engine
// refuses it until the credential's CA is installed, refuses it with a
// wrong CA (so verification really happens), and pulls with the right one.
func TestPrivateCARegistry(t *testing.T) {
	const certsDir = "/etc/docker/certs.d"
	if err := os.MkdirAll(certsDir, 0o755); err != nil {
		t.Skipf("cannot write the engine's %s: %v", certsDir, err)
	}
	cli := testenv.DockerClient(t)
	ctx := context.Background()
	run := fmt.Sprint("fleet-test-", time.Now().UnixNano())
	net, err := cli.NetworkCreate(ctx, run, network.CreateOptions{Driver: "bridge", Labels: map[string]string{"io.fleet-agent.test": run}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.NetworkRemove(context.Background(), net.ID) })
	ins, err := cli.NetworkInspect(ctx, net.ID, network.InspectOptions{})
	if err != nil || len(ins.IPAM.Config) == 0 || ins.IPAM.Config[0].Gateway == "" {
		t.Fatalf("network %s has no gateway address: %v %+v", run, err, ins.IPAM)
	}
	gwIP := ins.IPAM.Config[0].Gateway

	ca, _ := registry.NewCA("fleet test private CA")
	wrongCA, _ := registry.NewCA("some other CA")
	cert, err := ca.Issue(gwIP)
	if err != nil {
		t.Fatal(err)
	}
	reg := testimage.NewRegistry(t, testimage.WithConfig(func(c *registry.Config) { c.Addr, c.Certificate = gwIP+":0", &cert }))
	t.Cleanup(func() { os.RemoveAll(filepath.Join(certsDir, reg.Host)) })

	e := newDeployEnv(t, "gw-tls", brokertest.Embedded, "--registry-certs-dir", certsDir)
	testenv.RemoveOwned(t, e.cli, e.owner, reg.Host+"/")
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	spec := func(rev int64) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "tls", Revision: rev, Image: img, NetworkMode: "none", PullPolicy: fleetv1.Pull_ALWAYS}
	}
	withCA := func(pem string) *fleetv1.Credential {
		c := anonymous(reg.Host)
		c.CaCertificate, c.RequireTls = pem, true
		return c
	}
	key := e.birth.GetPublicKey()

	if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetCode() != fleetv1.Reply_TLS_FAILURE || !strings.Contains(r.GetMessage(), "caCertificate") {
		t.Errorf("deploy without the CA = %v, want TLS_FAILURE pointing at caCertificate", r)
	}
	if r := send(t, e.rec, e.gw, checkRegistry(img)); r.GetCode() != fleetv1.Reply_TLS_FAILURE || r.GetRegistryCheck().GetTlsVerified() {
		t.Errorf("check-registry without the CA = %v, want TLS_FAILURE", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, withCA(wrongCA.PEM()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("set wrong CA = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(2))); r.GetCode() != fleetv1.Reply_TLS_FAILURE {
		t.Errorf("deploy with a wrong CA = %v, want TLS_FAILURE (the engine verified the certificate)", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, withCA(ca.PEM()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("set CA = %v", r)
	}
	if b, err := os.ReadFile(filepath.Join(certsDir, reg.Host, "ca.crt")); err != nil || string(b) != ca.PEM() {
		t.Errorf("ca.crt in the engine's certs.d: %v", err)
	}
	if r := send(t, e.rec, e.gw, checkRegistry(img)); r.GetResult() != fleetv1.Reply_SUCCEEDED || !r.GetRegistryCheck().GetTlsVerified() {
		t.Errorf("check-registry with the CA = %v, want SUCCEEDED with tlsVerified", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(3))); r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy with the CA = %v, want SUCCEEDED RUNNING", r)
	}
}
