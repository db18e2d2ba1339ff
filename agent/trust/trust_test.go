package trust_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/agent/trust/trusttest"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestParseNamesTheField(t *testing.T) {
	dir := t.TempDir()
	key := trusttest.NewKey(t, dir, "cosign")
	if err := os.WriteFile(filepath.Join(dir, "bad.pub"), []byte("not pem"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		doc, want string
	}{
		{"rules: []", "rules: at least one rule"},
		{"rules: [{publicKeys: [cosign.pub]}]", "rules[0].images"},
		{"rules: [{images: ['*']}]", "rules[0]: set publicKeys"},
		{"rules: [{images: ['*'], publicKeys: [missing.pub]}]", "rules[0].publicKeys[0]"},
		{"rules: [{images: ['*'], publicKeys: [bad.pub]}]", `no PEM "PUBLIC KEY" block`},
		{"rules: [{images: ['*'], digests: [latest]}]", "rules[0].digests[0]"},
		{"rules: [{images: ['a b'], digests: []}, {images: ['*'], insecureAcceptAnything: true}]", "rules[0]: set publicKeys"},
		{"rules: [{images: ['reg.example/a b'], insecureAcceptAnything: true}]", "rules[0].images[0]"},
		{"rules: [{images: ['*'], insecureAcceptAnything: true}, {images: ['*'], insecureAcceptAnything: true}]", "rules[1].images[0]"},
		{"rules: [{images: ['*'], insecureAcceptAnything: true, extra: 1}]", "field extra not found"},
	}
	for _, tt := range tests {
		_, err := trust.Parse([]byte(tt.doc), dir)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.doc, err, tt.want)
		}
	}
	if _, err := trust.Parse([]byte("rules: [{images: ['*'], publicKeys: ["+key.PubFile+"]}]"), "/nowhere"); err != nil {
		t.Errorf("absolute key path: %v", err)
	}
}

// fixture is a registry with two images and keys to sign them with.
type fixture struct {
	host         string
	app, other   string // image references (tags)
	appD, otherD string // their digests
	key, wrong   trusttest.Key
	edKey        trusttest.Key
	dir          string
}

func newFixture(t *testing.T) *fixture {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	f := &fixture{host: strings.TrimPrefix(srv.URL, "http://"), dir: t.TempDir()}
	push := func(repo string) (string, string) {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref := f.host + "/" + repo + ":1"
		tag, _ := name.NewTag(ref, name.Insecure)
		if err := remote.Write(tag, img); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		return ref, d.String()
	}
	f.app, f.appD = push("acme/app")
	f.other, f.otherD = push("acme/other")
	f.key = trusttest.NewKey(t, f.dir, "release")
	f.wrong = trusttest.NewKey(t, f.dir, "attacker")
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	f.edKey = trusttest.WriteKey(t, f.dir, "ed", ed)
	return f
}

