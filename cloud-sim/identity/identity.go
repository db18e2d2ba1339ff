// Package identity keeps the MQTT identities gateways connect to the
// embedded broker with (passwords, of which only a hash is kept, and
// groups) and is the broker's Authenticator: it confines each gateway to
// its own topics (broker.Identity.Allowed). It is built before the broker,
// which asks it about every client.
package identity

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Device is a gateway's MQTT identity on the embedded broker: username
// and client id "{tenant}/{id}", a random password of which only the
// SHA-256 is kept (256 random bits need no slow hash), and the groups
// whose command topics it may read. It is stored as it is.
type Device = state.Device

// ControllerUser is the MQTT username of the controller on the embedded broker.
const ControllerUser = "controller"

// Config configures the identities.
type Config struct {
	Store *state.Store
	// ControllerID is the controller's MQTT client id: its session, which
	// the broker may restore, is the controller's.
	ControllerID string
	// ControllerPassword, when set, lets a client log in as the controller
	// with username ControllerUser.
	ControllerPassword []byte
	Now                func() time.Time
}

// Identities are the provisioned gateways' identities.
type Identities struct {
	cfg Config

	mu      sync.RWMutex
	devices map[string]*Device // by username "tenant/id"; guarded by mu
}

// New loads the identities from the store.
func New(ctx context.Context, cfg Config) (*Identities, error) {
	if cfg.Store == nil {
		return nil, errors.New("identity: Store is required")
	}
	if cfg.ControllerID == "" {
		cfg.ControllerID = "controller"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ids := &Identities{cfg: cfg, devices: map[string]*Device{}}
	err := cfg.Store.Each(ctx, state.Devices, func(_ string, raw []byte) error {
		var d Device
		if err := json.Unmarshal(raw, &d); err != nil {
			return err
		}
		ids.devices[d.Tenant+"/"+d.ID] = &d
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("identity: load: %w", err)
	}
	return ids, nil
}

// Len is how many gateways are provisioned.
func (c *Identities) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.devices)
}

// Provision creates or replaces a gateway's identity and returns its new
// password; the old password stops working at once.
func (c *Identities) Provision(ctx context.Context, tenant, id string, groups []string) (string, error) {
	return c.ProvisionWith(ctx, tenant, id, groups, "")
}

// ProvisionWith is Provision with a chosen password ("" for a random one).
func (c *Identities) ProvisionWith(ctx context.Context, tenant, id string, groups []string, password string) (string, error) {
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
		password = NewPassword()
	}
	d := &Device{Tenant: tenant, ID: id, Groups: slices.Clone(groups), Hash: hashPassword(password), CreatedAt: c.cfg.Now()}
	if err := c.cfg.Store.Put(ctx, state.Devices, state.Key(tenant, id), d); err != nil {
		return "", err
	}
	c.mu.Lock()
	c.devices[tenant+"/"+id] = d
	c.mu.Unlock()
	return password, nil
}

// ProvisionMany provisions gateways in one write, for simulated fleets.
func (c *Identities) ProvisionMany(ctx context.Context, tenant string, ids []string, groups []string, password string) error {
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
	if err := c.cfg.Store.PutMany(ctx, state.Devices, batch); err != nil {
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
func NewPassword() string {
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
func (c *Identities) Authenticate(clientID, username string, password []byte) (broker.Identity, error) {
	if username == ControllerUser {
		if len(c.cfg.ControllerPassword) > 0 && subtle.ConstantTimeCompare(password, c.cfg.ControllerPassword) == 1 {
			return broker.Identity{Controller: true}, nil
		}
		return broker.Identity{}, broker.ErrDenied
	}
	c.mu.RLock()
	d := c.devices[username]
	c.mu.RUnlock()
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
func (c *Identities) Identify(clientID string) (broker.Identity, bool) {
	if clientID == c.cfg.ControllerID {
		return broker.Identity{Controller: true}, true
	}
	c.mu.RLock()
	d := c.devices[clientID]
	c.mu.RUnlock()
	if d == nil {
		return broker.Identity{}, false
	}
	return broker.Identity{Tenant: d.Tenant, Gateway: d.ID, Groups: slices.Clone(d.Groups)}, true
}
