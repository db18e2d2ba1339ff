package scenarios

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// inAgentStore reports whether the blob digest ("sha256:…") is in the
// agent's image store (<state dir>/images, an OCI layout).
func inAgentStore(a *testenv.Agent, digest string) bool {
	hex := strings.TrimPrefix(digest, "sha256:")
	_, err := os.Stat(filepath.Join(a.StateDir, "images", "blobs", "sha256", hex))
	return err == nil
}

// TestRegistryFamiliesAgentPull: each registry family of
// TestRegistryFamilies, pulled by the agent itself (pull.mode AGENT)
// through the same keychain: UNAUTHENTICATED with a wrong credential, the
// image in the agent's store and the container running with the right one.
func TestRegistryFamiliesAgentPull(t *testing.T) {
	const gcrKey = `{"type": "service_account", "project_id": "fleet", "private_key_id": "k1", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQ-gcr-secret\n-----END PRIVATE KEY-----\n"}`
	ecrAPI := &registry.ECR{Keys: map[string]string{"AKIDFLEETTEST": "ecr-secret-access-key-0001"}, Region: "eu-west-1", TokenTTL: time.Minute}
	hub := testimage.NewRegistry(t, testimage.WithAuth(&registry.Bearer{Users: map[string]string{"fleetops": "dckr_pat_hub-secret-0001"}, Service: "registry.docker.io"}))
	quay := testimage.NewRegistry(t, testimage.WithBasicAuth("fleet+robot", "quay-robot-secret-0001"))
	gcr := testimage.NewRegistry(t, testimage.WithAuth(registry.Basic{Users: map[string]string{"_json_key": gcrKey}}))
	ecrReg := testimage.NewRegistry(t, testimage.WithAuth(ecrAPI))
	public := testimage.NewRegistry(t)
	t.Setenv("AWS_ENDPOINT_URL_ECR", ecrReg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))

	var allow []string
	for _, r := range []*testimage.Registry{hub, quay, gcr, ecrReg, public} {
		allow = append(allow, r.Host)
	}
	e := newDeployEnv(t, "gw-regs-agent", brokertest.Embedded, "--registry-certs-dir", t.TempDir(),
		"--pull-mode", "agent", "--allow-insecure-registry", strings.Join(allow, ","))
	key := e.birth.GetPublicKey()
	tests := []struct {
		name         string
		reg          *testimage.Registry
		wrong, right *fleetv1.Credential
	}{
		{"docker hub bearer realm", hub, basic(hub.Host, "fleetops", "dckr_pat_wrong"), basic(hub.Host, "fleetops", "dckr_pat_hub-secret-0001")},
		{"quay robot basic", quay, basic(quay.Host, "fleet+robot", "wrong"), basic(quay.Host, "fleet+robot", "quay-robot-secret-0001")},
		{"gcr json key", gcr, basic(gcr.Host, "_json_key", `{"type":"service_account"}`), basic(gcr.Host, "_json_key", gcrKey)},
		{"ecr", ecrReg, ecrKeys(ecrReg.Host, "AKIDFLEETTEST", "wrong-secret"), ecrKeys(ecrReg.Host, "AKIDFLEETTEST", "ecr-secret-access-key-0001")},
		{"public registry", public, nil, anonymous(public.Host)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testenv.RemoveOwned(t, e.cli, e.owner, tt.reg.Host+"/")
			// An image of its own (the store is content-addressed).
			img, digest := tt.reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve", "FAMILY": tt.name}})
			spec := func(rev int64) *fleetv1.DeploymentSpec {
				return &fleetv1.DeploymentSpec{Name: fmt.Sprint("areg", i), Revision: rev, Image: img, NetworkMode: "none",
					PullPolicy: fleetv1.Pull_ALWAYS, Pull: &fleetv1.Pull{Mode: fleetv1.Pull_AGENT}}
			}
			if tt.wrong != nil {
				if r := send(t, e.rec, e.gw, setCredentials(t, key, true, tt.wrong)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
					t.Fatalf("set wrong credential = %v", r)
				}
				if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetCode() != fleetv1.Reply_UNAUTHENTICATED {
					t.Errorf("agent pull with the wrong credential = %v, want UNAUTHENTICATED", r)
				}
				if inAgentStore(e.agent, digest) {
					t.Errorf("the manifest %s is in the agent's store after a refused pull", digest)
				}
			}
			if r := send(t, e.rec, e.gw, setCredentials(t, key, true, tt.right)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Fatalf("set credential = %v", r)
			}
			r := sendLong(t, e.rec, e.gw, deploy(spec(2)))
			if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING || r.GetStatus().GetImageDigest() != digest {
				t.Fatalf("agent pull = %v, want SUCCEEDED RUNNING with digest %s", r, digest)
			}
			if !inAgentStore(e.agent, digest) {
				t.Errorf("the manifest %s is not in the agent's store: the engine pulled it itself", digest)
			}
		})
	}
	assertNoSecret(t, e, "dckr_pat_hub-secret-0001", "quay-robot-secret-0001", "MIIEvQ-gcr-secret", "ecr-secret-access-key-0001")
}

