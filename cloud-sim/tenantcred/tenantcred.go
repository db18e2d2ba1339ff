// Package tenantcred keeps each tenant's registry credentials (encrypted
// at rest, never shown), checks an image and credential against the
// registry from the cloud, seals credentials to a gateway's key, and
// issues short-lived ECR tokens from a tenant's AWS keys.
package tenantcred

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/credential/awsecr"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Config configures Credentials.
type Config struct {
	Store *state.Store
	// Keys encrypts credentials at rest.
	Keys    *credential.Keys
	Changes *changes.Hub
	// RegistryCheck decides where the cloud's registry check may connect:
	// public addresses and its allow-list (public addresses only when
	// nil). It is checked on every connection, redirects included.
	RegistryCheck *egress.Policy
	Logger        *slog.Logger
	Now           func() time.Time
}

// Credentials are the tenants' registry credentials.
type Credentials struct {
	cfg Config
	log *slog.Logger
	hub *changes.Hub

	mu    sync.Mutex
	creds map[string]*Credential // by state.Key(tenant, scope); guarded by mu, as are the records' LastCheck and token fields
}

// New loads the credentials from the store.
func New(ctx context.Context, cfg Config) (*Credentials, error) {
	if cfg.Store == nil || cfg.Keys == nil {
		return nil, errors.New("tenantcred: Store and Keys are required")
	}
	if cfg.Changes == nil {
		cfg.Changes = new(changes.Hub)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Credentials{cfg: cfg, log: cfg.Logger, hub: cfg.Changes, creds: map[string]*Credential{}}
	err := cfg.Store.Each(ctx, state.Credentials, func(k string, raw []byte) error {
		var s state.Credential
		if err := json.Unmarshal(raw, &s); err != nil {
			return err
		}
		c.creds[k] = restore(&s)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tenantcred: load: %w", err)
	}
	if err := c.upgrade(ctx); err != nil {
		return nil, fmt.Errorf("tenantcred: upgrade fingerprints: %w", err)
	}
	return c, nil
}

// upgrade stamps the credentials stored before fingerprints were keyed
// (their record showed an unsalted SHA-256 of the secret) and their
// issued tokens, and stores them again. Gateways holding them report the
// old fingerprint until they get the credential again.
func (c *Credentials) upgrade(ctx context.Context) error {
	for key, rec := range c.creds {
		cr, err := c.open(rec.Secret)
		if err != nil || cr.GetFingerprint() != "" {
			continue // one that does not open is reported when used
		}
		c.Stamp(rec.Tenant, cr)
		raw, err := proto.Marshal(cr)
		if err != nil {
			return err
		}
		rec.Secret, rec.Fingerprint = c.cfg.Keys.Encrypt(raw), cr.GetFingerprint()
		if tok, err := c.open(rec.Token); rec.Token != nil && err == nil {
			c.Stamp(rec.Tenant, tok)
			if raw, err = proto.Marshal(tok); err != nil {
				return err
			}
			rec.Token, rec.TokenFingerprint = c.cfg.Keys.Encrypt(raw), tok.GetFingerprint()
		}
		if err := c.cfg.Store.Put(ctx, state.Credentials, key, rec.stored()); err != nil {
			return err
		}
	}
	return nil
}

// Len is how many credentials are stored.
func (c *Credentials) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.creds)
}

// Credential is a tenant's registry credential as the controller keeps it.
// Its secret is encrypted at rest and never leaves through the API: only
// CredentialView does.
type Credential struct {
	CredentialView
	Secret []byte
	// Token is the ECR token last issued from an ecr credential with
	// IssueTokens (an ecrToken credential, encrypted).
	Token []byte
}

// CredentialView describes a credential without its secret.
type CredentialView struct {
	Tenant      string
	Registry    string
	Kind        string
	Username    string
	Fingerprint string
	// IssueTokens (ecr): gateways get short-lived ecrToken credentials
	// issued by the controller, not the AWS keys; re-issued before expiry.
	IssueTokens      bool
	TokenFingerprint string
	TokenExpiresAt   time.Time
	TokenRefreshAt   time.Time
	ExpiresAt        time.Time
	HasCACertificate bool
	HasClientCert    bool
	RequireTLS       bool
	Insecure         bool
	UpdatedAt        time.Time
	LastCheck        *CheckResult
}

