// Package identity keeps the MQTT identities gateways connect to the
// embedded broker with (passwords, of which only a hash is kept) and the
// groups and labels the cloud assigns them, by which the inventory selects
// targets (inventory.Assigner). It is the broker's Authenticator: it
// confines each gateway to its own topics (broker.Identity.Allowed). It is
// built before the broker, which asks it about every client.
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
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

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
	// Mirror, when set, is an external broker's copy of the identities
	// (Mosquitto's dynamic security: dynsec.Client). Every change is made
	// there first and stored only once the broker took it, so a broker's
	// refusal changes nothing and is returned to the caller.
	Mirror Mirror
	Now    func() time.Time
}

// Mirror is an external broker's copy of the gateways' identities.
type Mirror interface {
	// Put creates gateway tenant/id's login, or changes it to groups;
	// password, when not empty, becomes its password.
	Put(ctx context.Context, tenant, id string, groups []string, password string) error
	// Delete deletes the gateway's login and disconnects it at once; a
	// login missing already is no error.
	Delete(ctx context.Context, tenant, id string) error
}

// Identities are the provisioned gateways' identities.
type Identities struct {
	cfg Config

	// write serialises changes (a read, a store write, then the map), so
	// that two changes to one gateway do not undo each other.
	write sync.Mutex

	mu sync.RWMutex
	// devices by username "tenant/id"; guarded by mu. A Device is
	// replaced on every change, never changed in place, so that readers
	// may hold one without the lock.
	devices map[string]*Device
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

// Mirrored reports whether an external broker keeps a copy of the
// identities (Config.Mirror), which disconnects a deprovisioned gateway.
func (c *Identities) Mirrored() bool { return c.cfg.Mirror != nil }

// Len is how many gateways are provisioned.
func (c *Identities) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.devices)
}

// Assignment is what the cloud assigns a gateway: its groups (whose
// command topics it may read) and its labels. Commands, rollouts and
// credentials are targeted by these, never by what a gateway's birth says
// of itself. A nil field leaves what the gateway has (none for a new one).
type Assignment struct {
	Groups []string
	Labels map[string]string
}

// Limits on labels, so that every label can be written in a selector.
const (
	MaxLabels      = 64
	maxLabelLength = 63
)

// check validates a: groups as topic levels, labels as selector keys and
// values ([A-Za-z0-9._/-], a key of 1-63, a value of 0-63 characters).
func (a Assignment) check() error {
	for i, g := range a.Groups {
		if err := topic.CheckID("group", g); err != nil {
			return errdefs.Invalid(fmt.Sprintf("groups[%d]", i), "%v", err)
		}
	}
	if len(a.Labels) > MaxLabels {
		return errdefs.Invalid("labels", "has %d labels; at most %d", len(a.Labels), MaxLabels)
	}
	for k, v := range a.Labels {
		if k == "" || !labelText(k) {
			return errdefs.Invalid("labels", "key %q: write 1-%d letters, digits, '.', '_', '/' or '-'", k, maxLabelLength)
		}
		if !labelText(v) && v != "" {
			return errdefs.Invalid("labels."+k, "value %q: write up to %d letters, digits, '.', '_', '/' or '-'", v, maxLabelLength)
		}
	}
	return nil
}

func labelText(s string) bool {
	if len(s) > maxLabelLength {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || strings.ContainsRune("._/-", r)) {
			return false
		}
	}
	return true
}

func checkGateway(tenant, id string) error {
	if err := topic.CheckID("tenant", tenant); err != nil {
		return errdefs.Invalid("tenant", "%v", err)
	}
	if err := topic.CheckGatewayID(id); err != nil {
		return errdefs.Invalid("id", "%v", err)
	}
	return nil
}

// Provision creates a gateway's identity, or gives an existing one a new
// password (the old one stops working at once), with a; it returns the new
// password.
func (c *Identities) Provision(ctx context.Context, tenant, id string, a Assignment) (string, error) {
	return c.ProvisionWith(ctx, tenant, id, a, "")
}

