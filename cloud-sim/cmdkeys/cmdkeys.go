// Package cmdkeys keeps each tenant's command-signing keys and signs the
// commands the controller publishes (protocol/cmdsig).
//
// A tenant's first key is made on first use (the first command, or the
// first provisioning, that needs it). Private keys are encrypted at rest
// with the controller's key and stored in NATS (bucket Meta), so replicas
// sharing the store and the key sign with the same keys.
//
// Rotation without refusals: Add stages a new key (valid, listed, given to
// gateways provisioned from then on, not yet signing); once gateways trust
// it, Rotate makes it the signer, the old key staying valid; Retire then
// drops the old key. Rotate without a staged key makes a new one and signs
// with it at once.
package cmdkeys

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

// Cipher encrypts private keys at rest.
type Cipher interface {
	Encrypt([]byte) []byte
	Decrypt([]byte) ([]byte, error)
}

// Config configures Keys.
type Config struct {
	Store  *state.Store
	Cipher Cipher
	// CacheFor is how long a tenant's keys are used before they are read
	// again from the store, where another replica may have rotated them
	// (10 s when zero).
	CacheFor time.Duration
	Now      func() time.Time
}

// Keys are the tenants' command-signing keys.
type Keys struct {
	cfg Config

	mu     sync.Mutex
	cached map[string]*tenantKeys // by tenant; guarded by mu
}

type tenantKeys struct {
	keys   []Key
	signer ed25519.PrivateKey
	keyID  string
	readAt time.Time
}

// Key is a command-signing key as the API shows it (never the private key).
type Key struct {
	ID        string
	PublicKey ed25519.PublicKey
	// Signer: the controller signs with this key; the others are valid
	// until retired.
	Signer    bool
	CreatedAt time.Time
}

