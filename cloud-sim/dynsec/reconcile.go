package dynsec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// batch is how many commands Reconcile sends in one message.
const batch = 100

// Reconciled is what Reconcile changed on the broker.
type Reconciled struct {
	// Created are gateways whose client was missing. The cloud keeps only
	// a hash of a password, so they were created without one and cannot
	// log in until given a new password (`cloud-sim provision
	// {tenant}/{gateway}`).
	Created []string
	// Changed are gateways whose role's rules were changed to their groups.
	Changed []string
	// Deleted are this product's clients of gateways no longer provisioned.
	Deleted []string
	// Kept are clients not in want that were provisioned meanwhile.
	Kept []string
}

// Reconcile makes the broker's gateway clients those of want: missing
// ones created (see Reconciled.Created), roles' rules set to their
// groups', and this product's clients and roles of gateways not in want
// deleted, which disconnects them. Clients and roles not this product's
// are left alone; a gateway whose username such a client holds is
// reported in the error, and the rest is still done.
//
// want is what one replica read at its start; another may provision a
// gateway meanwhile (its client is created on the broker, then its
// identity stored). provisioned, when set, is asked again about each
// client about to be deleted, and one it reports provisioned now is kept.
func (c *Client) Reconcile(ctx context.Context, want []Gateway, provisioned func(context.Context, Gateway) bool) (Reconciled, error) {
	var done Reconciled
	clients, roles, err := c.list(ctx)
	if err != nil {
		return done, err
	}
	var cmds []Command
	var errs []error
	wanted := map[string]bool{}
	for _, g := range want {
		u := g.Username()
		wanted[u] = true
		cl, r := clients[u], roles[roleName(u)]
		p, err := plan(c.cfg.Scheme, g, "", cl, r)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		switch {
		case cl == nil:
			done.Created = append(done.Created, u)
		case len(p) > 0:
			done.Changed = append(done.Changed, u)
		}
		cmds = append(cmds, p...)
	}
	for u, cl := range clients {
		if wanted[u] || !cl.owned() {
			continue
		}
		if tenant, id, ok := strings.Cut(u, "/"); ok && provisioned != nil && provisioned(ctx, Gateway{Tenant: tenant, ID: id}) {
			wanted[u] = true // provisioned by another replica since want was read
			done.Kept = append(done.Kept, u)
			continue
		}
		cmds = append(cmds, Command{Command: "deleteClient", Username: u})
		done.Deleted = append(done.Deleted, u)
	}
	for rn := range roles {
		if u, ok := strings.CutPrefix(rn, RolePrefix); ok && !wanted[u] {
			cmds = append(cmds, Command{Command: "deleteRole", RoleName: rn})
		}
	}
	for len(cmds) > 0 {
		n := min(batch, len(cmds))
		if _, err := c.Do(ctx, cmds[:n]...); err != nil {
			errs = append(errs, err)
		}
		cmds = cmds[n:]
	}
	c.log.Info("dynsec: broker reconciled with the cloud's identities", "gateways", len(want),
		"created", len(done.Created), "changed", len(done.Changed), "deleted", len(done.Deleted))
	if len(done.Created) > 0 {
		c.log.Warn("dynsec: gateways created on the broker without a password (the cloud keeps only its hash): give each a new one with `cloud-sim provision TENANT/GATEWAY`",
			"gateways", done.Created)
	}
	return done, errors.Join(errs...)
}

// list returns every client and role of the broker by name.
func (c *Client) list(ctx context.Context) (map[string]*client, map[string]*role, error) {
	resps, err := c.Do(ctx, Command{Command: "listClients", Verbose: true, Count: -1}, Command{Command: "listRoles", Verbose: true, Count: -1})
	if err != nil {
		return nil, nil, err
	}
	var cl struct{ Clients []*client }
	var rl struct{ Roles []*role }
	for i, dst := range []any{&cl, &rl} {
		if err := json.Unmarshal(resps[i].Data, dst); err != nil {
			return nil, nil, fmt.Errorf("dynsec %s: response: %w", resps[i].Command, err)
		}
	}
	clients := make(map[string]*client, len(cl.Clients))
	for _, x := range cl.Clients {
		clients[x.Username] = x
	}
	roles := make(map[string]*role, len(rl.Roles))
	for _, x := range rl.Roles {
		roles[x.RoleName] = x
	}
	return clients, roles, nil
}
