package tenantcred

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// issueToken exchanges rec's ecr credential for an ECR token. c.mu is not held.
func (c *Credentials) issueToken(ctx context.Context, rec *Credential, cr *fleetv1.Credential) error {
	tok, refreshAt, err := awsecr.TokenCredential(ctx, cr, c.cfg.Now())
	if err != nil {
		return err
	}
	c.Stamp(rec.Tenant, tok)
	raw, err := proto.Marshal(tok)
	if err != nil {
		return err
	}
	enc := c.cfg.Keys.Encrypt(raw)
	c.mu.Lock()
	rec.Token, rec.TokenFingerprint = enc, tok.GetFingerprint()
	rec.TokenExpiresAt, rec.TokenRefreshAt = tok.GetEcrToken().GetExpiresAt().AsTime(), refreshAt
	c.mu.Unlock()
	return nil
}

// Token is the ECR token currently issued from a tenant's ecr credential.
type Token struct {
	Tenant, Registry string
	Fingerprint      string
	Credential       *fleetv1.Credential
}

// RefreshTokens re-issues the ECR tokens due for renewal and returns every
// current token; gateways holding an older one should get it.
func (c *Credentials) RefreshTokens(ctx context.Context) []Token {
	c.mu.Lock()
	var due []*Credential
	for _, rec := range c.creds {
		if rec.IssueTokens {
			due = append(due, rec)
		}
	}
	c.mu.Unlock()
	now := c.cfg.Now()
	var out []Token
	for _, rec := range due {
		if !now.Before(rec.TokenRefreshAt) && !c.reissue(ctx, rec) {
			continue
		}
		c.mu.Lock()
		tok := Token{Tenant: rec.Tenant, Registry: rec.Registry, Fingerprint: rec.TokenFingerprint}
		enc := rec.Token
		c.mu.Unlock()
		var err error
		if tok.Credential, err = c.open(enc); err == nil {
			out = append(out, tok)
		}
	}
	return out
}

// reissue issues a new token from rec and stores it; it reports false
// when that failed (gateways keep the current token).
func (c *Credentials) reissue(ctx context.Context, rec *Credential) bool {
	cr, err := c.open(rec.Secret)
	if err == nil {
		err = c.issueToken(ctx, rec, cr)
	}
	if err != nil {
		c.log.Warn("ECR token not re-issued; gateways keep the current one", "tenant", rec.Tenant, "registry", rec.Registry, "err", err)
		c.hub.Publish(changes.Change{Kind: "credential.refresh-failed", Severity: changes.Error, At: c.cfg.Now(), Tenant: rec.Tenant, Message: fmt.Sprintf("%s: %v", rec.Registry, err)})
		return false
	}
	c.mu.Lock()
	cp := rec.stored()
	c.mu.Unlock()
	if err := c.cfg.Store.Put(ctx, state.Credentials, state.Key(rec.Tenant, rec.Registry), cp); err != nil {
		c.log.Warn("re-issued ECR token not saved", "err", err)
	}
	c.log.Info("ECR token re-issued", "tenant", rec.Tenant, "registry", rec.Registry, "expires_at", cp.TokenExpiresAt)
	return true
}
