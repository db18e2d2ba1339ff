// Package regauth is the gateway's registry keychain: it keeps credentials
// encrypted in the state file, installs their TLS material where the engine
// reads it, chooses the credential a pull uses (the longest matching
// scope, see internal/credential), caches and refreshes ECR tokens, and
// warns before ecr-tokens expire.
package regauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Store keeps encrypted credentials by scope.
type Store interface {
	PutCredential(scope string, encrypted []byte) error
	DeleteCredential(scope string) error
	Credentials() (map[string][]byte, error)
}

// Cipher encrypts at rest.
type Cipher interface {
	Encrypt(plaintext []byte) []byte
	Decrypt(sealed []byte) ([]byte, error)
}

// KeychainConfig configures a Keychain.
type KeychainConfig struct {
	Store  Store
	Cipher Cipher
	// CertsDir is the engine's per-registry certificate directory
	// (DefaultCertsDir when empty).
	CertsDir string
	// ExpiryWarning is how long before an ecr-token expires the agent
	// warns (1 hour when zero).
	ExpiryWarning time.Duration
	// Event publishes an event (credential.expiring, …); nil drops them.
	Event func(*fleetv1.Event)
	// ECRToken gets a new token for an ecr credential (the agent runs
	// the fleet-agent-ecr helper, see agent/ecrexec); nil refuses ecr
	// credentials when a pull needs one.
	ECRToken credential.TokenSource
	// Insecure reports whether the engine pulls from host over plain HTTP
	// or without verifying TLS (its insecure-registries, 127.0.0.0/8 by
	// default); when it is nil or fails, loopback hosts only, the engine's
	// default.
	Insecure func(ctx context.Context, host string) (bool, error)
	// AllowInsecure lists the registries (host[:port]) whose credentials
	// may say insecure (--allow-insecure-registry): the agent's own pull
	// reaches them over plain HTTP or TLS without verification. A
	// credential that says insecure for another registry is refused when
	// a pull uses it.
	AllowInsecure []string
	// MaxSleep bounds the background loop's sleep (1 minute when zero), so
	// that a clock that jumps (a gateway whose clock is set by NTP after
	// boot) does not delay a refresh or a warning by more than that.
	MaxSleep time.Duration
	Logger   *slog.Logger
	Now      func() time.Time
}

// Keychain holds the gateway's registry credentials. They are encrypted in
// the state file and never appear in logs, replies, statuses or births.
type Keychain struct {
	cfg  KeychainConfig
	log  *slog.Logger
	wake chan struct{}

	mu      sync.Mutex
	entries map[string]*entry // by scope
}

// entry is one stored credential and, for ECR, its current token.
type entry struct {
	key  credential.Key
	cred *fleetv1.Credential

	fetch sync.Mutex // one GetAuthorizationToken at a time

	// Guarded by Keychain.mu.
	tok        *credential.Token
	refreshErr error
	retryAt    time.Time
	announced  string // expiry state last announced: "", "expiring", "expired"
}