// TestPrivateCARegistryAgentPull: a registry on loopback with a private
// CA's certificate (the engine would not verify TLS there; the agent
// does): refused with TLS_FAILURE without the CA and with a wrong one,
// pulled with the credential's CA, and nothing written to the engine's
// certs.d.
func TestPrivateCARegistryAgentPull(t *testing.T) {
	ca, _ := registry.NewCA("fleet test private CA")
	wrongCA, _ := registry.NewCA("some other CA")
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := testimage.NewRegistry(t, testimage.WithConfig(func(c *registry.Config) { c.Certificate = &cert }))
	certsDir := t.TempDir()
	e := newDeployEnv(t, "gw-tls-agent", brokertest.Embedded, "--registry-certs-dir", certsDir, "--pull-mode", "agent")
	testenv.RemoveOwned(t, e.cli, e.owner, reg.Host+"/")
	img, digest := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	spec := func(rev int64) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "tls", Revision: rev, Image: img, NetworkMode: "none",
			PullPolicy: fleetv1.Pull_ALWAYS, Pull: &fleetv1.Pull{Mode: fleetv1.Pull_AGENT}}
	}
	withCA := func(pem string) *fleetv1.Credential {
		c := anonymous(reg.Host)
		c.CaCertificate, c.RequireTls = pem, true
		return c
	}
	key := e.birth.GetPublicKey()
	if r := sendLong(t, e.rec, e.gw, deploy(spec(1))); r.GetCode() != fleetv1.Reply_TLS_FAILURE {
		t.Errorf("agent pull without the CA = %v, want TLS_FAILURE", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, withCA(wrongCA.PEM()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("set wrong CA = %v", r)
	}
	if r := sendLong(t, e.rec, e.gw, deploy(spec(2))); r.GetCode() != fleetv1.Reply_TLS_FAILURE {
		t.Errorf("agent pull with a wrong CA = %v, want TLS_FAILURE", r)
	}
	if r := send(t, e.rec, e.gw, setCredentials(t, key, true, withCA(ca.PEM()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("set CA = %v", r)
	}
	r := sendLong(t, e.rec, e.gw, deploy(spec(3)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != digest {
		t.Fatalf("agent pull with the CA = %v, want SUCCEEDED with digest %s", r, digest)
	}
	if !inAgentStore(e.agent, digest) {
		t.Errorf("the manifest %s is not in the agent's store", digest)
	}
}

// TestInsecureRegistryAgentPull: a registry whose certificate nothing
// verifies (a CA the gateway does not know), reached through a credential
// that says insecure. Without --allow-insecure-registry naming it the agent
// refuses, naming the setting; with it, the agent pulls.
func TestInsecureRegistryAgentPull(t *testing.T) {
	ca, _ := registry.NewCA("nobody's CA")
	cert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := testimage.NewRegistry(t, testimage.WithConfig(func(c *registry.Config) { c.Certificate = &cert }))
	img, digest := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1", Env: map[string]string{"MODE": "serve"}})
	cred := anonymous(reg.Host)
	cred.Insecure = true
	spec := &fleetv1.DeploymentSpec{Name: "insecure", Revision: 1, Image: img, NetworkMode: "none",
		PullPolicy: fleetv1.Pull_ALWAYS, Pull: &fleetv1.Pull{Mode: fleetv1.Pull_AGENT}}
	tests := []struct {
		name    string
		allow   []string
		succeed bool
	}{
		{"not allowed", nil, false},
		{"allowed", []string{"--allow-insecure-registry", reg.Host}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newDeployEnv(t, "gw-insecure", brokertest.Embedded, append([]string{"--registry-certs-dir", t.TempDir(), "--pull-mode", "agent"}, tt.allow...)...)
			testenv.RemoveOwned(t, e.cli, e.owner, reg.Host+"/")
			if r := send(t, e.rec, e.gw, setCredentials(t, e.birth.GetPublicKey(), true, cred)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Fatalf("set insecure credential = %v", r)
			}
			r := sendLong(t, e.rec, e.gw, deploy(spec))
			switch {
			case tt.succeed && (r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != digest):
				t.Errorf("deploy = %v, want SUCCEEDED with digest %s", r, digest)
			case !tt.succeed && (r.GetResult() == fleetv1.Reply_SUCCEEDED || !strings.Contains(r.GetMessage(), "allow-insecure-registry")):
				t.Errorf("deploy = %v, want refused naming --allow-insecure-registry", r)
			}
		})
	}
}
