package controller

import (
	"slices"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
)

// The overview's bounds.
const (
	// ExpiringWithin is how soon a credential must expire to be listed.
	ExpiringWithin = 7 * 24 * time.Hour
	// MaxFailing and MaxExpiring bound the overview's lists.
	MaxFailing  = 50
	MaxExpiring = 100
)

// Overview is the state of a tenant's fleet (or of all) at a glance.
type Overview struct {
	inventory.Summary
	// ActiveRollouts are the rollouts running or paused, newest first,
	// without their gateways.
	ActiveRollouts []*rollout.Summary
	// Expiring are the credentials that expire within ExpiringWithin,
	// soonest first, at most MaxExpiring; ExpiringTotal counts them all.
	Expiring      []ExpiringCredential
	ExpiringTotal int
}

// ExpiringCredential is a credential that expires soon: a tenant's in
// the cloud (Gateway ""), or one a gateway holds.
type ExpiringCredential struct {
	Tenant, Registry, Kind string
	ExpiresAt              time.Time
	Gateway                string
}

// Overview sums up the fleet of tenant ("" all tenants).
func (c *Controller) Overview(tenant string) *Overview {
	now := c.cfg.Now()
	cutoff := now.Add(ExpiringWithin)
	o := &Overview{Summary: c.inv.Summarize(tenant, cutoff, MaxFailing)}
	for _, r := range c.sched.List() {
		if r.Active && (tenant == "" || r.Spec.Tenant == tenant) {
			o.ActiveRollouts = append(o.ActiveRollouts, r)
		}
	}
	creds := c.creds.List(tenant)
	o.Expiring = cloudExpiring(creds, now, cutoff)
	for _, h := range o.Summary.Expiring {
		if !refreshedByCloud(creds, h, now) {
			o.Expiring = append(o.Expiring, ExpiringCredential{Tenant: h.Tenant, Registry: h.Registry.Registry, Kind: h.Kind, ExpiresAt: h.ExpiresAt, Gateway: h.Gateway})
		}
	}
	slices.SortStableFunc(o.Expiring, func(a, b ExpiringCredential) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	o.ExpiringTotal = len(o.Expiring)
	o.Expiring = o.Expiring[:min(len(o.Expiring), MaxExpiring)]
	return o
}

// cloudExpiring lists the tenants' credentials that expire before cutoff,
// and the ECR tokens the cloud issues whose refresh is overdue (a token
// refreshed in time is not a concern, however short-lived).
func cloudExpiring(creds []tenantcred.CredentialView, now, cutoff time.Time) []ExpiringCredential {
	var out []ExpiringCredential
	for _, v := range creds {
		if !v.ExpiresAt.IsZero() && v.ExpiresAt.Before(cutoff) {
			out = append(out, ExpiringCredential{Tenant: v.Tenant, Registry: v.Registry, Kind: v.Kind, ExpiresAt: v.ExpiresAt})
		}
		if v.IssueTokens && !v.TokenExpiresAt.IsZero() && v.TokenExpiresAt.Before(cutoff) && v.TokenRefreshAt.Before(now) {
			out = append(out, ExpiringCredential{Tenant: v.Tenant, Registry: v.Registry, Kind: "ecr-token", ExpiresAt: v.TokenExpiresAt})
		}
	}
	return out
}

// refreshedByCloud reports whether the cloud keeps h fresh: an ECR token
// it issues for the tenant's credential, whose refresh is not overdue.
func refreshedByCloud(creds []tenantcred.CredentialView, h inventory.HeldCredential, now time.Time) bool {
	if h.Kind != "ecr-token" {
		return false
	}
	return slices.ContainsFunc(creds, func(v tenantcred.CredentialView) bool {
		return v.Tenant == h.Tenant && v.Registry == h.Registry.Registry && v.IssueTokens && !v.TokenRefreshAt.Before(now)
	})
}