// NewKeychain loads the stored credentials.
func NewKeychain(cfg KeychainConfig) (*Keychain, error) {
	if cfg.Store == nil || cfg.Cipher == nil {
		return nil, errors.New("regauth: Store and Cipher are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.CertsDir == "" {
		cfg.CertsDir = DefaultCertsDir
	}
	if cfg.ExpiryWarning <= 0 {
		cfg.ExpiryWarning = time.Hour
	}
	if cfg.Event == nil {
		cfg.Event = func(*fleetv1.Event) {}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxSleep <= 0 {
		cfg.MaxSleep = time.Minute
	}
	k := &Keychain{cfg: cfg, log: cfg.Logger, entries: map[string]*entry{}, wake: make(chan struct{}, 1)}
	stored, err := cfg.Store.Credentials()
	if err != nil {
		return nil, err
	}
	for scope, enc := range stored {
		raw, err := cfg.Cipher.Decrypt(enc)
		if err != nil {
			return nil, fmt.Errorf("credential for %s does not decrypt with the at-rest key: %w", scope, err)
		}
		c := new(fleetv1.Credential)
		if err := proto.Unmarshal(raw, c); err != nil {
			return nil, fmt.Errorf("credential for %s: %w", scope, err)
		}
		key, err := credential.ParseRegistry(scope)
		if err != nil {
			// Stored by an agent that did not check registry names yet:
			// kept in the state file but never used (and its TLS files
			// never touched) rather than refusing to start.
			k.log.Warn("stored registry credential ignored: its registry is not a host[:port]; delete it with delete-credentials or send a valid one", "registry", scope, "err", err)
			continue
		}
		k.entries[scope] = &entry{key: key, cred: c}
	}
	return k, nil
}

// insecure reports whether the engine pulls from host without verified
// TLS, as far as it can tell.
func (k *Keychain) insecure(ctx context.Context, host string) bool {
	if k.cfg.Insecure != nil {
		ok, err := k.cfg.Insecure(ctx, host)
		if err == nil {
			return ok
		}
		k.log.Debug("engine's insecure registries unknown; assuming its default (loopback)", "registry", host, "err", err)
	}
	return credential.Loopback(host)
}

// insecureFor reports whether a pull of host with cred may go without
// verified TLS: the credential says insecure and the local policy allows
// that registry (POLICY_DENIED naming the setting otherwise), or the
// engine treats the registry as insecure and the credential does not
// require TLS.
func (k *Keychain) insecureFor(ctx context.Context, host string, cred *fleetv1.Credential) (bool, error) {
	if cred.GetInsecure() {
		if !slices.Contains(k.cfg.AllowInsecure, host) {
			return false, fmt.Errorf("%w: the credential for %s says insecure (plain HTTP or unverified TLS), and this gateway allows that only for the registries its --allow-insecure-registry setting lists; add %s there or drop insecure from the credential",
				errdefs.ErrPolicyDenied, host, host)
		}
		return true, nil
	}
	return !cred.GetRequireTls() && k.insecure(ctx, host), nil
}

// Set adds or replaces credentials, applied at once. Each is validated
// (errors name the field "credentials[i]…") and its TLS material installed
// for the engine before any is stored.
func (k *Keychain) Set(_ context.Context, list []*fleetv1.Credential) error {
	if len(list) == 0 {
		return errdefs.Invalid("credentials", "is empty; send at least one credential")
	}
	scopes := make([]credential.Key, len(list))
	for i, c := range list {
		key, err := credential.Validate(fmt.Sprintf("credentials[%d]", i), c)
		if err != nil {
			return err
		}
		scopes[i] = key
	}
	// Certificates first: a credential whose CA cannot be installed is not
	// stored either.
	for i, c := range list {
		k.mu.Lock()
		var old *fleetv1.Credential
		if e := k.entries[scopes[i].String()]; e != nil {
			old = e.cred
		}
		k.mu.Unlock()
		if err := installTLS(k.cfg.CertsDir, scopes[i].Host, c, old); err != nil {
			return err
		}
	}
	for i, c := range list {
		if c.GetFingerprint() == "" {
			c.Fingerprint = credential.RandomFingerprint() // never one derived from the secret alone
		}
		raw, err := proto.Marshal(c)
		if err != nil {
			return err
		}
		if err := k.cfg.Store.PutCredential(scopes[i].String(), k.cfg.Cipher.Encrypt(raw)); err != nil {
			return fmt.Errorf("store credential for %s: %w", scopes[i], err)
		}
		k.mu.Lock()
		k.entries[scopes[i].String()] = &entry{key: scopes[i], cred: c}
		k.mu.Unlock()
		k.log.Info("registry credential set", "registry", scopes[i].String(), "kind", credential.KindOf(c), "fingerprint", c.GetFingerprint())
	}
	k.poke()
	return nil
}

// Delete deletes the credentials of the given registry scopes (errors
// name the field "registries[i]"); none is deleted unless all exist.
func (k *Keychain) Delete(_ context.Context, regs []string) error {
	if len(regs) == 0 {
		return errdefs.Invalid("registries", "is empty; name at least one registry")
	}
	keys := make([]credential.Key, len(regs))
	for i, r := range regs {
		key, err := credential.ParseRegistry(r)
		if err != nil {
			return errdefs.Invalid(fmt.Sprintf("registries[%d]", i), "%v", err)
		}
		k.mu.Lock()
		_, ok := k.entries[key.String()]
		k.mu.Unlock()
		if !ok {
			return &errdefs.FieldError{Field: fmt.Sprintf("registries[%d]", i), Kind: errdefs.ErrNotFound,
				Msg: fmt.Sprintf("no credential for %s on this gateway", key)}
		}
		keys[i] = key
	}
	for _, key := range keys {
		if err := k.cfg.Store.DeleteCredential(key.String()); err != nil {
			return err
		}
		k.mu.Lock()
		old := k.entries[key.String()]
		delete(k.entries, key.String())
		// Another scope on the same host may carry TLS material: it wins.
		var keep *fleetv1.Credential
		for _, e := range k.entries {
			if e.key.Host == key.Host && hasTLS(e.cred) {
				keep = e.cred
			}
		}
		k.mu.Unlock()
		if old != nil && hasTLS(old.cred) {
			if err := installTLS(k.cfg.CertsDir, key.Host, keep, old.cred); err != nil {
				return err
			}
		}
		k.log.Info("registry credential deleted", "registry", key.String())
	}
	k.poke()
	return nil
}

func hasTLS(c *fleetv1.Credential) bool {
	return c.GetCaCertificate() != "" || c.GetClientCertificate() != ""
}

// lookup returns the entry with the longest prefix covering image.
func (k *Keychain) lookup(image string) (*entry, credential.Key, error) {
	ik, err := credential.ImageKey(image)
	if err != nil {
		return nil, credential.Key{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var scopes []credential.Key
	var entries []*entry
	for _, e := range k.entries {
		scopes, entries = append(scopes, e.key), append(entries, e)
	}
	if i := credential.Select(scopes, ik); i >= 0 {
		return entries[i], ik, nil
	}
	return nil, ik, nil
}

// Auth returns the engine's X-Registry-Auth value for pulling image: the
// credential with the longest matching prefix, or "" for none. An ECR
// credential yields its cached token, fetched only when there is none or
// it is due for refresh.
func (k *Keychain) Auth(ctx context.Context, image string) (string, error) {
	e, ik, err := k.lookup(image)
	if err != nil || e == nil {
		return "", err
	}
	if e.cred.GetRequireTls() {
		if err := credential.RequireTLS(ctx, ik.Host, e.cred); err != nil {
			return "", err
		}
	}
	user, password, err := k.secret(ctx, e, false)
	if err != nil || user == "" {
		return "", err
	}
	return credential.EncodeAuth(user, password, ik.Host), nil
}

// Refresh is called after the registry refused a pull: for an ECR
// credential it fetches a new token at once and returns it (ok true); for
// other kinds there is nothing to refresh.
func (k *Keychain) Refresh(ctx context.Context, image string) (auth string, ok bool, err error) {
	e, ik, err := k.lookup(image)
	if err != nil || e == nil || e.cred.GetEcr() == nil {
		return "", false, err
	}
	t, err := k.ecrToken(ctx, e, true)
	if err != nil {
		return "", false, err
	}
	return credential.EncodeAuth(t.User, t.Password, ik.Host), true, nil
}

// secret returns the username and password a pull presents ("" for
// anonymous): an ecr credential's cached token (a new one with force).
func (k *Keychain) secret(ctx context.Context, e *entry, force bool) (string, string, error) {
	if e.cred.GetEcr() == nil {
		return credential.Login(ctx, e.cred, k.cfg.Now(), nil)
	}
	t, err := k.ecrToken(ctx, e, force)
	if err != nil {
		return "", "", err
	}
	return t.User, t.Password, nil
}

// ecrToken returns e's cached token, or fetches one when there is none, it
// is due for refresh, or force is set. A failed refresh keeps a token that
// has not expired yet.
func (k *Keychain) ecrToken(ctx context.Context, e *entry, force bool) (*credential.Token, error) {
	k.mu.Lock()
	seen := e.tok
	k.mu.Unlock()
	if !force && seen != nil && k.cfg.Now().Before(seen.RefreshAt) {
		return seen, nil
	}
	e.fetch.Lock()
	defer e.fetch.Unlock()
	k.mu.Lock()
	cur := e.tok
	k.mu.Unlock()
	if cur != seen && cur != nil && k.cfg.Now().Before(cur.RefreshAt) {
		return cur, nil // fetched meanwhile
	}
	if k.cfg.ECRToken == nil {
		return nil, fmt.Errorf("%w: this agent cannot get ECR tokens for the ecr credential of %s", errdefs.ErrUnsupported, e.key)
	}
	region, _ := credential.ECRRegion(e.cred.GetEcr(), e.key.Host)
	now := k.cfg.Now()
	t, err := k.cfg.ECRToken(ctx, e.cred.GetEcr(), region, now)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		e.refreshErr = err
		if !force && cur != nil && now.Before(cur.Expires) {
			k.log.Warn("ECR token refresh failed; the current token is still valid", "registry", e.key.String(), "expires", cur.Expires, "err", err)
			return cur, nil
		}
		return nil, err
	}
	e.tok, e.refreshErr, e.retryAt = t, nil, time.Time{}
	k.log.Info("ECR token fetched", "registry", e.key.String(), "expires", t.Expires)
	k.poke()
	return t, nil
}

// poke wakes the background loop to recompute its schedule.
func (k *Keychain) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// Run refreshes ECR tokens before they expire and warns about ecr-tokens
// that are about to expire or have, until ctx ends.
func (k *Keychain) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-k.wake:
		}
		next := k.tick(ctx)
		timer.Stop()
		select {
		case <-timer.C:
		default:
		}
		timer.Reset(min(max(next.Sub(k.cfg.Now()), 10*time.Millisecond), k.cfg.MaxSleep))
	}
}

