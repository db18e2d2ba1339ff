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
	"sort"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

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
	Logger        *slog.Logger
}

// Keychain holds the gateway's registry credentials. They are encrypted in
// the state file and never appear in logs, replies, statuses or births.
type Keychain struct {
	cfg KeychainConfig
	log *slog.Logger

	mu    sync.Mutex
	creds map[string]*fleetv1.Credential // by scope
}

// NewKeychain loads the stored credentials.
func NewKeychain(cfg KeychainConfig) (*Keychain, error) {
	if cfg.Store == nil || cfg.Cipher == nil {
		return nil, errors.New("regauth: Store and Cipher are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	k := &Keychain{cfg: cfg, log: cfg.Logger, creds: map[string]*fleetv1.Credential{}}
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
		k.creds[scope] = c
	}
	return k, nil
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
		key, err := checkCredential(fmt.Sprintf("setCredentials.credentials[%d]", i), c)
		if err != nil {
			return err
		}
		scopes[i] = key
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
		k.creds[scopes[i].String()] = c
		k.mu.Unlock()
		k.log.Info("registry credential set", "registry", scopes[i].String(), "kind", kind(c), "fingerprint", fingerprint(c))
	}
	return nil
}

// checkCredential validates one credential and normalises it in place.
func checkCredential(field string, c *fleetv1.Credential) (Key, error) {
	key, err := ParseRegistry(c.GetRegistry())
	if err != nil {
		return Key{}, errdefs.Invalid(field+".registry", "%v", err)
	}
	if c.GetCaCertificate() != "" || c.GetClientCertificate() != "" || c.GetClientKey() != "" || c.GetRequireTls() {
		return Key{}, &errdefs.FieldError{Field: field + ".caCertificate", Kind: errdefs.ErrUnsupported,
			Msg: "per-registry TLS settings are not supported by this agent yet; remove caCertificate, clientCertificate, clientKey and requireTls"}
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
	case *fleetv1.Credential_Anonymous:
	case *fleetv1.Credential_Ecr, *fleetv1.Credential_EcrToken:
		return Key{}, &errdefs.FieldError{Field: field, Kind: errdefs.ErrUnsupported,
			Msg: "ECR credentials are not supported by this agent yet; use basic with username AWS and a password from aws ecr get-login-password"}
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
	for i, r := range regs {
		key, err := ParseRegistry(r)
		if err != nil {
			return errdefs.Invalid(fmt.Sprintf("deleteCredentials.registries[%d]", i), "%v", err)
		}
		k.mu.Lock()
		_, ok := k.creds[key.String()]
		k.mu.Unlock()
		if !ok {
			return &errdefs.FieldError{Field: fmt.Sprintf("deleteCredentials.registries[%d]", i), Kind: errdefs.ErrNotFound,
				Msg: fmt.Sprintf("no credential for %s on this gateway", key)}
		}
		if err := k.cfg.Store.DeleteCredential(key.String()); err != nil {
			return err
		}
		k.mu.Lock()
		delete(k.creds, key.String())
		k.mu.Unlock()
		k.log.Info("registry credential deleted", "registry", key.String())
	}
	return nil
}

// Auth returns the engine's X-Registry-Auth value for pulling image: the
// credential with the longest matching prefix, or "" for none.
func (k *Keychain) Auth(_ context.Context, image string) (string, error) {
	ik, err := ImageKey(image)
	if err != nil {
		return "", err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var scopes []Key
	var creds []*fleetv1.Credential
	for s, c := range k.creds {
		key, err := ParseRegistry(s)
		if err != nil {
			continue
		}
		scopes, creds = append(scopes, key), append(creds, c)
	}
	i := Select(scopes, ik)
	if i < 0 {
		return "", nil
	}
	if b := creds[i].GetBasic(); b != nil {
		return EncodeAuth(b.GetUsername(), b.GetPassword(), ik.Host), nil
	}
	return "", nil // anonymous
}

// Summaries describes the stored credentials without any secret.
func (k *Keychain) Summaries() []*fleetv1.RegistrySummary {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]*fleetv1.RegistrySummary, 0, len(k.creds))
	for scope, c := range k.creds {
		out = append(out, &fleetv1.RegistrySummary{Registry: scope, Kind: kind(c), Username: c.GetBasic().GetUsername(), Fingerprint: fingerprint(c)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetRegistry() < out[j].GetRegistry() })
	return out
}

func kind(c *fleetv1.Credential) string {
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

// fingerprint identifies a secret without revealing it: 12 hex digits of
// SHA-256 over the secret material.
func fingerprint(c *fleetv1.Credential) string {
	var secret string
	switch kc := c.GetKind().(type) {
	case *fleetv1.Credential_Basic:
		secret = kc.Basic.GetUsername() + "\x00" + kc.Basic.GetPassword()
	default:
		return ""
	}
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])[:12]
}