// New returns the keys kept in cfg.Store.
func New(cfg Config) (*Keys, error) {
	if cfg.Store == nil || cfg.Cipher == nil {
		return nil, errors.New("cmdkeys: Store and Cipher are required")
	}
	if cfg.CacheFor <= 0 {
		cfg.CacheFor = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Keys{cfg: cfg, cached: map[string]*tenantKeys{}}, nil
}

func storeKey(tenant string) string { return state.Key("command-signing-keys", tenant) }

// List returns a tenant's keys, the signer first, making the first key if
// it has none.
func (k *Keys) List(ctx context.Context, tenant string) ([]Key, error) {
	t, err := k.tenant(ctx, tenant)
	if err != nil {
		return nil, err
	}
	return slices.Clone(t.keys), nil
}

// Public returns a tenant's valid keys as gateways are given them.
func (k *Keys) Public(ctx context.Context, tenant string) ([]cmdsig.PublicKey, error) {
	keys, err := k.List(ctx, tenant)
	if err != nil {
		return nil, err
	}
	out := make([]cmdsig.PublicKey, len(keys))
	for i, key := range keys {
		out[i] = cmdsig.Public(key.PublicKey)
	}
	return out, nil
}

// Sign signs a command of tenant published on topic with contentType and
// payload; it returns the values of the user properties cmdsig.PropKeyID
// and cmdsig.PropSignature.
func (k *Keys) Sign(ctx context.Context, tenant, topic, contentType string, payload []byte) (keyID, signature string, err error) {
	t, err := k.tenant(ctx, tenant)
	if err != nil {
		return "", "", err
	}
	return cmdsig.Sign(t.signer, topic, contentType, payload)
}

// Add stages a new key: valid and listed, not signing until Rotate.
func (k *Keys) Add(ctx context.Context, tenant string) ([]Key, error) {
	return k.modify(ctx, tenant, func(rec *state.SigningKeys) error {
		key, err := k.generate()
		key.Signer = len(rec.Keys) == 0
		rec.Keys = append(rec.Keys, key)
		return err
	})
}

// Rotate makes the newest staged key (Add) the tenant's signer, or a new
// key when none is staged; the previous signer stays valid until retired.
func (k *Keys) Rotate(ctx context.Context, tenant string) ([]Key, error) {
	return k.modify(ctx, tenant, func(rec *state.SigningKeys) error {
		staged := -1
		for i, key := range rec.Keys {
			if key.Signer {
				staged = -1 // only keys made after the signer are staged
				continue
			}
			staged = i
		}
		if staged < 0 {
			key, err := k.generate()
			if err != nil {
				return err
			}
			rec.Keys, staged = append(rec.Keys, key), len(rec.Keys)
		}
		for i := range rec.Keys {
			rec.Keys[i].Signer = i == staged
		}
		return nil
	})
}

// Retire drops a key that is not the signer: gateways given the keys
// afterwards no longer trust it.
func (k *Keys) Retire(ctx context.Context, tenant, id string) ([]Key, error) {
	return k.modify(ctx, tenant, func(rec *state.SigningKeys) error {
		i := slices.IndexFunc(rec.Keys, func(key state.SigningKey) bool { return key.ID == id })
		switch {
		case i < 0:
			return fmt.Errorf("%w: tenant %s has no command-signing key %q", errdefs.ErrNotFound, tenant, id)
		case rec.Keys[i].Signer:
			return errdefs.Invalid("id", "%s is the signing key of tenant %s; rotate first (a new key becomes the signer), then retire it", id, tenant)
		}
		rec.Keys = slices.Delete(rec.Keys, i, i+1)
		return nil
	})
}

// tenant returns a tenant's keys from the cache, reading (and on first use
// making) them when the cache is older than CacheFor.
func (k *Keys) tenant(ctx context.Context, tenant string) (*tenantKeys, error) {
	k.mu.Lock()
	t := k.cached[tenant]
	k.mu.Unlock()
	if t != nil && k.cfg.Now().Sub(t.readAt) < k.cfg.CacheFor {
		return t, nil
	}
	var rec state.SigningKeys
	err := k.cfg.Store.Get(ctx, state.Meta, storeKey(tenant), &rec)
	if errors.Is(err, state.ErrNotFound) || err == nil && len(rec.Keys) == 0 {
		_, err = k.modify(ctx, tenant, func(rec *state.SigningKeys) error {
			if len(rec.Keys) > 0 {
				return nil // another replica made it first
			}
			key, err := k.generate()
			rec.Keys = []state.SigningKey{key}
			return err
		})
		k.mu.Lock()
		t = k.cached[tenant]
		k.mu.Unlock()
		return t, err
	}
	if err != nil {
		return nil, err
	}
	return k.remember(tenant, &rec)
}

// modify changes a tenant's stored keys and caches the result.
func (k *Keys) modify(ctx context.Context, tenant string, fn func(*state.SigningKeys) error) ([]Key, error) {
	var rec state.SigningKeys
	err := k.cfg.Store.Modify(ctx, state.Meta, storeKey(tenant), &rec, func(found bool) error {
		if !found {
			rec = state.SigningKeys{}
		}
		rec.Tenant = tenant
		if err := fn(&rec); err != nil {
			return err
		}
		if len(rec.Keys) > 0 && !slices.ContainsFunc(rec.Keys, func(key state.SigningKey) bool { return key.Signer }) {
			rec.Keys[len(rec.Keys)-1].Signer = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	t, err := k.remember(tenant, &rec)
	if err != nil {
		return nil, err
	}
	return slices.Clone(t.keys), nil
}

func (k *Keys) generate() (state.SigningKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return state.SigningKey{}, fmt.Errorf("cmdkeys: generate: %w", err)
	}
	return state.SigningKey{ID: cmdsig.KeyID(pub), PublicKey: pub, PrivateKey: k.cfg.Cipher.Encrypt(priv.Seed()),
		Signer: true, CreatedAt: k.cfg.Now().UTC()}, nil
}

// remember decrypts the signer of rec and caches rec.
func (k *Keys) remember(tenant string, rec *state.SigningKeys) (*tenantKeys, error) {
	t := &tenantKeys{readAt: k.cfg.Now()}
	for _, s := range rec.Keys {
		key := Key{ID: s.ID, PublicKey: ed25519.PublicKey(s.PublicKey), Signer: s.Signer, CreatedAt: s.CreatedAt}
		if !s.Signer {
			t.keys = append(t.keys, key)
			continue
		}
		seed, err := k.cfg.Cipher.Decrypt(s.PrivateKey)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("cmdkeys: the signing key %s of tenant %s does not decrypt with this controller's secrets key (replicas must share --secrets-key): %v", s.ID, tenant, err)
		}
		t.signer, t.keyID = ed25519.NewKeyFromSeed(seed), s.ID
		t.keys = append([]Key{key}, t.keys...)
	}
	if t.signer == nil {
		return nil, fmt.Errorf("cmdkeys: tenant %s has no signing key", tenant)
	}
	k.mu.Lock()
	k.cached[tenant] = t
	k.mu.Unlock()
	return t, nil
}
