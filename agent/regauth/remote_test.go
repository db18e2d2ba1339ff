package regauth_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/agent/trust/trusttest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestRemoteReadsSignaturesWithTheCredential: the trust policy reads an
// image's signatures from a registry that requires a login with the
// credential a pull would use.
func TestRemoteReadsSignaturesWithTheCredential(t *testing.T) {
	reg := testimage.NewRegistry(t, testimage.WithBasicAuth("robot", "pw"))
	ref, digest := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	dir := t.TempDir()
	key := trusttest.NewKey(t, dir, "release")
	sig := trusttest.Image(t, []trusttest.Signature{trusttest.Signed(t, ref, digest, key.Signer)})
	if _, err := reg.Server.Push(context.Background(), "team/app", trusttest.Tag(digest), sig); err != nil {
		t.Fatal(err)
	}
	doc := []byte("rules: [{images: ['" + reg.Host + "'], publicKeys: [release.pub]}]")
	if err := os.WriteFile(filepath.Join(dir, "trust.yaml"), doc, 0o600); err != nil {
		t.Fatal(err)
	}
	policy, err := trust.Load(filepath.Join(dir, "trust.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	k := newKeychain(t, nil)
	v := trust.NewVerifier(policy, k.Remote)
	ctx := context.Background()
	if err := v.Check(ctx, ref, digest); errdefs.Code(err) != fleetv1.Reply_UNAUTHENTICATED {
		t.Fatalf("Check without a credential = %v, want UNAUTHENTICATED", err)
	}
	cred := &fleetv1.Credential{Registry: reg.Host + "/team", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: "pw"}}}
	if err := set(t, k, cred); err != nil {
		t.Fatal(err)
	}
	if err := v.Check(ctx, ref, digest); err != nil {
		t.Fatalf("Check with the credential = %v, want trusted", err)
	}
}
