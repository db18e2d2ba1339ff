package credential

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Checker checks an image against its registry. Its zero value suits a
// caller without a container engine of its own (the cloud).
type Checker struct {
	// Insecure reports whether the puller accepts host without verified
	// TLS (plain HTTP, or an unverified certificate); nil means loopback
	// hosts only, the Docker Engine's default.
	Insecure func(ctx context.Context, host string) bool
	// Login returns the username and password to present ("" for
	// anonymous); force asks for a fresh ECR token. Nil means Login with
	// ECR.
	Login func(ctx context.Context, cred *fleetv1.Credential, force bool) (user, password string, err error)
	// ECR gets the tokens of ecr credentials when Login is nil (the cloud
	// passes awsecr.Fetch); nil refuses ecr credentials.
	ECR TokenSource
	// Dial, when set, opens every connection of the check, redirects
	// included, and the connections go direct, never through an
	// HTTP(S)_PROXY: the cloud passes its egress policy, which refuses
	// loopback, private and link-local destinations. Nil dials anywhere,
	// as a gateway's engine pulls from its LAN.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RedactAnswers keeps what a registry answered out of errors: they
	// carry its HTTP status and a fixed explanation only. The cloud
	// checks hosts its users name and must not echo what any server says.
	RedactAnswers bool
}

// Check checks, with cred (nil: anonymous), that image's registry is
// reachable (and its TLS verified, unless the puller accepts it without),
// that the credential is accepted and that the image exists for this
// machine's platform, reading manifests only, never layers. The result says
// how far it got; the error's kind names what failed. Errors about the
// image name the field "image".
func (c Checker) Check(ctx context.Context, cred *fleetv1.Credential, image string) (*fleetv1.RegistryCheck, error) {
	rc := &fleetv1.RegistryCheck{}
	if image == "" {
		return rc, errdefs.Invalid("image", "is required, e.g. registry.example.com/team/app:1.2")
	}
	ik, err := ImageKey(image)
	if err != nil {
		return rc, errdefs.Invalid("image", "%v", err)
	}
	host := ik.Host
	if host == DockerHub {
		host = "registry-1.docker.io"
	}
	if err := c.reach(ctx, rc, host, cred); err != nil {
		return rc, err
	}
	return rc, c.manifest(ctx, rc, host, cred, image)
}

// reach probes the registry's TLS and fills rc's reachable and tlsVerified.
func (c Checker) reach(ctx context.Context, rc *fleetv1.RegistryCheck, host string, cred *fleetv1.Credential) error {
	insecure := !cred.GetRequireTls()
	if c.Insecure != nil {
		insecure = insecure && c.Insecure(ctx, host)
	} else {
		insecure = insecure && Loopback(host)
	}
	tr, err := c.transport(cred)
	if err != nil {
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrTLS, host, err)
	}
	defer tr.CloseIdleConnections()
	res, perr := probe(ctx, host, tr)
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
	return nil
}