func (f *fixture) verifier(t *testing.T, doc string) *trust.Verifier {
	t.Helper()
	p, err := trust.Parse([]byte(doc), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	return trust.NewVerifier(p, func(context.Context, string) (trust.Access, error) {
		return trust.Access{Insecure: true}, nil
	})
}

func TestCheck(t *testing.T) {
	signed := func(f *fixture) string {
		return "rules: [{images: ['" + f.host + "/acme/'], publicKeys: [release.pub, ed.pub]}]"
	}
	signAs := func(repo, digest func(*fixture) string, by func(*fixture) trusttest.Key) func(*testing.T, *fixture) {
		return func(t *testing.T, f *fixture) {
			p := trusttest.PayloadFor(repo(f), digest(f))
			trusttest.Push(t, f.app, f.appD, []trusttest.Signature{{Payload: p, Sig: trusttest.SignPayload(t, by(f).Signer, p)}})
		}
	}
	appRepo := func(f *fixture) string { return f.host + "/acme/app" }
	otherRepo := func(f *fixture) string { return f.host + "/acme/other" }
	appD := func(f *fixture) string { return f.appD }
	otherD := func(f *fixture) string { return f.otherD }
	release := func(f *fixture) trusttest.Key { return f.key }
	tests := []struct {
		name   string
		policy func(*fixture) string
		sign   func(*testing.T, *fixture) // what the registry holds beside the image
		noDig  bool                       // the image has no registry digest
		image  string                     // instead of the app image
		want   fleetv1.Reply_Code
	}{
		{name: "signed", policy: signed, sign: signAs(appRepo, appD, release), want: fleetv1.Reply_OK},
		{name: "signed with ed25519", policy: signed, sign: signAs(appRepo, appD, func(f *fixture) trusttest.Key { return f.edKey }), want: fleetv1.Reply_OK},
		{name: "signed with cosign's helper", policy: signed, sign: func(t *testing.T, f *fixture) { trusttest.Sign(t, f.app, f.appD, f.key.Signer) }, want: fleetv1.Reply_OK},
		{name: "unsigned", policy: signed, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "signed by a key not in the policy", policy: signed, sign: signAs(appRepo, appD, func(f *fixture) trusttest.Key { return f.wrong }), want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "another image's signature copied beside this one", policy: signed, sign: signAs(otherRepo, otherD, release), want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "this digest signed for another repository", policy: signed, sign: signAs(otherRepo, appD, release), want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "payload swapped under a valid signature", policy: signed, sign: func(t *testing.T, f *fixture) {
			good := trusttest.PayloadFor(otherRepo(f), f.otherD)
			evil := trusttest.PayloadFor(appRepo(f), f.appD)
			trusttest.Push(t, f.app, f.appD, []trusttest.Signature{{Payload: evil, Sig: trusttest.SignPayload(t, f.key.Signer, good)}})
		}, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "one bad and one good signature", policy: signed, sign: func(t *testing.T, f *fixture) {
			p := trusttest.PayloadFor(appRepo(f), f.appD)
			trusttest.Push(t, f.app, f.appD, []trusttest.Signature{
				{Payload: p, Sig: trusttest.SignPayload(t, f.wrong.Signer, p)},
				{Payload: p, Sig: trusttest.SignPayload(t, f.key.Signer, p)},
			})
		}, want: fleetv1.Reply_OK},
		{name: "digest allowed", policy: func(f *fixture) string { return "rules: [{images: ['*'], digests: ['" + f.appD + "']}]" }, want: fleetv1.Reply_OK},
		{name: "digest not allowed", policy: func(f *fixture) string { return "rules: [{images: ['*'], digests: ['" + f.otherD + "']}]" }, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "no rule covers the image", policy: func(*fixture) string {
			return "rules: [{images: ['registry.example.com'], insecureAcceptAnything: true}]"
		}, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "the longest scope wins", policy: func(f *fixture) string {
			return "rules: [{images: ['" + f.host + "'], insecureAcceptAnything: true}, {images: ['" + f.host + "/acme/app'], publicKeys: [release.pub]}]"
		}, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "accept anything", policy: func(f *fixture) string {
			return "rules: [{images: ['" + f.host + "/acme'], insecureAcceptAnything: true}]"
		}, noDig: true, want: fleetv1.Reply_OK},
		{name: "no registry digest", policy: signed, noDig: true, want: fleetv1.Reply_UNTRUSTED_IMAGE},
		{name: "registry unreachable", policy: func(*fixture) string { return "rules: [{images: ['*'], publicKeys: [release.pub]}]" },
			image: "127.0.0.1:1/acme/app:1", want: fleetv1.Reply_REGISTRY_UNREACHABLE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			if tt.sign != nil {
				tt.sign(t, f)
			}
			image, digest := f.app, f.appD
			if tt.image != "" {
				image = tt.image
			}
			if tt.noDig {
				digest = ""
			}
			err := f.verifier(t, tt.policy(f)).Check(context.Background(), image, digest)
			if got := errdefs.Code(err); got != tt.want {
				t.Fatalf("Check = %v (%v), want %v", got, err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "rules[") && tt.want == fleetv1.Reply_UNTRUSTED_IMAGE && !strings.Contains(err.Error(), "--image-trust-policy") {
				t.Errorf("the refusal names neither the rule nor the setting: %v", err)
			}
		})
	}
}
