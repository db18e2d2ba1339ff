package controller

import (
	"context"
	"slices"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// tokenLoop re-issues ECR tokens before they expire and sends the new one,
// sealed, to every online gateway of the tenant that holds an older one
// the cloud delivered (not one whose birth merely claims it); a gateway
// offline meanwhile gets it after its next birth.
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
		c.pushTokens(ctx, sent)
		cancel()
	}
}

func (c *Controller) pushTokens(ctx context.Context, sent map[string]string) {
	for _, tok := range c.creds.RefreshTokens(ctx) {
		var targets []string
		online := true
		for _, g := range c.inv.List(inventory.Filter{Tenant: tok.Tenant, Online: &online}) {
			if !slices.Contains(g.Delivered, tok.Registry) {
				continue
			}
			k := state.Key(g.Tenant, g.ID, tok.Registry)
			for _, r := range g.Registries {
				if r.Registry == tok.Registry && r.Fingerprint != tok.Fingerprint && sent[k] != tok.Fingerprint {
					targets = append(targets, g.ID)
					sent[k] = tok.Fingerprint
				}
			}
		}
		if len(targets) == 0 {
			continue
		}
		set := &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Credentials: []*fleetv1.Credential{tok.Credential}}}}
		if _, err := c.Send(ctx, Target{Tenant: tok.Tenant, Gateways: targets}, set, SendOptions{}); err != nil {
			c.log.Warn("re-issued ECR token not sent", "err", err)
		}
	}
}
