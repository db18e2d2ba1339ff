package controller

import (
	"cmp"
	"context"
	"slices"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/identity"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Sessions ends gateways' sessions at the embedded broker
// (broker.Broker).
type Sessions interface {
	// Disconnect closes client id's live connection at once, and with
	// deleteSession deletes its session; it reports whether it was
	// connected.
	Disconnect(clientID string, deleteSession bool) bool
}

// Provision creates a gateway's identity with a (see
// identity.Assignment), or gives an existing one a new password, and
// returns the password. The old password stops working at once: a session
// logged in with it is disconnected (its queued commands stay for the
// gateway's next login with the new one).
func (c *Controller) Provision(ctx context.Context, tenant, id string, a identity.Assignment) (string, error) {
	defer c.changingIdentity(tenant, id)()
	pw, err := c.ids.Provision(ctx, tenant, id, a)
	if err != nil {
		return "", err
	}
	c.disconnect(tenant, id, false)
	return pw, nil
}

// ProvisionMany provisions gateways in one write, for simulated fleets.
func (c *Controller) ProvisionMany(ctx context.Context, tenant string, gws []identity.Gateway, password string) error {
	return c.ids.ProvisionMany(ctx, tenant, gws, password)
}

// Assign changes a provisioned gateway's groups and labels: change gets a
// copy to modify. A gateway whose groups changed is disconnected, so that
// it logs in again under its new groups' command topics.
func (c *Controller) Assign(ctx context.Context, tenant, id string, change func(*identity.Assignment)) (*identity.Device, error) {
	defer c.changingIdentity(tenant, id)()
	var before []string
	d, err := c.ids.Assign(ctx, tenant, id, func(a *identity.Assignment) {
		before = slices.Clone(a.Groups)
		change(a)
	})
	if err != nil {
		return nil, err
	}
	if !slices.Equal(before, d.Groups) {
		c.disconnect(tenant, id, false)
	}
	c.hub.Publish(changes.Change{Kind: "gateway.assigned", Tenant: tenant, Gateway: id, At: c.cfg.Now()})
	return d, nil
}

// Provisioned returns a gateway's identity: the groups and labels the
// cloud assigned it (never its password).
func (c *Controller) Provisioned(tenant, id string) (*identity.Device, error) {
	d, ok := c.ids.Device(tenant, id)
	if !ok {
		return nil, identity.NotProvisioned(tenant, id)
	}
	return d, nil
}

// Deprovision deletes a gateway's identity and, on the embedded broker,
// disconnects it at once and deletes its session: it can no longer log in,
// and commands queued for it are dropped. Its inventory record stays, offline
// (its Will, published by the broker, says so) and matching no group or
// label, so its history is kept; it reports whether the gateway was
// connected. On Mosquitto with dynamic security (identity.Config.Mirror)
// the broker disconnects it without publishing its Will, so its death is
// recorded here.
func (c *Controller) Deprovision(ctx context.Context, tenant, id string) (bool, error) {
	defer c.changingIdentity(tenant, id)()
	if err := c.ids.Deprovision(ctx, tenant, id); err != nil {
		return false, err
	}
	live := c.disconnect(tenant, id, true)
	if c.cfg.Sessions == nil && c.ids.Mirrored() {
		live = c.noteDeprovisionedDeath(tenant, id)
	}
	c.log.Info("gateway deprovisioned", "tenant", tenant, "gateway", id, "disconnected", live)
	c.hub.Publish(changes.Change{Kind: "gateway.deprovisioned", Tenant: tenant, Gateway: id, At: c.cfg.Now()})
	return live, nil
}

// changingIdentity marks tenant/id's identity as being changed by this
// replica, which ends its sessions itself, until the returned func is
// called: the watch then leaves them to it (it would end them first, and
// Deprovision could not tell whether the gateway was connected).
func (c *Controller) changingIdentity(tenant, id string) (done func()) {
	key := tenant + "/" + id
	c.localIDs.Store(key, struct{}{})
	return func() { c.localIDs.Delete(key) }
}

// identityChanged ends, on the embedded broker, the sessions a change
// another replica made to a gateway's identity invalidates.
func (c *Controller) identityChanged(before, after *identity.Device) {
	d := cmp.Or(after, before)
	if _, local := c.localIDs.Load(d.Tenant + "/" + d.ID); local {
		return
	}
	if live := c.disconnect(d.Tenant, d.ID, after == nil); live {
		c.log.Info("gateway disconnected: its identity was changed on another replica", "tenant", d.Tenant, "gateway", d.ID, "deprovisioned", after == nil)
	}
}

// noteDeprovisionedDeath records the death of an online gateway that the
// broker disconnected without its Will, as the Will would have: its
// session lost. It reports whether the gateway was online.
func (c *Controller) noteDeprovisionedDeath(tenant, id string) bool {
	g, ok := c.inv.Get(tenant, id)
	if !ok || !g.Online {
		return false
	}
	c.inv.Apply(mqttclient.Received{Topic: topic.Topic{Tenant: tenant, Gateway: id, Kind: topic.Death},
		Message: &fleetv1.Death{Session: g.Session, Reason: fleetv1.Death_CONNECTION_LOST}, At: c.cfg.Now()})
	return true
}

func (c *Controller) disconnect(tenant, id string, deleteSession bool) bool {
	if c.cfg.Sessions == nil {
		return false
	}
	return c.cfg.Sessions.Disconnect(tenant+"/"+id, deleteSession)
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
