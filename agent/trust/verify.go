package trust

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

// The cosign signature format: a manifest tagged sha256-<hex>.sig beside
// the signed image, one layer per signature, each layer a simple-signing
// payload with its signature in an annotation.
const (
	SignatureAnnotation = "dev.cosignproject.cosign/signature"
	PayloadMediaType    = "application/vnd.dev.cosign.simplesigning.v1+json"
	PayloadType         = "cosign container image signature"
	// maxPayload bounds what is read of one signature layer: a payload is
	// a few hundred bytes.
	maxPayload = 64 << 10
	// maxSignatures bounds the layers looked at in a signature manifest.
	maxSignatures = 32
)

// Payload is the simple-signing document a cosign signature signs.
type Payload struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

// Access is how to reach a registry as a pull of an image would.
type Access struct {
	// Insecure allows plain HTTP (as the engine's insecure registries).
	Insecure  bool
	Auth      authn.Authenticator // nil: anonymous
	Transport *http.Transport     // nil: http.DefaultTransport's settings
}

// Remote returns how to reach image's registry.
type Remote func(ctx context.Context, image string) (Access, error)

// Verifier checks images against a policy.
type Verifier struct {
	policy *Policy
	remote Remote
}

// NewVerifier returns a Verifier of policy that reads signatures through r.
func NewVerifier(policy *Policy, r Remote) *Verifier {
	return &Verifier{policy: policy, remote: r}
}

// Check returns nil when image, whose manifest digest is digest, is
// trusted. Refusals wrap errdefs.ErrUntrustedImage and name the setting;
// a registry that cannot be read wraps its own kind.
func (v *Verifier) Check(ctx context.Context, image, digest string) error {
	r, err := v.policy.match(image)
	if err != nil {
		return errdefs.Invalid("spec.image", "%v", err)
	}
	if r == nil {
		return fmt.Errorf("%w: no rule of the image trust policy (--image-trust-policy) covers %s; add a rule whose images include its registry or repository", errdefs.ErrUntrustedImage, image)
	}
	switch {
	case r.anything:
		return nil
	case digest == "":
		return fmt.Errorf("%w: %s has no registry digest (a local image?), so neither %s.digests nor a signature can vouch for it", errdefs.ErrUntrustedImage, image, r.field)
	case r.digests[digest]:
		return nil
	case len(r.keys) == 0:
		return fmt.Errorf("%w: %s@%s is not in %s.digests of the image trust policy", errdefs.ErrUntrustedImage, image, digest, r.field)
	}
	return v.verifySignatures(ctx, r, image, digest)
}

