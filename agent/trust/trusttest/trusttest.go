// Package trusttest signs images in the cosign signature format, for tests
// of the image trust policy: a key made by the test, the signature pushed
// beside the image as cosign pushes it (tag sha256-<hex>.sig).
package trusttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/fleet-agent/fleet/agent/trust"
)

// Key is a signing key and its public key written as a cosign.pub file.
type Key struct {
	Signer  crypto.Signer
	PubFile string
}

// NewKey makes an ECDSA P-256 key, cosign's default, and writes its public
// key in dir.
func NewKey(t testing.TB, dir, name string) Key {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return WriteKey(t, dir, name, k)
}

// WriteKey writes signer's public key as dir/name.pub.
func WriteKey(t testing.TB, dir, name string, signer crypto.Signer) Key {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name+".pub")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return Key{Signer: signer, PubFile: path}
}

// PayloadFor is the simple-signing payload cosign signs for digest in repo.
func PayloadFor(repo, digest string) []byte {
	var p trust.Payload
	p.Critical.Identity.DockerReference = repo
	p.Critical.Image.DockerManifestDigest = digest
	p.Critical.Type = trust.PayloadType
	b, _ := json.Marshal(p)
	return b
}

// SignPayload signs payload as cosign does with signer's key type.
func SignPayload(t testing.TB, signer crypto.Signer, payload []byte) string {
	t.Helper()
	var sig []byte
	var err error
	if _, ok := signer.Public().(*ecdsa.PublicKey); ok {
		h := sha256.Sum256(payload)
		sig, err = signer.Sign(rand.Reader, h[:], crypto.SHA256)
	} else { // Ed25519 signs the message itself
		sig, err = signer.Sign(rand.Reader, payload, crypto.Hash(0))
	}
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// Signature is one layer of a signature manifest.
type Signature struct {
	Payload []byte
	Sig     string
}

// Sign pushes a signature by signer of image@digest (image names the
// repository) to the image's registry, as `cosign sign --key` does.
func Sign(t testing.TB, image, digest string, signer crypto.Signer, opts ...remote.Option) {
	t.Helper()
	Push(t, image, digest, []Signature{Signed(t, image, digest, signer)}, opts...)
}

// Signed is the signature by signer of image@digest.
func Signed(t testing.TB, image, digest string, signer crypto.Signer) Signature {
	t.Helper()
	payload := PayloadFor(repoOf(t, image).Name(), digest)
	return Signature{Payload: payload, Sig: SignPayload(t, signer, payload)}
}

// Push pushes a signature manifest holding sigs for image@digest.
func Push(t testing.TB, image, digest string, sigs []Signature, opts ...remote.Option) {
	t.Helper()
	tag := repoOf(t, image).Tag(Tag(digest))
	if err := remote.Write(tag, Image(t, sigs), opts...); err != nil {
		t.Fatalf("push signature %s: %v", tag, err)
	}
}

// Tag is the tag of digest's signatures: sha256-<hex>.sig.
func Tag(digest string) string { return strings.Replace(digest, ":", "-", 1) + ".sig" }

// Image is a signature manifest holding sigs, for registries that take
// pushes another way.
func Image(t testing.TB, sigs []Signature) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, s := range sigs {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:       static.NewLayer(s.Payload, trust.PayloadMediaType),
			Annotations: map[string]string{trust.SignatureAnnotation: s.Sig},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

func repoOf(t testing.TB, image string) name.Repository {
	t.Helper()
	ref, err := name.ParseReference(image, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref.Context()
}
