package regauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Check handles check-registry: with the credential a pull of the image
// would use, it checks that the registry is reachable (and its TLS
// verified, unless the engine treats it as insecure), that the credential
// is accepted and that the image exists for this machine's platform,
// reading manifests only, never layers. The reply's registryCheck says how
// far it got; its code names what failed.
func (k *Keychain) Check(ctx context.Context, x *command.Exec) error {
	image := x.Command.GetCheckRegistry().GetImage()
	if image == "" {
		return errdefs.Invalid("checkRegistry.image", "is required, e.g. registry.example.com/team/app:1.2")
	}
	rc := &fleetv1.RegistryCheck{}
	x.Reply.RegistryCheck = rc
	e, ik, err := k.lookup(image)
	if err != nil {
		return errdefs.Invalid("checkRegistry.image", "%v", err)
	}
	cred := &fleetv1.Credential{Kind: &fleetv1.Credential_Anonymous{Anonymous: &fleetv1.Anonymous{}}}
	if e != nil {
		cred = e.cred
	}
	host := ik.Host
	if host == DockerHub {
		host = "registry-1.docker.io"
	}
	insecure := k.insecure(ctx, host) && !cred.GetRequireTls()
	res, perr := probe(ctx, host, cred)
	switch {
	case res == probeTLSOK:
		rc.Reachable, rc.TlsVerified = true, true
	case res == probePlainHTTP && insecure:
		rc.Reachable = true
	case res == probePlainHTTP && cred.GetRequireTls():
		rc.Reachable = true
		return fmt.Errorf("%w: registry %s serves plain HTTP and its credential sets requireTls", errdefs.ErrTLS, host)
	case res == probePlainHTTP:
		rc.Reachable = true
		return errdefs.PlainHTTPRegistry(host)
	case res == probeTLSFailed && insecure:
		rc.Reachable = true // the engine will not verify it either
	case res == probeTLSFailed:
		rc.Reachable = true
		return fmt.Errorf("%w: registry %s: %v; install the registry's CA with caCertificate in set-credentials", errdefs.ErrTLS, host, perr)
	default:
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrRegistryUnreachable, host, perr)
	}

	tr, err := httpTransport(cred)
	if err != nil {
		return err
	}
	defer tr.CloseIdleConnections()
	var opts []name.Option
	if !rc.TlsVerified {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(image, opts...)
	if err != nil {
		return errdefs.Invalid("checkRegistry.image", "%v", err)
	}
	// One manifest request: the descriptor carries the digest, and the
	// image for this platform its size.
	get := func(force bool) (*remote.Descriptor, error) {
		auth, err := k.authenticator(ctx, e, force)
		if err != nil {
			return nil, err
		}
		return remote.Get(ref, remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuth(auth),
			remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	}
	desc, err := get(false)
	if status(err) == http.StatusUnauthorized && cred.GetEcr() != nil {
		desc, err = get(true) // a revoked or expired ECR token: once more with a new one
	}
	switch status(err) {
	case 0:
		if err != nil {
			return checkErr(host, err)
		}
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: registry %s refused the credential%s: %v", errdefs.ErrUnauthenticated, host, which(e), err)
	case http.StatusForbidden:
		rc.Authenticated = true
		return fmt.Errorf("%w: registry %s accepted the credential%s but denies pulling %s: %v", errdefs.ErrPermissionDenied, host, which(e), ref.Context(), err)
	case http.StatusNotFound:
		rc.Authenticated = true
		return fmt.Errorf("%w: image %s is not in the registry: %v", errdefs.ErrNotFound, image, err)
	default:
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrRegistryUnreachable, host, err)
	}
	rc.Authenticated, rc.ImageFound, rc.Digest = true, true, desc.Digest.String()
	img, err := desc.Image() // for an index, this platform's image: manifests only
	if err != nil {
		if status(err) == 0 {
			return fmt.Errorf("%w: image %s has no manifest for linux/%s: %v", errdefs.ErrNotFound, image, runtime.GOARCH, err)
		}
		return checkErr(host, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return checkErr(host, err)
	}
	rc.SizeBytes = m.Config.Size
	for _, l := range m.Layers {
		rc.SizeBytes += l.Size
	}
	return nil
}

// authenticator is what a registry client presents for e: its username
// and password (an ECR token, fetched anew when force is set), or nothing.
func (k *Keychain) authenticator(ctx context.Context, e *entry, force bool) (authn.Authenticator, error) {
	if e == nil {
		return authn.Anonymous, nil
	}
	user, password, err := k.secret(ctx, e, force)
	if err != nil || user == "" {
		return authn.Anonymous, err
	}
	return &authn.Basic{Username: user, Password: password}, nil
}

// which names the credential in messages (scope and kind, never secrets).
func which(e *entry) string {
	if e == nil {
		return " (none stored: the pull is anonymous)"
	}
	return fmt.Sprintf(" (%s credential for %s)", KindOf(e.cred), e.key)
}

// status is the HTTP status of a registry error, 0 for none.
func status(err error) int {
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode
	}
	return 0
}

func checkErr(host string, err error) error {
	var fe *errdefs.FieldError
	if errors.As(err, &fe) || errdefs.Code(err) != fleetv1.Reply_INTERNAL {
		return err
	}
	return fmt.Errorf("%w: registry %s: %v", errdefs.ErrRegistryUnreachable, host, err)
}