// verifySignatures looks for a cosign signature of digest that verifies
// with one of r's keys.
func (v *Verifier) verifySignatures(ctx context.Context, r *rule, image, digest string) error {
	acc, err := v.remote(ctx, image)
	if err != nil {
		return err
	}
	var nopts []name.Option
	if acc.Insecure {
		nopts = append(nopts, name.Insecure)
	}
	ref, err := name.ParseReference(image, nopts...)
	if err != nil {
		return errdefs.Invalid("spec.image", "%v", err)
	}
	if acc.Auth == nil {
		acc.Auth = authn.Anonymous
	}
	if acc.Transport == nil {
		acc.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	repo := ref.Context()
	sigTag := repo.Tag(strings.Replace(digest, ":", "-", 1) + ".sig")
	img, err := remote.Image(sigTag, remote.WithContext(ctx), remote.WithAuth(acc.Auth), remote.WithTransport(acc.Transport))
	if err != nil {
		status := 0
		if terr, ok := errors.AsType[*transport.Error](err); ok {
			status = terr.StatusCode
		}
		switch status {
		case http.StatusNotFound:
			return fmt.Errorf("%w: %s@%s is not signed (no %s in its registry); %s requires a cosign signature by one of its publicKeys", errdefs.ErrUntrustedImage, image, digest, sigTag.TagStr(), r.field)
		case http.StatusUnauthorized:
			return fmt.Errorf("%w: the registry refused the credential reading the signatures of %s: %v", errdefs.ErrUnauthenticated, image, err)
		case http.StatusForbidden:
			return fmt.Errorf("%w: the registry denies reading the signatures of %s: %v", errdefs.ErrPermissionDenied, image, err)
		}
		return fmt.Errorf("%w: reading the signatures of %s: %v", errdefs.ErrRegistryUnreachable, image, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("%w: reading the signatures of %s: %v", errdefs.ErrRegistryUnreachable, image, err)
	}
	want, err := credential.ImageKey(image)
	if err != nil {
		return errdefs.Invalid("spec.image", "%v", err)
	}
	var why []string
	for i, desc := range m.Layers {
		if i == maxSignatures {
			break
		}
		sig, ok := desc.Annotations[SignatureAnnotation]
		if !ok || desc.Size > maxPayload {
			continue
		}
		payload, err := fetchBlob(ctx, acc, repo, desc.Digest.String())
		if err != nil {
			return fmt.Errorf("%w: reading signature %d of %s: %v", errdefs.ErrRegistryUnreachable, i, image, err)
		}
		key, err := r.verify(payload, sig)
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		if err := checkPayload(payload, want, digest); err != nil {
			why = append(why, fmt.Sprintf("signed by %s but %v", key, err))
			continue
		}
		return nil
	}
	if len(why) == 0 {
		why = []string{"the signature manifest holds no cosign signature"}
	}
	return fmt.Errorf("%w: no signature of %s@%s verifies with %s.publicKeys: %s", errdefs.ErrUntrustedImage, image, digest, r.field, strings.Join(why, "; "))
}

// fetchBlob reads a small blob and checks its digest. (Through the
// registry transport rather than as an image layer, which would link
// decompressors the agent does not need.)
func fetchBlob(ctx context.Context, acc Access, repo name.Repository, digest string) ([]byte, error) {
	rt, err := transport.NewWithContext(ctx, repo.Registry, acc.Auth, acc.Transport, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: "/v2/" + repo.RepositoryStr() + "/blobs/" + digest}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	res, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u.Path, res.Status)
	}
	b, err := io.ReadAll(io.LimitReader(res.Body, maxPayload+1))
	switch {
	case err != nil:
		return nil, err
	case len(b) > maxPayload:
		return nil, errors.New("signature payload too large")
	}
	if sum := sha256.Sum256(b); "sha256:"+hex.EncodeToString(sum[:]) != digest {
		return nil, fmt.Errorf("blob %s does not match its digest", digest)
	}
	return b, nil
}

// verify returns the name of the key whose signature sig (base64) of
// payload verifies.
func (r *rule) verify(payload []byte, sig string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return "", errors.New("a signature is not base64")
	}
	h := sha256.Sum256(payload)
	for _, k := range r.keys {
		var ok bool
		switch pub := k.key.(type) {
		case *ecdsa.PublicKey:
			ok = ecdsa.VerifyASN1(pub, h[:], raw)
		case ed25519.PublicKey:
			ok = ed25519.Verify(pub, payload, raw)
		case *rsa.PublicKey:
			ok = rsa.VerifyPKCS1v15(pub, crypto.SHA256, h[:], raw) == nil
		}
		if ok {
			return k.name, nil
		}
	}
	return "", errors.New("a signature by a key not in the policy (or of other bytes)")
}

// checkPayload checks that a verified payload is about digest in the
// repository want: a signature of another image or of another repository
// does not vouch for this one.
func checkPayload(payload []byte, want credential.Key, digest string) error {
	var p Payload
	if err := json.Unmarshal(payload, &p); err != nil {
		return fmt.Errorf("its payload is not JSON: %v", err)
	}
	if p.Critical.Type != PayloadType {
		return fmt.Errorf("its payload type is %q, not %q", p.Critical.Type, PayloadType)
	}
	if got := p.Critical.Image.DockerManifestDigest; got != digest {
		return fmt.Errorf("it signs digest %s, not %s", got, digest)
	}
	ref := p.Critical.Identity.DockerReference
	if got, err := credential.ImageKey(ref); err != nil || got != want {
		return fmt.Errorf("it signs repository %q, not %s", ref, want)
	}
	return nil
}