// CheckResult is a check-registry made from the cloud.
type CheckResult struct {
	Image   string
	OK      bool
	Code    string
	Message string
	// Check is the RegistryCheck as protojson.
	Check     map[string]any
	Registry  string // the credential used, if any
	CheckedAt time.Time
}

// Options adjusts Set.
type Options struct {
	IssueTokens bool
	// CheckImage, when set, is checked against the registry with the new
	// credential; a failure refuses the credential.
	CheckImage string
}

// Validate checks a credential and returns its registry scope; field
// names it in errors.
func Validate(field string, cr *fleetv1.Credential) (string, error) {
	k, err := credential.Validate(field, cr)
	if err != nil {
		return "", err
	}
	return k.String(), nil
}

// Scope is a credential's registry scope.
func Scope(cr *fleetv1.Credential) (string, error) {
	k, err := credential.ParseRegistry(cr.GetRegistry())
	if err != nil {
		return "", err
	}
	return k.String(), nil
}

// Stamp sets cr's fingerprint: a MAC of its secret keyed for tenant with
// the controller's key (credential.Keys.Fingerprint), which gateways store
// with the credential and report in their births, so that the controller
// tells a gateway holding the current credential from a stale one. Nobody
// without the key can test a guessed password against it.
func (c *Credentials) Stamp(tenant string, cr *fleetv1.Credential) {
	cr.Fingerprint = c.cfg.Keys.Fingerprint(tenant, cr)
}

// Set validates and stores a tenant's credential (replacing one
// of the same registry scope). Gateways get it sealed with their next
// deploy of an image it covers, or at once through a set-credentials Send.
func (c *Credentials) Set(ctx context.Context, tenant string, cr *fleetv1.Credential, opts Options) (*CredentialView, error) {
	scope, err := Validate("credential", cr)
	if err != nil {
		return nil, err
	}
	if opts.IssueTokens && cr.GetEcr() == nil {
		return nil, errdefs.Invalid("issueTokens", "applies to ecr credentials only (the controller exchanges the AWS keys for ECR tokens)")
	}
	c.Stamp(tenant, cr)
	raw, err := proto.Marshal(cr)
	if err != nil {
		return nil, err
	}
	rec := &Credential{CredentialView: CredentialView{
		Tenant: tenant, Registry: scope, Kind: credential.KindOf(cr), Username: cr.GetBasic().GetUsername(), Fingerprint: cr.GetFingerprint(),
		IssueTokens: opts.IssueTokens, HasCACertificate: cr.GetCaCertificate() != "", HasClientCert: cr.GetClientCertificate() != "",
		RequireTLS: cr.GetRequireTls(), Insecure: cr.GetInsecure(), UpdatedAt: c.cfg.Now(),
	}, Secret: c.cfg.Keys.Encrypt(raw)}
	if t := cr.GetEcrToken().GetExpiresAt(); t != nil {
		rec.ExpiresAt = t.AsTime()
	}
	if opts.IssueTokens {
		if err := c.issueToken(ctx, rec, cr); err != nil {
			return nil, fmt.Errorf("issue an ECR token with the credential: %w", err)
		}
	}
	if opts.CheckImage != "" {
		res := c.checkWith(ctx, c.deliverable(rec, cr), opts.CheckImage)
		rec.LastCheck = res
		if !res.OK {
			return nil, &RegistryError{Err: &errdefs.FieldError{Field: "checkImage", Kind: codeErr(res.Code),
				Msg: fmt.Sprintf("the registry refused the credential for %s: %s; nothing was stored", opts.CheckImage, res.Message)}}
		}
	}
	if err := c.cfg.Store.Put(ctx, state.Credentials, state.Key(tenant, scope), rec.stored()); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.creds[state.Key(tenant, scope)] = rec
	c.mu.Unlock()
	c.hub.Publish(changes.Change{Kind: "credential.set", At: rec.UpdatedAt, Tenant: tenant, Message: scope})
	v := rec.CredentialView
	return &v, nil
}

// List lists a tenant's credentials ("" lists all), without credential.
func (c *Credentials) List(tenant string) []CredentialView {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []CredentialView
	for _, cr := range c.creds {
		if tenant == "" || cr.Tenant == tenant {
			out = append(out, cr.CredentialView)
		}
	}
	return out
}