// ProvisionWith is Provision with a chosen password ("" for a random one).
func (c *Identities) ProvisionWith(ctx context.Context, tenant, id string, a Assignment, password string) (string, error) {
	if err := checkGateway(tenant, id); err != nil {
		return "", err
	}
	if err := a.check(); err != nil {
		return "", err
	}
	if password == "" {
		password = NewPassword()
	}
	c.write.Lock()
	defer c.write.Unlock()
	d := &Device{Tenant: tenant, ID: id, Hash: hashPassword(password), CreatedAt: c.cfg.Now()}
	if old := c.device(tenant, id); old != nil {
		d.Groups, d.Labels = old.Groups, old.Labels
	}
	assign(d, a)
	if err := c.mirrorPut(ctx, d, password); err != nil {
		return "", err
	}
	if err := c.put(ctx, d); err != nil {
		return "", c.undo(ctx, c.device(tenant, id), d, true, err)
	}
	return password, nil
}

// mirrorPut makes d, with password when not empty, the broker's.
func (c *Identities) mirrorPut(ctx context.Context, d *Device, password string) error {
	if c.cfg.Mirror == nil {
		return nil
	}
	if err := c.cfg.Mirror.Put(ctx, d.Tenant, d.ID, d.Groups, password); err != nil {
		return fmt.Errorf("identity: gateway %s/%s on the broker (nothing changed in the cloud; try again): %w", d.Tenant, d.ID, err)
	}
	return nil
}

// undo takes back on the broker a change to d that the store refused
// (storeErr): a new gateway is deleted there, an existing one's groups
// restored from old. A new password cannot be taken back: the error says
// to provision again. What undo cannot do, the next start's
// reconciliation of the broker with the store does.
func (c *Identities) undo(ctx context.Context, old, d *Device, newPassword bool, storeErr error) error {
	if c.cfg.Mirror == nil {
		return storeErr
	}
	var err error
	switch {
	case old == nil:
		err = c.cfg.Mirror.Delete(ctx, d.Tenant, d.ID)
	default:
		err = c.cfg.Mirror.Put(ctx, d.Tenant, d.ID, old.Groups, "")
	}
	if err != nil {
		return fmt.Errorf("%w; the broker has the change and undoing it failed (%v): it is undone at cloud-sim's next start", storeErr, err)
	}
	if newPassword && old != nil {
		return fmt.Errorf("%w; the broker already has the new password, which was not shown: provision %s/%s again", storeErr, d.Tenant, d.ID)
	}
	return fmt.Errorf("%w (undone on the broker too)", storeErr)
}

// assign sets on d what a sets, as copies.
func assign(d *Device, a Assignment) {
	if a.Groups != nil {
		d.Groups = slices.Clone(a.Groups)
	}
	if a.Labels != nil {
		d.Labels = maps.Clone(a.Labels)
	}
}

// Assign changes a provisioned gateway's groups and labels: change gets
// a copy of them to modify. Its password stays.
func (c *Identities) Assign(ctx context.Context, tenant, id string, change func(*Assignment)) (*Device, error) {
	c.write.Lock()
	defer c.write.Unlock()
	old := c.device(tenant, id)
	if old == nil {
		return nil, NotProvisioned(tenant, id)
	}
	a := Assignment{Groups: slices.Clone(old.Groups), Labels: maps.Clone(old.Labels)}
	change(&a)
	if err := a.check(); err != nil {
		return nil, err
	}
	d := *old // devices are replaced, never changed in place
	d.Groups, d.Labels = a.Groups, a.Labels
	groups := !slices.Equal(old.Groups, d.Groups)
	if groups {
		if err := c.mirrorPut(ctx, &d, ""); err != nil {
			return nil, err
		}
	}
	if err := c.put(ctx, &d); err != nil {
		if groups {
			err = c.undo(ctx, old, &d, false, err)
		}
		return nil, err
	}
	return &d, nil
}

// Deprovision deletes a gateway's identity: it can no longer log in.
func (c *Identities) Deprovision(ctx context.Context, tenant, id string) error {
	c.write.Lock()
	defer c.write.Unlock()
	if c.device(tenant, id) == nil {
		return NotProvisioned(tenant, id)
	}
	if c.cfg.Mirror != nil {
		if err := c.cfg.Mirror.Delete(ctx, tenant, id); err != nil {
			return fmt.Errorf("identity: deprovision %s/%s on the broker (nothing changed in the cloud; try again): %w", tenant, id, err)
		}
	}
	if err := c.cfg.Store.Delete(ctx, state.Devices, state.Key(tenant, id)); err != nil {
		if c.cfg.Mirror != nil {
			return fmt.Errorf("%w; the broker has deleted the gateway already: deprovision %s/%s again", err, tenant, id)
		}
		return err
	}
	c.mu.Lock()
	delete(c.devices, tenant+"/"+id)
	c.mu.Unlock()
	return nil
}

