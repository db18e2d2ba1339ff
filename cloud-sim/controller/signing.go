package controller

import (
	"context"

	"github.com/fleet-agent/fleet/cloud-sim/cmdkeys"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// CommandKeys are the tenant's valid command-signing public keys, as its
// gateways are given them (--command-signing-keys); the tenant's first key
// is made on first use.
func (c *Controller) CommandKeys(ctx context.Context, tenant string) ([]cmdsig.PublicKey, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return c.sign.Public(ctx, tenant)
}

// CommandSigningKeys lists the tenant's command-signing keys, the signer
// first.
func (c *Controller) CommandSigningKeys(ctx context.Context, tenant string) ([]cmdkeys.Key, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return c.sign.List(ctx, tenant)
}

// RotateCommandSigningKey makes the staged key (or a new one) the tenant's
// signer; the old ones stay valid until retired. Gateways accept commands
// signed with it once given the new key list (a provisioning response, or
// their --command-signing-keys file updated): stage it first.
func (c *Controller) RotateCommandSigningKey(ctx context.Context, tenant string) ([]cmdkeys.Key, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return c.sign.Rotate(ctx, tenant)
}

// RetireCommandSigningKey drops one of the tenant's keys that is not the
// signer.
func (c *Controller) RetireCommandSigningKey(ctx context.Context, tenant, id string) ([]cmdkeys.Key, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return c.sign.Retire(ctx, tenant, id)
}

func checkTenant(tenant string) error {
	if err := topic.CheckID("tenant", tenant); err != nil {
		return errdefs.Invalid("tenant", "%v", err)
	}
	return nil
}

// AddCommandSigningKey stages a new key for the tenant: valid and given to
// gateways, not signing until RotateCommandSigningKey.
func (c *Controller) AddCommandSigningKey(ctx context.Context, tenant string) ([]cmdkeys.Key, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	return c.sign.Add(ctx, tenant)
}
