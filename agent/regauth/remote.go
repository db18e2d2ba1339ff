package regauth

import (
	"context"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/internal/credential"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Remote returns how this process reaches image's registry as a pull of
// it would: the credential with the longest matching prefix (an ECR
// credential's cached token), its TLS material, and plain HTTP only where
// the engine would pull without verified TLS. The image trust policy reads
// signatures with it.
func (k *Keychain) Remote(ctx context.Context, image string) (trust.Access, error) {
	e, ik, err := k.lookup(image)
	if err != nil {
		return trust.Access{}, err
	}
	var cred *fleetv1.Credential
	auth := authn.Anonymous
	if e != nil {
		cred = e.cred
		user, password, err := k.secret(ctx, e, false)
		if err != nil {
			return trust.Access{}, err
		}
		if user != "" {
			auth = &authn.Basic{Username: user, Password: password}
		}
	}
	tr, err := credential.HTTPTransport(cred)
	if err != nil {
		return trust.Access{}, err
	}
	tr.DisableKeepAlives = true // a transport per call: nothing left idle
	insecure, err := k.insecureFor(ctx, ik.Host, cred)
	if err != nil {
		return trust.Access{}, err
	}
	if cred.GetInsecure() && tr.TLSClientConfig != nil {
		// Allowed by the local policy: TLS, if any, is not verified.
		tr.TLSClientConfig.InsecureSkipVerify = true
	}
	return trust.Access{Insecure: insecure, Auth: auth, Transport: tr}, nil
}
