package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Credential is a tenant's registry credential as the controller keeps it.
// Its secret is encrypted at rest and never leaves through the API: only
// CredentialView does.
type Credential struct {
	CredentialView
	Secret []byte `json:"secret"`
	// Token is the ECR token last issued from an ecr credential with
	// IssueTokens (an ecrToken credential, encrypted).
	Token []byte `json:"token,omitempty"`
}

// CredentialView describes a credential without its secret.
type CredentialView struct {
	Tenant      string `json:"tenant"`
	Registry    string `json:"registry"`
	Kind        string `json:"kind"`
	Username    string `json:"username,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	// IssueTokens (ecr): gateways get short-lived ecrToken credentials
	// issued by the controller, not the AWS keys; re-issued before expiry.
	IssueTokens      bool         `json:"issueTokens,omitempty"`
	TokenFingerprint string       `json:"tokenFingerprint,omitempty"`
	TokenExpiresAt   time.Time    `json:"tokenExpiresAt,omitzero"`
	TokenRefreshAt   time.Time    `json:"tokenRefreshAt,omitzero"`
	ExpiresAt        time.Time    `json:"expiresAt,omitzero"`
	HasCACertificate bool         `json:"hasCaCertificate,omitempty"`
	HasClientCert    bool         `json:"hasClientCertificate,omitempty"`
	RequireTLS       bool         `json:"requireTls,omitempty"`
	UpdatedAt        time.Time    `json:"updatedAt"`
	LastCheck        *CheckResult `json:"lastCheck,omitempty"`
}

// CheckResult is a check-registry made from the cloud.
type CheckResult struct {
	Image   string `json:"image"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Check is the RegistryCheck as protojson.
	Check     map[string]any `json:"check,omitempty"`
	Registry  string         `json:"registry,omitempty"` // the credential used, if any
	CheckedAt time.Time      `json:"checkedAt"`
}

// CredentialOptions adjusts SetCredential.
type CredentialOptions struct {
	IssueTokens bool
	// CheckImage, when set, is checked against the registry with the new
	// credential; a failure refuses the credential.
	CheckImage string
}

func validateCredential(field string, cr *fleetv1.Credential) (string, error) {
	k, err := credential.Validate(field, cr)
	if err != nil {
		return "", err
	}
	return k.String(), nil
}

func credentialScope(cr *fleetv1.Credential) (string, error) {
	k, err := credential.ParseRegistry(cr.GetRegistry())
	if err != nil {
		return "", err
	}
	return k.String(), nil
}

func fingerprint(cr *fleetv1.Credential) string { return credential.Fingerprint(cr) }

// SetCredential validates and stores a tenant's credential (replacing one
// of the same registry scope). Gateways get it sealed with their next
// deploy of an image it covers, or at once through a set-credentials Send.
func (c *Controller) SetCredential(ctx context.Context, tenant string, cr *fleetv1.Credential, opts CredentialOptions) (*CredentialView, error) {
	scope, err := validateCredential("credential", cr)
	if err != nil {
		return nil, err
	}
	if opts.IssueTokens && cr.GetEcr() == nil {
		return nil, errdefs.Invalid("issueTokens", "applies to ecr credentials only (the controller exchanges the AWS keys for ECR tokens)")
	}
	raw, err := proto.Marshal(cr)
	if err != nil {
		return nil, err
	}
	rec := &Credential{CredentialView: CredentialView{
		Tenant: tenant, Registry: scope, Kind: credential.KindOf(cr), Username: cr.GetBasic().GetUsername(), Fingerprint: fingerprint(cr),
		IssueTokens: opts.IssueTokens, HasCACertificate: cr.GetCaCertificate() != "", HasClientCert: cr.GetClientCertificate() != "",
		RequireTLS: cr.GetRequireTls(), UpdatedAt: c.cfg.Now(),
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
			return nil, &errdefs.FieldError{Field: "checkImage", Kind: codeErr(res.Code),
				Msg: fmt.Sprintf("the registry refused the credential for %s: %s; nothing was stored", opts.CheckImage, res.Message)}
		}
	}
	if err := c.store.Put(ctx, state.Credentials, state.Key(tenant, scope), rec); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.creds[state.Key(tenant, scope)] = rec
	c.mu.Unlock()
	c.hub.publish(Change{Kind: "credential.set", At: rec.UpdatedAt, Tenant: tenant, Message: scope})
	v := rec.CredentialView
	return &v, nil
}

// Credentials lists a tenant's credentials ("" lists all), without secrets.
func (c *Controller) Credentials(tenant string) []CredentialView {
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

// DeleteCredential forgets a tenant's credential; gateways keep their copy
// until sent a delete-credentials.
func (c *Controller) DeleteCredential(ctx context.Context, tenant, registry string) error {
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
	if err := c.store.Delete(ctx, state.Credentials, key); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.creds, key)
	c.mu.Unlock()
	c.hub.publish(Change{Kind: "credential.deleted", At: c.cfg.Now(), Tenant: tenant, Message: k.String()})
	return nil
}