// Delete forgets a tenant's credential; gateways keep their copy
// until sent a delete-credentials.
func (c *Credentials) Delete(ctx context.Context, tenant, registry string) error {
	k, err := credential.ParseRegistry(registry)
	if err != nil {
		return errdefs.Invalid("registry", "%v", err)
	}
	key := state.Key(tenant, k.String())
	c.mu.Lock()
	_, ok := c.creds[key]
	c.mu.Unlock()
	if !ok {
		return &errdefs.FieldError{Field: "registry", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("tenant %s has no credential for %s", tenant, k)}
	}
	if err := c.cfg.Store.Delete(ctx, state.Credentials, key); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.creds, key)
	c.mu.Unlock()
	c.hub.Publish(changes.Change{Kind: "credential.deleted", At: c.cfg.Now(), Tenant: tenant, Message: k.String()})
	return nil
}

// Push is the set-credentials that sends the tenant's stored credential
// for registry (or the ECR token issued from it) to gateways.
func (c *Credentials) Push(tenant, registry string) (*fleetv1.Credential, error) {
	k, err := credential.ParseRegistry(registry)
	if err != nil {
		return nil, errdefs.Invalid("registry", "%v", err)
	}
	c.mu.Lock()
	rec := c.creds[state.Key(tenant, k.String())]
	c.mu.Unlock()
	if rec == nil {
		return nil, &errdefs.FieldError{Field: "registry", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("tenant %s has no credential for %s; set it first", tenant, k)}
	}
	cr, err := c.open(rec.Secret)
	if err != nil {
		return nil, err
	}
	return c.deliverable(rec, cr), nil
}

// credentialFor finds the tenant's credential for image (longest prefix
// wins, as on the gateway) and opens its secret; nil when there is none.
func (c *Credentials) credentialFor(tenant, image string) (*Credential, *fleetv1.Credential, error) {
	ik, err := credential.ImageKey(image)
	if err != nil {
		return nil, nil, errdefs.Invalid("image", "%v", err)
	}
	c.mu.Lock()
	var recs []*Credential
	var scopes []credential.Key
	for _, cr := range c.creds {
		if cr.Tenant != tenant {
			continue
		}
		if k, err := credential.ParseRegistry(cr.Registry); err == nil {
			recs, scopes = append(recs, cr), append(scopes, k)
		}
	}
	c.mu.Unlock()
	i := credential.Select(scopes, ik)
	if i < 0 {
		return nil, nil, nil
	}
	cr, err := c.open(recs[i].Secret)
	if err != nil {
		return nil, nil, err
	}
	return recs[i], cr, nil
}

func (c *Credentials) open(enc []byte) (*fleetv1.Credential, error) {
	raw, err := c.cfg.Keys.Decrypt(enc)
	if err != nil {
		return nil, fmt.Errorf("credential does not decrypt with the controller's key (--secrets-key): %w", err)
	}
	cr := new(fleetv1.Credential)
	return cr, proto.Unmarshal(raw, cr)
}

// deliverable is what gateways get for rec: the credential itself, or the
// ECR token issued from it.
func (c *Credentials) deliverable(rec *Credential, cr *fleetv1.Credential) *fleetv1.Credential {
	if rec.IssueTokens && rec.Token != nil {
		if tok, err := c.open(rec.Token); err == nil {
			return tok
		}
	}
	return cr
}

// Prepare finds the credential a deploy of image needs and, unless skip,
// checks image and credential against the registry from the cloud. A
// registry the cloud cannot reach (one inside a site's network) gives a
// warning, not a refusal; a refusal is a *RegistryError.
func (c *Credentials) Prepare(ctx context.Context, tenant, image, field string, skip bool) (*fleetv1.Credential, string, error) {
	cred, _, warn, err := c.PrepareChecked(ctx, tenant, image, field, skip)
	return cred, warn, err
}

// PrepareChecked is Prepare that also returns the registry check's
// result (nil when skipped).
func (c *Credentials) PrepareChecked(ctx context.Context, tenant, image, field string, skip bool) (*fleetv1.Credential, *CheckResult, string, error) {
	rec, cr, err := c.credentialFor(tenant, image)
	if err != nil {
		return nil, nil, "", err
	}
	var send *fleetv1.Credential
	if rec != nil {
		send = c.deliverable(rec, cr)
	}
	if skip {
		return send, nil, "", nil
	}
	res := c.checkWith(ctx, send, image)
	if rec != nil {
		c.mu.Lock()
		rec.LastCheck = res
		c.mu.Unlock()
	}
	switch {
	case res.OK:
		return send, res, "", nil
	case res.Code == fleetv1.Reply_REGISTRY_UNREACHABLE.String():
		return send, res, fmt.Sprintf("registry check skipped: the cloud cannot reach the registry of %s (%s); gateways may", image, res.Message), nil
	}
	return nil, res, "", &RegistryError{Err: &errdefs.FieldError{Field: field, Kind: codeErr(res.Code),
		Msg: fmt.Sprintf("checked from the cloud before sending: %s; no gateway was touched (fix the image or the tenant's credential, or skip the check)", res.Message)}}
}

