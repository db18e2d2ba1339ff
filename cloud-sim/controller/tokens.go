package controller

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// issueToken exchanges rec's ecr credential for an ECR token. c.mu is not held.
func (c *Controller) issueToken(ctx context.Context, rec *Credential, cr *fleetv1.Credential) error {
	tok, refreshAt, err := credential.TokenCredential(ctx, cr, c.cfg.Now())
	if err != nil {
		return err
	}
	raw, err := proto.Marshal(tok)
	if err != nil {
		return err
	}
	enc := c.cfg.Keys.Encrypt(raw)
	c.mu.Lock()
	rec.Token, rec.TokenFingerprint = enc, fingerprint(tok)
	rec.TokenExpiresAt, rec.TokenRefreshAt = tok.GetEcrToken().GetExpiresAt().AsTime(), refreshAt
	c.mu.Unlock()
	return nil
}

// tokenLoop re-issues ECR tokens before they expire and sends the new one,
// sealed, to every online gateway of the tenant that holds an older one;
// a gateway offline meanwhile gets it after its next birth.
func (c *Controller) tokenLoop() {
	defer c.done.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	sent := map[string]string{} // gateway key + scope -> token fingerprint sent
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c.refreshTokens(ctx, sent)
		cancel()
	}
}

func (c *Controller) refreshTokens(ctx context.Context, sent map[string]string) {
	c.mu.Lock()
	var due []*Credential
	for _, rec := range c.creds {
		if rec.IssueTokens {
			due = append(due, rec)
		}
	}
	c.mu.Unlock()
	now := c.cfg.Now()
	for _, rec := range due {
		if !now.Before(rec.TokenRefreshAt) {
			cr, err := c.open(rec.Secret)
			if err == nil {
				err = c.issueToken(ctx, rec, cr)
			}
			if err != nil {
				c.log.Warn("ECR token not re-issued; gateways keep the current one", "tenant", rec.Tenant, "registry", rec.Registry, "err", err)
				c.hub.publish(Change{Kind: "credential.refresh-failed", At: now, Tenant: rec.Tenant, Message: fmt.Sprintf("%s: %v", rec.Registry, err)})
				continue
			}
			c.mu.Lock()
			cp := *rec
			c.mu.Unlock()
			if err := c.store.Put(ctx, state.Credentials, state.Key(rec.Tenant, rec.Registry), &cp); err != nil {
				c.log.Warn("re-issued ECR token not saved", "err", err)
			}
			c.log.Info("ECR token re-issued", "tenant", rec.Tenant, "registry", rec.Registry, "expires_at", cp.TokenExpiresAt)
		}
		var targets []string
		for _, g := range c.Gateways(Filter{Tenant: rec.Tenant}) {
			if !g.Online {
				continue
			}
			k := state.Key(g.Tenant, g.ID, rec.Registry)
			for _, r := range g.Registries {
				if r.Registry == rec.Registry && r.Fingerprint != rec.TokenFingerprint && sent[k] != rec.TokenFingerprint {
					targets = append(targets, g.ID)
					sent[k] = rec.TokenFingerprint
				}
			}
		}
		if len(targets) == 0 {
			continue
		}
		tok, err := c.open(rec.Token)
		if err != nil {
			continue
		}
		set := &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Credentials: []*fleetv1.Credential{tok}}}}
		if _, err := c.Send(ctx, Target{Tenant: rec.Tenant, Gateways: targets}, set, SendOptions{}); err != nil {
			c.log.Warn("re-issued ECR token not sent", "err", err)
		}
	}
}
