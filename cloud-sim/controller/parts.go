package controller

import (
	"context"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Provision creates or replaces a gateway's identity and returns its new
// password; the old password stops working at once.
func (c *Controller) Provision(ctx context.Context, tenant, id string, groups []string) (string, error) {
	return c.ids.Provision(ctx, tenant, id, groups)
}

// ProvisionMany provisions gateways in one write, for simulated fleets.
func (c *Controller) ProvisionMany(ctx context.Context, tenant string, ids []string, groups []string, password string) error {
	return c.ids.ProvisionMany(ctx, tenant, ids, groups, password)
}

// SetCredential validates and stores a tenant's credential; see
// tenantcred.Credentials.Set.
func (c *Controller) SetCredential(ctx context.Context, tenant string, cr *fleetv1.Credential, opts tenantcred.Options) (*tenantcred.CredentialView, error) {
	return c.creds.Set(ctx, tenant, cr, opts)
}

// Credentials lists a tenant's credentials ("" lists all), without secrets.
func (c *Controller) Credentials(tenant string) []tenantcred.CredentialView {
	return c.creds.List(tenant)
}

// DeleteCredential forgets a tenant's credential; gateways keep their copy
// until sent a delete-credentials.
func (c *Controller) DeleteCredential(ctx context.Context, tenant, registry string) error {
	return c.creds.Delete(ctx, tenant, registry)
}

// CheckRegistry checks image against its registry from the cloud with the
// tenant's credential for it, as check-registry does on a gateway.
func (c *Controller) CheckRegistry(ctx context.Context, tenant, image string) (*tenantcred.CheckResult, error) {
	return c.creds.Check(ctx, tenant, image)
}

// PushCredential sends the tenant's stored credential for registry (or
// the ECR token issued from it) to the target gateways, sealed to each.
func (c *Controller) PushCredential(ctx context.Context, t Target, registry string) (*dispatch.BatchView, error) {
	cr, err := c.creds.Push(t.Tenant, registry)
	if err != nil {
		return nil, err
	}
	set := &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Credentials: []*fleetv1.Credential{cr}}}}
	return c.Send(ctx, t, set, SendOptions{})
}
