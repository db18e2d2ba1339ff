package regauth

import (
	"context"

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Check checks image against its registry with the credential a pull of
// it would use (see credential.Checker): TLS as the engine would verify
// it, and an ECR credential's cached token.
func (k *Keychain) Check(ctx context.Context, image string) (*fleetv1.RegistryCheck, error) {
	if image == "" {
		return &fleetv1.RegistryCheck{}, errdefs.Invalid("image", "is required, e.g. registry.example.com/team/app:1.2")
	}
	e, _, err := k.lookup(image)
	if err != nil {
		return &fleetv1.RegistryCheck{}, errdefs.Invalid("image", "%v", err)
	}
	var cred *fleetv1.Credential
	if e != nil {
		cred = e.cred
	}
	c := credential.Checker{
		Insecure: k.insecure,
		Login: func(ctx context.Context, _ *fleetv1.Credential, force bool) (string, string, error) {
			return k.secret(ctx, e, force)
		},
	}
	return c.Check(ctx, cred, image)
}