// NotProvisioned is the error for a gateway without an identity.
func NotProvisioned(tenant, id string) error {
	return &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound,
		Msg: fmt.Sprintf("gateway %s/%s is not provisioned (provision it with `cloud-sim provision %s/%s`)", tenant, id, tenant, id)}
}

// Device returns a copy of a gateway's identity (without its password's hash).
func (c *Identities) Device(tenant, id string) (*Device, bool) {
	d := c.device(tenant, id)
	if d == nil {
		return nil, false
	}
	out := *d
	out.Hash = ""
	out.Groups, out.Labels = slices.Clone(d.Groups), maps.Clone(d.Labels)
	return &out, true
}

// All returns a copy of every gateway's identity (without its password's
// hash), in no order.
func (c *Identities) All() []Device {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Device, 0, len(c.devices))
	for _, d := range c.devices {
		cp := *d
		cp.Hash = ""
		cp.Groups, cp.Labels = slices.Clone(d.Groups), maps.Clone(d.Labels)
		out = append(out, cp)
	}
	return out
}

// Assigned tells a gateway's groups and labels, and whether it is
// provisioned. They are shared: the caller must not change them.
func (c *Identities) Assigned(tenant, id string) ([]string, map[string]string, bool) {
	d := c.device(tenant, id)
	if d == nil {
		return nil, nil, false
	}
	return d.Groups, d.Labels, true
}

func (c *Identities) device(tenant, id string) *Device {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.devices[tenant+"/"+id]
}

// put stores d and then makes it the gateway's identity.
func (c *Identities) put(ctx context.Context, d *Device) error {
	if err := c.cfg.Store.Put(ctx, state.Devices, state.Key(d.Tenant, d.ID), d); err != nil {
		return err
	}
	c.mu.Lock()
	c.devices[d.Tenant+"/"+d.ID] = d
	c.mu.Unlock()
	return nil
}

// Gateway is one gateway ProvisionMany provisions.
type Gateway struct {
	ID string
	Assignment
}

// ProvisionMany provisions gateways sharing password in one write, for
// simulated fleets.
func (c *Identities) ProvisionMany(ctx context.Context, tenant string, gws []Gateway, password string) error {
	if err := topic.CheckID("tenant", tenant); err != nil {
		return errdefs.Invalid("tenant", "%v", err)
	}
	batch := make(map[string]any, len(gws))
	devs := make([]*Device, 0, len(gws))
	for _, g := range gws {
		if err := topic.CheckGatewayID(g.ID); err != nil {
			return errdefs.Invalid("id", "%v", err)
		}
		if err := g.check(); err != nil {
			return err
		}
		d := &Device{Tenant: tenant, ID: g.ID, Hash: hashPassword(password), CreatedAt: c.cfg.Now()}
		assign(d, g.Assignment)
		batch[state.Key(tenant, g.ID)] = d
		devs = append(devs, d)
	}
	c.write.Lock()
	defer c.write.Unlock()
	// On the broker several at once: one at a time, each a round trip or
	// two to Mosquitto's dynamic security, 300 took over 20 s under load.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(mirrorConcurrency)
	for _, d := range devs {
		g.Go(func() error { return c.mirrorPut(gctx, d, password) })
	}
	if err := g.Wait(); err != nil {
		return err // those put already are deleted at the next start
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

// mirrorConcurrency bounds the gateways ProvisionMany puts on the broker at
// once.
const mirrorConcurrency = 16

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
// restored: a session begun with username ControllerUser is a controller
// replica's, whatever its client id (--controller-id), since only the
// controller's password logs that username in; a gateway's client id is
// its username.
func (c *Identities) Identify(clientID, username string) (broker.Identity, bool) {
	if username == ControllerUser || clientID == c.cfg.ControllerID {
		return broker.Identity{Controller: true}, true
	}
	if clientID != username {
		return broker.Identity{}, false
	}
	c.mu.RLock()
	d := c.devices[clientID]
	c.mu.RUnlock()
	if d == nil {
		return broker.Identity{}, false
	}
	return broker.Identity{Tenant: d.Tenant, Gateway: d.ID, Groups: slices.Clone(d.Groups)}, true
}