// Check checks image against its registry from the cloud with the
// tenant's credential for it, as check-registry does on a gateway.
func (c *Credentials) Check(ctx context.Context, tenant, image string) (*CheckResult, error) {
	rec, cr, err := c.credentialFor(tenant, image)
	if err != nil {
		return nil, err
	}
	var send *fleetv1.Credential
	if rec != nil {
		send = c.deliverable(rec, cr)
	}
	res := c.checkWith(ctx, send, image)
	if rec != nil {
		c.mu.Lock()
		rec.LastCheck = res
		c.mu.Unlock()
	}
	return res, nil
}

// checkWith checks image with cred (nil: anonymous) and describes the
// outcome.
func (c *Credentials) checkWith(ctx context.Context, cred *fleetv1.Credential, image string) *CheckResult {
	res := &CheckResult{Image: image, CheckedAt: c.cfg.Now()}
	if cred != nil {
		res.Registry = cred.GetRegistry()
	}
	check, err := awsecr.CheckImage(ctx, c.cfg.RegistryCheck.DialContext, cred, image)
	if check != nil {
		if raw, jerr := protojson.Marshal(check); jerr == nil {
			_ = json.Unmarshal(raw, &res.Check)
		}
	}
	res.OK = err == nil
	if err != nil {
		res.Code, res.Message = errdefs.Code(err).String(), err.Error()
	}
	return res
}

// RegistryError is a refusal by the registry, checked from the cloud: no
// such image, or a credential it rejects. It wraps the error with the
// reply code; the API answers it with 422, not as a missing resource.
type RegistryError struct{ Err error }

func (e *RegistryError) Error() string { return e.Err.Error() }
func (e *RegistryError) Unwrap() error { return e.Err }

// codeErr is the error kind of a reply code's name.
func codeErr(code string) error {
	for _, e := range []error{errdefs.ErrUnauthenticated, errdefs.ErrPermissionDenied, errdefs.ErrNotFound, errdefs.ErrTLS,
		errdefs.ErrRegistryUnreachable, errdefs.ErrInvalidArgument} {
		if errdefs.Code(e).String() == code {
			return e
		}
	}
	return errors.New(code)
}

// Seal builds a set-credentials of creds sealed to a gateway's public key.
func Seal(publicKey string, creds []*fleetv1.Credential) (*fleetv1.Command, error) {
	if publicKey == "" {
		return nil, errors.New("its birth has no publicKey to seal credentials to (agent too old?); credentials not sent")
	}
	raw, err := protojson.Marshal(&fleetv1.SetCredentials{Credentials: creds})
	if err != nil {
		return nil, err
	}
	sealed, err := credential.Seal(publicKey, raw)
	if err != nil {
		return nil, err
	}
	return &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: sealed}}}, nil
}

// Describe describes credentials as a gateway's birth does (no secret).
func Describe(list []*fleetv1.Credential) []inventory.Registry {
	var out []inventory.Registry
	for _, cr := range list {
		scope, _ := Scope(cr)
		r := inventory.Registry{Registry: scope, Kind: credential.KindOf(cr), Username: cr.GetBasic().GetUsername(), Fingerprint: cr.GetFingerprint()}
		if t := cr.GetEcrToken().GetExpiresAt(); t != nil {
			r.ExpiresAt = t.AsTime()
		}
		out = append(out, r)
	}
	return out
}

// Holds reports whether a gateway holding held (its birth's registries,
// or a set-credentials it answered since) has cred, stamped by the
// controller, with the same fingerprint.
func Holds(held []inventory.Registry, cred *fleetv1.Credential) bool {
	scope, err := Scope(cred)
	fp := cred.GetFingerprint()
	if err != nil || fp == "" {
		return false
	}
	return slices.ContainsFunc(held, func(r inventory.Registry) bool { return r.Registry == scope && r.Fingerprint == fp })
}
