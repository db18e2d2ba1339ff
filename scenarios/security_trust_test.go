package scenarios

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/docker/docker/api/types/container"

	"github.com/fleet-agent/fleet/agent/trust/trusttest"
	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestImageTrustPolicy: a gateway with an image trust policy runs an image
// signed (cosign format) by the tenant's key, and refuses an unsigned one
// and one signed by another key with UNTRUSTED_IMAGE, before pulling it
// and without touching the running revision.
func TestImageTrustPolicy(t *testing.T) {
	dir := t.TempDir()
	key := trusttest.NewKey(t, dir, "release")
	attacker := trusttest.NewKey(t, dir, "attacker")
	reg := testimage.NewRegistry(t)
	policy := filepath.Join(dir, "trust.yaml")
	doc := "rules:\n  - images: [\"" + reg.Host + "/team/\"]\n    publicKeys: [release.pub]\n"
	if err := os.WriteFile(policy, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newDeployEnv(t, "gw-trust", brokertest.Embedded, "--image-trust-policy", policy)
	testenv.RemoveOwned(t, e.cli, e.owner, reg.Host+"/")
	if !slices.Contains(e.birth.GetCapabilities(), "image-trust-policy") {
		t.Errorf("birth capabilities = %v, want image-trust-policy", e.birth.GetCapabilities())
	}

	signedRef, signedDigest := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "signed", Env: map[string]string{"MESSAGE": "signed"}})
	sign := func(ref, digest string, k trusttest.Key) { // the emulated registry takes pushes in process only
		img := trusttest.Image(t, []trusttest.Signature{trusttest.Signed(t, ref, digest, k.Signer)})
		if _, err := reg.Server.Push(context.Background(), "team/web", trusttest.Tag(digest), img); err != nil {
			t.Fatal(err)
		}
	}
	sign(signedRef, signedDigest, key)
	unsignedRef, _ := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "unsigned", Env: map[string]string{"MESSAGE": "unsigned"}})
	forgedRef, forgedDigest := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "forged", Env: map[string]string{"MESSAGE": "forged"}})
	sign(forgedRef, forgedDigest, attacker)

	spec := func(rev int64, image string) *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "web", Revision: rev, Image: image, NetworkMode: "none", Env: map[string]string{"MODE": "serve"}}
	}
	r := sendLong(t, e.rec, e.gw, deploy(spec(1, signedRef)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetImageDigest() != signedDigest {
		t.Fatalf("deploy of the signed image: %v, want SUCCEEDED with digest %s", r, signedDigest)
	}
	for i, image := range []string{unsignedRef, forgedRef} {
		r := sendLong(t, e.rec, e.gw, deploy(spec(int64(i+2), image)))
		if r.GetResult() != fleetv1.Reply_FAILED || r.GetCode() != fleetv1.Reply_UNTRUSTED_IMAGE {
			t.Errorf("deploy of %s: %v, want FAILED UNTRUSTED_IMAGE", image, r)
		}
		if _, err := e.cli.ImageInspect(context.Background(), image); err == nil {
			t.Errorf("%s was pulled before it was refused", image)
		}
	}
	cs, err := e.cli.ContainerList(context.Background(), container.ListOptions{All: true})
	if err != nil {
		t.Fatal(err)
	}
	var running []string
	for _, c := range cs {
		if c.Labels["io.fleet-agent.owner"] == e.owner {
			running = append(running, c.Image+" "+c.State)
		}
	}
	if len(running) != 1 || running[0] != signedRef+" running" {
		t.Errorf("containers = %v, want only the signed revision running", running)
	}
}