// tick does what is due and returns when to look again.
func (k *Keychain) tick(ctx context.Context) time.Time {
	now := k.cfg.Now()
	next := now.Add(time.Hour)
	var due []*entry
	var events []*fleetv1.Event // published after unlocking
	defer func() {
		for _, ev := range events {
			k.publish(ev)
		}
	}()
	k.mu.Lock()
	for _, e := range k.entries {
		switch kc := e.cred.GetKind().(type) {
		case *fleetv1.Credential_Ecr:
			at := time.Time{} // no token yet: now
			if e.tok != nil {
				at = e.tok.RefreshAt
			}
			if !e.retryAt.IsZero() {
				at = e.retryAt
			}
			if !now.Before(at) {
				due = append(due, e)
			} else if at.Before(next) {
				next = at
			}
		case *fleetv1.Credential_EcrToken:
			exp := kc.EcrToken.GetExpiresAt().AsTime()
			warnAt := exp.Add(-k.cfg.ExpiryWarning)
			switch {
			case !now.Before(exp):
				if e.announced != "expired" {
					e.announced = "expired"
					events = append(events, credentialEvent(fleetv1.Event_ERROR, "credential.expired", fmt.Sprintf("the ecr-token for %s expired at %s; pulls from it fail until a fresh token is pushed with set-credentials", e.key, exp.UTC().Format(time.RFC3339))))
				}
			case !now.Before(warnAt):
				if e.announced == "" {
					e.announced = "expiring"
					events = append(events, credentialEvent(fleetv1.Event_WARNING, "credential.expiring", fmt.Sprintf("the ecr-token for %s expires at %s (in %s); push a fresh one with set-credentials", e.key, exp.UTC().Format(time.RFC3339), exp.Sub(now).Round(time.Second))))
				}
				if exp.Before(next) {
					next = exp
				}
			default:
				if warnAt.Before(next) {
					next = warnAt
				}
			}
		}
	}
	k.mu.Unlock()
	for _, e := range due {
		_, err := k.ecrToken(ctx, e, true)
		k.mu.Lock()
		if err != nil {
			remaining := time.Minute
			if e.tok != nil {
				remaining = e.tok.Expires.Sub(now)
			}
			e.retryAt = now.Add(min(max(remaining/4, time.Second), 30*time.Second))
			events = append(events, credentialEvent(fleetv1.Event_WARNING, "credential.refresh-failed", fmt.Sprintf("could not refresh the ECR token for %s (retrying): %v", e.key, err)))
		}
		at := e.retryAt
		if e.tok != nil && at.IsZero() {
			at = e.tok.RefreshAt
		}
		if !at.IsZero() && at.Before(next) {
			next = at
		}
		k.mu.Unlock()
	}
	return next
}