// manifest reads image's manifest (one request: the descriptor carries
// the digest, the image for this platform its size) and fills the rest of rc.
func (c Checker) manifest(ctx context.Context, rc *fleetv1.RegistryCheck, host string, cred *fleetv1.Credential, image string) error {
	tr, err := c.transport(cred)
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
		return errdefs.Invalid("image", "%v", err)
	}
	get := func(force bool) (*remote.Descriptor, error) {
		auth, err := c.authenticator(ctx, cred, force)
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
	if err := c.refused(err, rc, host, cred, image, ref); err != nil {
		return err
	}
	rc.Authenticated, rc.ImageFound, rc.Digest = true, true, desc.Digest.String()
	img, err := desc.Image() // for an index, this platform's image: manifests only
	if err != nil {
		if status(err) == 0 {
			return fmt.Errorf("%w: image %s has no manifest for linux/%s: %s", errdefs.ErrNotFound, image, runtime.GOARCH, c.detail(err))
		}
		return c.checkErr(host, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return c.checkErr(host, err)
	}
	rc.SizeBytes = m.Config.Size
	for _, l := range m.Layers {
		rc.SizeBytes += l.Size
	}
	return nil
}

// transport is the HTTP transport of a check with cred's TLS settings.
func (c Checker) transport(cred *fleetv1.Credential) (*http.Transport, error) {
	tr, err := HTTPTransport(cred)
	if err != nil {
		return nil, err
	}
	if c.Dial != nil {
		tr.DialContext, tr.Proxy = c.Dial, nil
	}
	return tr, nil
}

// refused maps the registry's answer to the manifest request.
func (c Checker) refused(err error, rc *fleetv1.RegistryCheck, host string, cred *fleetv1.Credential, image string, ref name.Reference) error {
	switch status(err) {
	case 0:
		if err != nil {
			return c.checkErr(host, err)
		}
		return nil
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: registry %s refused the credential%s: %s", errdefs.ErrUnauthenticated, host, which(cred), c.detail(err))
	case http.StatusForbidden:
		rc.Authenticated = true
		return fmt.Errorf("%w: registry %s accepted the credential%s but denies pulling %s: %s", errdefs.ErrPermissionDenied, host, which(cred), ref.Context(), c.detail(err))
	case http.StatusNotFound:
		rc.Authenticated = true
		return fmt.Errorf("%w: image %s is not in the registry: %s", errdefs.ErrNotFound, image, c.detail(err))
	default:
		return fmt.Errorf("%w: registry %s: %s", errdefs.ErrRegistryUnreachable, host, c.detail(err))
	}
}

// detail describes err in a message; with RedactAnswers, nothing the
// registry's answer said: its HTTP status, or a fixed explanation.
func (c Checker) detail(err error) string {
	if !c.RedactAnswers {
		return err.Error()
	}
	if s := status(err); s != 0 {
		return fmt.Sprintf("HTTP %d %s (the registry's answer is not shown)", s, http.StatusText(s))
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err.Error() // connection and TLS failures: nothing from the registry
	}
	return "the registry's answer is not a valid image manifest (not shown)"
}

// authenticator is what a registry client presents for cred.
func (c Checker) authenticator(ctx context.Context, cred *fleetv1.Credential, force bool) (authn.Authenticator, error) {
	if cred == nil {
		return authn.Anonymous, nil
	}
	login := c.Login
	if login == nil {
		login = func(ctx context.Context, cred *fleetv1.Credential, force bool) (string, string, error) {
			return Login(ctx, cred, time.Now(), c.ECR)
		}
	}
	user, password, err := login(ctx, cred, force)
	if err != nil || user == "" {
		return authn.Anonymous, err
	}
	return &authn.Basic{Username: user, Password: password}, nil
}

// Login returns the username and password cred presents to its registry
// ("" for anonymous). An ecr credential gets a new token from ecr on every
// call: callers that pull often cache tokens (the agent's keychain does).
func Login(ctx context.Context, cred *fleetv1.Credential, now time.Time, ecr TokenSource) (user, password string, err error) {
	switch kc := cred.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		return kc.Basic.GetUsername(), kc.Basic.GetPassword(), nil
	case *fleetv1.Credential_EcrToken:
		if exp := kc.EcrToken.GetExpiresAt().AsTime(); !now.Before(exp) {
			return "", "", fmt.Errorf("%w: the ecr-token for %s expired at %s; push a fresh one (aws ecr get-login-password) with set-credentials, or use an ecr credential so the gateway refreshes tokens itself",
				errdefs.ErrUnauthenticated, scope(cred), exp.UTC().Format(time.RFC3339))
		}
		return "AWS", kc.EcrToken.GetPassword(), nil
	case *fleetv1.Credential_Ecr:
		key, err := ParseRegistry(cred.GetRegistry())
		if err != nil {
			return "", "", err
		}
		if ecr == nil {
			return "", "", fmt.Errorf("%w: no way to get ECR tokens here for the ecr credential of %s", errdefs.ErrUnsupported, key)
		}
		region, _ := ECRRegion(kc.Ecr, key.Host)
		t, err := ecr(ctx, kc.Ecr, region, now)
		if err != nil {
			return "", "", err
		}
		return t.User, t.Password, nil
	}
	return "", "", nil
}

// scope is the normalised registry scope of cred, for messages.
func scope(cred *fleetv1.Credential) string {
	if k, err := ParseRegistry(cred.GetRegistry()); err == nil {
		return k.String()
	}
	return cred.GetRegistry()
}

// which names the credential in messages (scope and kind, never secrets).
func which(cred *fleetv1.Credential) string {
	if cred == nil {
		return " (none stored: the pull is anonymous)"
	}
	return fmt.Sprintf(" (%s credential for %s)", KindOf(cred), scope(cred))
}

// status is the HTTP status of a registry error, 0 for none.
func status(err error) int {
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode
	}
	return 0
}

func (c Checker) checkErr(host string, err error) error {
	var fe *errdefs.FieldError
	if errors.As(err, &fe) || errdefs.Code(err) != fleetv1.Reply_INTERNAL {
		return err
	}
	return fmt.Errorf("%w: registry %s: %s", errdefs.ErrRegistryUnreachable, host, c.detail(err))
}
