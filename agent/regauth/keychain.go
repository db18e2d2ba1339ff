package regauth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Store keeps encrypted credentials by scope.
type Store interface {
	PutCredential(scope string, encrypted []byte) error
	DeleteCredential(scope string) error
	Credentials() (map[string][]byte, error)
}

// Cipher encrypts at rest and opens sealed boxes.
type Cipher interface {
	Encrypt(plaintext []byte) []byte
	Decrypt(sealed []byte) ([]byte, error)
	OpenSealed(sealed []byte) ([]byte, error)
}

// KeychainConfig configures a Keychain.
type KeychainConfig struct {
	Store  Store
	Cipher Cipher
	// RequireSealed refuses credentials sent in plaintext.
	RequireSealed bool
	// CertsDir is the engine's per-registry certificate directory
	// (DefaultCertsDir when empty).
	CertsDir string
	// ExpiryWarning is how long before an ecr-token expires the agent
	// warns (1 hour when zero).
	ExpiryWarning time.Duration
	// Event publishes an event (credential.expiring, …); nil drops them.
	Event func(*fleetv1.Event)
	// NewECRClient builds the ECR client of an ecr credential
	// (NewECRClient when nil).
	NewECRClient func(ctx context.Context, c *fleetv1.EcrAuth, region string) (TokenGetter, error)
	// Insecure reports whether the engine pulls from host over plain HTTP
	// or without verifying TLS (its insecure-registries, 127.0.0.0/8 by
	// default); when it is nil or fails, loopback hosts only, the engine's
	// default.
	Insecure func(ctx context.Context, host string) (bool, error)
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
	key  Key
	cred *fleetv1.Credential

	fetch  sync.Mutex // one GetAuthorizationToken at a time
	client TokenGetter

	// Guarded by Keychain.mu.
	tok        *token
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
	if cfg.NewECRClient == nil {
		cfg.NewECRClient = NewECRClient
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
		key, err := ParseRegistry(scope)
		if err != nil {
			return nil, fmt.Errorf("credential for %s: %w", scope, err)
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
	return loopback(host)
}

// loopback reports whether host (host or host:port) is on 127.0.0.0/8,
// ::1 or is localhost: registries the engine treats as insecure by default.
func loopback(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Set handles set-credentials: add or replace, applied at once.
func (k *Keychain) Set(_ context.Context, x *command.Exec) error {
	body := x.Command.GetSetCredentials()
	list := body.GetCredentials()
	switch {
	case len(body.GetSealed()) > 0 && len(list) > 0:
		return errdefs.Invalid("setCredentials", "send either credentials or sealed, not both")
	case len(body.GetSealed()) > 0:
		raw, err := k.cfg.Cipher.OpenSealed(body.GetSealed())
		if err != nil {
			return errdefs.Invalid("setCredentials.sealed", "%v", err)
		}
		inner := new(fleetv1.SetCredentials)
		if err := protojson.Unmarshal(raw, inner); err != nil {
			return errdefs.Invalid("setCredentials.sealed", "the sealed content is not the JSON of {\"credentials\": [...]}: %v", err)
		}
		list = inner.GetCredentials()
	case k.cfg.RequireSealed:
		return &errdefs.FieldError{Field: "setCredentials.credentials", Kind: errdefs.ErrPolicyDenied,
			Msg: "this gateway accepts only sealed credentials: seal the list to the publicKey in its birth and send it as setCredentials.sealed (agent setting --credentials-require-sealed)"}
	}
	if len(list) == 0 {
		return errdefs.Invalid("setCredentials.credentials", "is empty; send at least one credential")
	}
	scopes := make([]Key, len(list))
	for i, c := range list {
		key, err := Validate(fmt.Sprintf("setCredentials.credentials[%d]", i), c)
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
		k.log.Info("registry credential set", "registry", scopes[i].String(), "kind", KindOf(c), "fingerprint", Fingerprint(c))
	}
	k.poke()
	return nil
}

// Validate checks one credential, naming field in its errors, and
// normalises it in place (a _json_key password is compacted).
func Validate(field string, c *fleetv1.Credential) (Key, error) {
	key, err := ParseRegistry(c.GetRegistry())
	if err != nil {
		return Key{}, errdefs.Invalid(field+".registry", "%v", err)
	}
	if err := checkTLS(field, c); err != nil {
		return Key{}, err
	}
	switch kc := c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		if kc.Basic.GetUsername() == "" || kc.Basic.GetPassword() == "" {
			return Key{}, errdefs.Invalid(field+".basic", "username and password are both required")
		}
		if kc.Basic.GetUsername() == "_json_key" {
			var buf bytes.Buffer
			if err := json.Compact(&buf, []byte(kc.Basic.GetPassword())); err != nil {
				return Key{}, errdefs.Invalid(field+".basic.password", "with username _json_key the password is a service-account JSON key; it is not valid JSON: %v", err)
			}
			kc.Basic.Password = buf.String()
		}
	case *fleetv1.Credential_Ecr:
		e := kc.Ecr
		if _, ok := ecrRegion(e, key.Host); !ok {
			return Key{}, errdefs.Invalid(field+".ecr.region", "is required: %s is not an ECR host (<account>.dkr.ecr.<region>.amazonaws.com) to read the region from", key.Host)
		}
		if (e.GetAccessKeyId() == "") != (e.GetSecretAccessKey() == "") {
			return Key{}, errdefs.Invalid(field+".ecr.secretAccessKey", "accessKeyId and secretAccessKey go together; send both, or neither to use the AWS SDK's default credential chain on the gateway")
		}
		if e.GetSessionToken() != "" && e.GetAccessKeyId() == "" {
			return Key{}, errdefs.Invalid(field+".ecr.sessionToken", "a session token needs accessKeyId and secretAccessKey")
		}
	case *fleetv1.Credential_EcrToken:
		if kc.EcrToken.GetPassword() == "" {
			return Key{}, errdefs.Invalid(field+".ecrToken.password", "is required: the output of aws ecr get-login-password")
		}
		if kc.EcrToken.GetExpiresAt() == nil {
			return Key{}, errdefs.Invalid(field+".ecrToken.expiresAt", "is required: when the token expires (12 hours after aws ecr get-login-password issued it)")
		}
	case *fleetv1.Credential_Anonymous:
	default:
		return Key{}, errdefs.Invalid(field, "needs one of basic, ecr, ecrToken or anonymous")
	}
	return key, nil
}

// Delete handles delete-credentials.
func (k *Keychain) Delete(_ context.Context, x *command.Exec) error {
	regs := x.Command.GetDeleteCredentials().GetRegistries()
	if len(regs) == 0 {
		return errdefs.Invalid("deleteCredentials.registries", "is empty; name at least one registry")
	}
	keys := make([]Key, len(regs))
	for i, r := range regs {
		key, err := ParseRegistry(r)
		if err != nil {
			return errdefs.Invalid(fmt.Sprintf("deleteCredentials.registries[%d]", i), "%v", err)
		}
		k.mu.Lock()
		_, ok := k.entries[key.String()]
		k.mu.Unlock()
		if !ok {
			return &errdefs.FieldError{Field: fmt.Sprintf("deleteCredentials.registries[%d]", i), Kind: errdefs.ErrNotFound,
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
func (k *Keychain) lookup(image string) (*entry, Key, error) {
	ik, err := ImageKey(image)
	if err != nil {
		return nil, Key{}, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var scopes []Key
	var entries []*entry
	for _, e := range k.entries {
		scopes, entries = append(scopes, e.key), append(entries, e)
	}
	if i := Select(scopes, ik); i >= 0 {
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
		if err := k.requireTLS(ctx, ik.Host, e.cred); err != nil {
			return "", err
		}
	}
	user, password, err := k.secret(ctx, e, false)
	if err != nil || user == "" {
		return "", err
	}
	return EncodeAuth(user, password, ik.Host), nil
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
	return EncodeAuth(t.user, t.password, ik.Host), true, nil
}

// secret returns the username and password a pull presents ("" for
// anonymous).
func (k *Keychain) secret(ctx context.Context, e *entry, force bool) (string, string, error) {
	switch kc := e.cred.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		return kc.Basic.GetUsername(), kc.Basic.GetPassword(), nil
	case *fleetv1.Credential_EcrToken:
		if exp := kc.EcrToken.GetExpiresAt().AsTime(); !k.cfg.Now().Before(exp) {
			return "", "", fmt.Errorf("%w: the ecr-token for %s expired at %s; push a fresh one (aws ecr get-login-password) with set-credentials, or use an ecr credential so the gateway refreshes tokens itself",
				errdefs.ErrUnauthenticated, e.key, exp.UTC().Format(time.RFC3339))
		}
		return "AWS", kc.EcrToken.GetPassword(), nil
	case *fleetv1.Credential_Ecr:
		t, err := k.ecrToken(ctx, e, force)
		if err != nil {
			return "", "", err
		}
		return t.user, t.password, nil
	}
	return "", "", nil
}

// ecrToken returns e's cached token, or fetches one when there is none, it
// is due for refresh, or force is set. A failed refresh keeps a token that
// has not expired yet.
func (k *Keychain) ecrToken(ctx context.Context, e *entry, force bool) (*token, error) {
	k.mu.Lock()
	seen := e.tok
	k.mu.Unlock()
	if !force && seen != nil && k.cfg.Now().Before(seen.refreshAt) {
		return seen, nil
	}
	e.fetch.Lock()
	defer e.fetch.Unlock()
	k.mu.Lock()
	cur := e.tok
	k.mu.Unlock()
	if cur != seen && cur != nil && k.cfg.Now().Before(cur.refreshAt) {
		return cur, nil // fetched meanwhile
	}
	if e.client == nil {
		region, _ := ecrRegion(e.cred.GetEcr(), e.key.Host)
		c, err := k.cfg.NewECRClient(ctx, e.cred.GetEcr(), region)
		if err != nil {
			return nil, err
		}
		e.client = c
	}
	now := k.cfg.Now()
	t, err := fetchECR(ctx, e.client, now)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		e.refreshErr = err
		if !force && cur != nil && now.Before(cur.expires) {
			k.log.Warn("ECR token refresh failed; the current token is still valid", "registry", e.key.String(), "expires", cur.expires, "err", err)
			return cur, nil
		}
		return nil, err
	}
	e.tok, e.refreshErr, e.retryAt = t, nil, time.Time{}
	k.log.Info("ECR token fetched", "registry", e.key.String(), "expires", t.expires)
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
				at = e.tok.refreshAt
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
				remaining = e.tok.expires.Sub(now)
			}
			e.retryAt = now.Add(min(max(remaining/4, time.Second), 30*time.Second))
			events = append(events, credentialEvent(fleetv1.Event_WARNING, "credential.refresh-failed", fmt.Sprintf("could not refresh the ECR token for %s (retrying): %v", e.key, err)))
		}
		at := e.retryAt
		if e.tok != nil && at.IsZero() {
			at = e.tok.refreshAt
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

// requireTLS refuses a registry that does not speak verified TLS.
func (k *Keychain) requireTLS(ctx context.Context, host string, c *fleetv1.Credential) error {
	switch res, err := probe(ctx, host, c); res {
	case probeTLSOK:
		return nil
	case probePlainHTTP:
		return fmt.Errorf("%w: registry %s serves plain HTTP and its credential sets requireTls", errdefs.ErrTLS, host)
	case probeTLSFailed:
		return fmt.Errorf("%w: registry %s: TLS verification failed and its credential sets requireTls: %v", errdefs.ErrTLS, host, err)
	default:
		return fmt.Errorf("%w: registry %s: %v", errdefs.ErrRegistryUnreachable, host, err)
	}
}

// Summaries describes the stored credentials without any secret.
func (k *Keychain) Summaries() []*fleetv1.RegistrySummary {
	now := k.cfg.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]*fleetv1.RegistrySummary, 0, len(k.entries))
	for scope, e := range k.entries {
		c := e.cred
		s := &fleetv1.RegistrySummary{Registry: scope, Kind: KindOf(c), Username: c.GetBasic().GetUsername(), Fingerprint: Fingerprint(c),
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
				s.ExpiresAt = timestamppb.New(e.tok.expires)
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

// KindOf names a credential's kind as births and summaries do.
func KindOf(c *fleetv1.Credential) string {
	switch c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		return "basic"
	case *fleetv1.Credential_Ecr:
		return "ecr"
	case *fleetv1.Credential_EcrToken:
		return "ecr-token"
	}
	return "anonymous"
}

// Fingerprint identifies a secret without revealing it: 12 hex digits of
// SHA-256 over the secret material.
func Fingerprint(c *fleetv1.Credential) string {
	var secret string
	switch kc := c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		secret = kc.Basic.GetUsername() + "\x00" + kc.Basic.GetPassword()
	case *fleetv1.Credential_Ecr:
		secret = kc.Ecr.GetAccessKeyId() + "\x00" + kc.Ecr.GetSecretAccessKey() + "\x00" + kc.Ecr.GetRoleArn()
	case *fleetv1.Credential_EcrToken:
		secret = kc.EcrToken.GetPassword()
	default:
		return ""
	}
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])[:12]
}