// PushCredential sends the tenant's stored credential for registry (or
// the ECR token issued from it) to the target gateways, sealed to each.
func (c *Controller) PushCredential(ctx context.Context, t Target, registry string) (*BatchView, error) {
	k, err := credential.ParseRegistry(registry)
	if err != nil {
		return nil, errdefs.Invalid("registry", "%v", err)
	}
	c.mu.Lock()
	rec := c.creds[state.Key(t.Tenant, k.String())]
	c.mu.Unlock()
	if rec == nil {
		return nil, &errdefs.FieldError{Field: "registry", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("tenant %s has no credential for %s; set it first", t.Tenant, k)}
	}
	cr, err := c.open(rec.Secret)
	if err != nil {
		return nil, err
	}
	set := &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{
		Credentials: []*fleetv1.Credential{c.deliverable(rec, cr)}}}}
	return c.Send(ctx, t, set, SendOptions{})
}

// credentialFor finds the tenant's credential for image (longest prefix
// wins, as on the gateway) and opens its secret; nil when there is none.
func (c *Controller) credentialFor(tenant, image string) (*Credential, *fleetv1.Credential, error) {
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

func (c *Controller) open(enc []byte) (*fleetv1.Credential, error) {
	raw, err := c.cfg.Keys.Decrypt(enc)
	if err != nil {
		return nil, fmt.Errorf("credential does not decrypt with the controller's key (--secrets-key): %w", err)
	}
	cr := new(fleetv1.Credential)
	return cr, proto.Unmarshal(raw, cr)
}

// deliverable is what gateways get for rec: the credential itself, or the
// ECR token issued from it.
func (c *Controller) deliverable(rec *Credential, cr *fleetv1.Credential) *fleetv1.Credential {
	if rec.IssueTokens && rec.Token != nil {
		if tok, err := c.open(rec.Token); err == nil {
			return tok
		}
	}
	return cr
}

// prepareImage finds the credential a deploy of image needs and, unless
// skip, checks image and credential against the registry from the cloud.
// A registry the cloud cannot reach (one inside a site's network) gives a
// warning, not a refusal.
func (c *Controller) prepareImage(ctx context.Context, tenant, image string, skip bool) (*fleetv1.Credential, string, error) {
	rec, cr, err := c.credentialFor(tenant, image)
	if err != nil {
		return nil, "", err
	}
	var send *fleetv1.Credential
	if rec != nil {
		send = c.deliverable(rec, cr)
	}
	if skip {
		return send, "", nil
	}
	res := c.checkWith(ctx, send, image)
	if rec != nil {
		c.mu.Lock()
		rec.LastCheck = res
		c.mu.Unlock()
	}
	switch {
	case res.OK:
		return send, "", nil
	case res.Code == fleetv1.Reply_REGISTRY_UNREACHABLE.String():
		return send, fmt.Sprintf("registry check skipped: the cloud cannot reach the registry of %s (%s); gateways may", image, res.Message), nil
	}
	return nil, "", &errdefs.FieldError{Field: "command.deploy.spec.image", Kind: codeErr(res.Code),
		Msg: fmt.Sprintf("checked from the cloud before sending: %s; no gateway was touched (fix the image or the tenant's credential, or skip the check)", res.Message)}
}

// CheckRegistry checks image against its registry from the cloud with the
// tenant's credential for it, as check-registry does on a gateway.
func (c *Controller) CheckRegistry(ctx context.Context, tenant, image string) (*CheckResult, error) {
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

// checkWith checks image against its registry from the cloud, with cred
// (nil: anonymous), as check-registry does on a gateway.
func (c *Controller) checkWith(ctx context.Context, cred *fleetv1.Credential, image string) *CheckResult {
	res := &CheckResult{Image: image, CheckedAt: c.cfg.Now(), Registry: cred.GetRegistry()}
	rc, err := credential.CheckImage(ctx, cred, image)
	if raw, jerr := protojson.Marshal(rc); jerr == nil {
		_ = json.Unmarshal(raw, &res.Check)
	}
	res.OK = err == nil
	if err != nil {
		res.Code, res.Message = errdefs.Code(err).String(), err.Error()
	}
	return res
}

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

// sealFor builds a set-credentials for g with creds sealed to its public key.
func (c *Controller) sealFor(g *Gateway, creds []*fleetv1.Credential) (*fleetv1.Command, error) {
	if g.PublicKey == "" {
		return nil, errors.New("its birth has no publicKey to seal credentials to (agent too old?); credentials not sent")
	}
	raw, err := protojson.Marshal(&fleetv1.SetCredentials{Credentials: creds})
	if err != nil {
		return nil, err
	}
	sealed, err := credential.Seal(g.PublicKey, raw)
	if err != nil {
		return nil, err
	}
	return &fleetv1.Command{Body: &fleetv1.Command_SetCredentials{SetCredentials: &fleetv1.SetCredentials{Sealed: sealed}}}, nil
}

// noteCredentialsHeld updates the inventory after a gateway accepted a
// set-credentials, so that the next deploy does not send them again.
// c.mu is held.
func (c *Controller) noteCredentialsHeld(cmd *commandRecord) {
	g := c.gateways[state.Key(cmd.Tenant, cmd.Gateway)]
	if g == nil {
		return
	}
	for _, r := range cmd.Credentials {
		i := -1
		for j := range g.Registries {
			if g.Registries[j].Registry == r.Registry {
				i = j
			}
		}
		if i < 0 {
			g.Registries = append(g.Registries, r)
		} else {
			g.Registries[i] = r
		}
	}
	c.dirty[state.Key(g.Tenant, g.ID)] = struct{}{}
}