// credentialEvent builds a credential event; publish logs and publishes it
// (never under k.mu).
func credentialEvent(sev fleetv1.Event_Severity, kind, msg string) *fleetv1.Event {
	return &fleetv1.Event{Severity: sev, Kind: kind, Message: msg, Code: fleetv1.Reply_UNAUTHENTICATED}
}

func (k *Keychain) publish(ev *fleetv1.Event) {
	k.log.Warn(ev.GetMessage(), "kind", ev.GetKind())
	k.cfg.Event(ev)
}

// Summaries describes the stored credentials without any secret.
func (k *Keychain) Summaries() []*fleetv1.RegistrySummary {
	now := k.cfg.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]*fleetv1.RegistrySummary, 0, len(k.entries))
	for scope, e := range k.entries {
		c := e.cred
		s := &fleetv1.RegistrySummary{Registry: scope, Kind: credential.KindOf(c), Username: c.GetBasic().GetUsername(), Fingerprint: c.GetFingerprint(),
			HasCaCertificate: c.GetCaCertificate() != "", HasClientCertificate: c.GetClientCertificate() != "", RequireTls: c.GetRequireTls()}
		switch {
		case c.GetEcrToken() != nil:
			exp := c.GetEcrToken().GetExpiresAt().AsTime()
			s.Username, s.ExpiresAt = "AWS", c.GetEcrToken().GetExpiresAt()
			if !now.Before(exp) {
				s.Warning = "expired at " + exp.UTC().Format(time.RFC3339) + "; push a fresh token"
			} else if exp.Sub(now) <= k.cfg.ExpiryWarning {
				s.Warning = "expires in " + exp.Sub(now).Round(time.Second).String() + "; push a fresh token"
			}
		case c.GetEcr() != nil:
			s.Username = "AWS"
			if e.tok != nil {
				s.ExpiresAt = timestamppb.New(e.tok.Expires)
			}
			if e.refreshErr != nil {
				s.Warning = "token refresh failing: " + e.refreshErr.Error()
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetRegistry() < out[j].GetRegistry() })
	return out
}
