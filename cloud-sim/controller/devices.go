package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Device is a gateway's MQTT identity on the embedded broker: username
// and client id "{tenant}/{id}", a random password of which only the
// SHA-256 is kept (256 random bits need no slow hash), and the groups
// whose command topics it may read.
type Device struct {
	Tenant    string    `json:"tenant"`
	ID        string    `json:"id"`
	Groups    []string  `json:"groups,omitempty"`
	Hash      string    `json:"hash"`
	CreatedAt time.Time `json:"createdAt"`
}

// Provision creates or replaces a gateway's identity and returns its new
// password; the old password stops working at once.
func (c *Controller) Provision(ctx context.Context, tenant, id string, groups []string) (string, error) {
	return c.ProvisionWith(ctx, tenant, id, groups, "")
}

// ProvisionWith is Provision with a chosen password ("" for a random one).
func (c *Controller) ProvisionWith(ctx context.Context, tenant, id string, groups []string, password string) (string, error) {
	if err := topic.CheckID("tenant", tenant); err != nil {
		return "", errdefs.Invalid("tenant", "%v", err)
	}
	if err := topic.CheckGatewayID(id); err != nil {
		return "", errdefs.Invalid("id", "%v", err)
	}
	for i, g := range groups {
		if err := topic.CheckID("group", g); err != nil {
			return "", errdefs.Invalid(fmt.Sprintf("groups[%d]", i), "%v", err)
		}
	}
	if password == "" {
		password = c.NewPassword()
	}
	d := &Device{Tenant: tenant, ID: id, Groups: slices.Clone(groups), Hash: hashPassword(password), CreatedAt: c.cfg.Now()}
	if err := c.store.Put(ctx, state.Devices, state.Key(tenant, id), d); err != nil {
		return "", err
	}
	c.mu.Lock()
	c.devices[tenant+"/"+id] = d
	c.mu.Unlock()
	return password, nil
}

// ProvisionMany provisions gateways in one write, for simulated fleets.
func (c *Controller) ProvisionMany(ctx context.Context, tenant string, ids []string, groups []string, password string) error {
	if err := topic.CheckID("tenant", tenant); err != nil {
		return errdefs.Invalid("tenant", "%v", err)
	}
	batch := make(map[string]any, len(ids))
	devs := make([]*Device, 0, len(ids))
	for _, id := range ids {
		if err := topic.CheckGatewayID(id); err != nil {
			return errdefs.Invalid("id", "%v", err)
		}
		d := &Device{Tenant: tenant, ID: id, Groups: slices.Clone(groups), Hash: hashPassword(password), CreatedAt: c.cfg.Now()}
		batch[state.Key(tenant, id)] = d
		devs = append(devs, d)
	}
	if err := c.store.PutMany(ctx, state.Devices, batch); err != nil {
		return err
	}
	c.mu.Lock()
	for _, d := range devs {
		c.devices[d.Tenant+"/"+d.ID] = d
	}
	c.mu.Unlock()
	return nil
}

// NewPassword returns a random password of 256 bits.
func (c *Controller) NewPassword() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashPassword(p string) string {
	sum := sha256.Sum256([]byte(p))
	return hex.EncodeToString(sum[:])
}

// Authenticate implements broker.Authenticator: the controller with its
// password, or a provisioned gateway whose client id is its username (so
// that no client can take over another gateway's session).
func (c *Controller) Authenticate(clientID, username string, password []byte) (broker.Identity, error) {
	if username == ControllerUser {
		if len(c.cfg.ControllerPassword) > 0 && subtle.ConstantTimeCompare(password, c.cfg.ControllerPassword) == 1 {
			return broker.Identity{Controller: true}, nil
		}
		return broker.Identity{}, broker.ErrDenied
	}
	c.mu.Lock()
	d := c.devices[username]
	c.mu.Unlock()
	if d == nil || subtle.ConstantTimeCompare([]byte(hashPassword(string(password))), []byte(d.Hash)) != 1 {
		return broker.Identity{}, broker.ErrDenied
	}
	if clientID != username {
		return broker.Identity{}, fmt.Errorf("client id %q must be the username %q", clientID, username)
	}
	return broker.Identity{Tenant: d.Tenant, Gateway: d.ID, Groups: slices.Clone(d.Groups)}, nil
}

// Identify implements broker.Authenticator for sessions the broker
// restored: a gateway's client id is its username.
func (c *Controller) Identify(clientID string) (broker.Identity, bool) {
	if clientID == c.cfg.ID {
		return broker.Identity{Controller: true}, true
	}
	c.mu.Lock()
	d := c.devices[clientID]
	c.mu.Unlock()
	if d == nil {
		return broker.Identity{}, false
	}
	return broker.Identity{Tenant: d.Tenant, Gateway: d.ID, Groups: slices.Clone(d.Groups)}, true
}
