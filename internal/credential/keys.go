package credential

// Keys are the keys of a gateway (or a controller): an AES-256-GCM key that
// encrypts secrets at rest in the state file, and an X25519 key pair whose
// public half a gateway publishes in its birth so that the cloud can seal
// credentials to it (NaCl anonymous sealed box). Both live in files of mode
// 0600, created on first start.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/crypto/nacl/box"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

type Keys struct {
	aead      cipher.AEAD
	pub, priv *[32]byte
	// fingerprint keys Fingerprint's MAC; derived from the at-rest key,
	// so replicas sharing --secrets-key agree on fingerprints.
	fingerprint []byte
}

// LoadKeys reads the keys from their files, creating any that is missing.
// atRestPath may name a key supplied by the operator (32 raw bytes).
func LoadKeys(atRestPath, boxPath string) (*Keys, error) {
	k, err := loadOrCreate(atRestPath, 32, func() ([]byte, error) {
		b := make([]byte, 32)
		_, err := rand.Read(b)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("at-rest key: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	pair, err := loadOrCreate(boxPath, 64, func() ([]byte, error) {
		pub, priv, err := box.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		return append(pub[:], priv[:]...), nil
	})
	if err != nil {
		return nil, fmt.Errorf("sealing key pair: %w", err)
	}
	keys := &Keys{aead: aead, pub: new([32]byte), priv: new([32]byte), fingerprint: mac(k, "fleet credential fingerprint v1")}
	copy(keys.pub[:], pair[:32])
	copy(keys.priv[:], pair[32:])
	return keys, nil
}

func loadOrCreate(path string, size int, create func() ([]byte, error)) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if len(b) != size {
			return nil, fmt.Errorf("%s holds %d bytes, want %d", path, len(b), size)
		}
		return b, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	if b, err = create(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return b, f.Close()
}

// Fingerprint identifies c's secret without revealing it and without
// being an oracle for guessed passwords: 12 hex digits of HMAC-SHA-256,
// keyed per scope (the controller passes the tenant) with a key derived
// from the at-rest key, over the kind and secret material. "" for a
// credential without a secret (anonymous).
func (k *Keys) Fingerprint(scope string, c *fleetv1.Credential) string {
	m := secretMaterial(c)
	if m == "" {
		return ""
	}
	return hex.EncodeToString(mac(mac(k.fingerprint, scope), m))[:12]
}

func mac(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// PublicKey is the base64 X25519 public key for sealed credentials.
func (k *Keys) PublicKey() string { return base64.StdEncoding.EncodeToString(k.pub[:]) }

// Encrypt seals plaintext for storage: nonce followed by ciphertext.
func (k *Keys) Encrypt(plaintext []byte) []byte {
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return k.aead.Seal(nonce, nonce, plaintext, nil)
}

// Decrypt opens what Encrypt sealed.
func (k *Keys) Decrypt(sealed []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("ciphertext too short")
	}
	return k.aead.Open(nil, sealed[:n], sealed[n:], nil)
}

// OpenSealed opens an anonymous sealed box addressed to this gateway.
func (k *Keys) OpenSealed(sealed []byte) ([]byte, error) {
	out, ok := box.OpenAnonymous(nil, sealed, k.pub, k.priv)
	if !ok {
		return nil, errors.New("the sealed box does not open with this gateway's key: seal it to the publicKey in the gateway's current birth")
	}
	return out, nil
}

// Seal seals message to a gateway's base64 public key, as a console does.
func Seal(publicKey string, message []byte) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(publicKey)
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("public key %q is not 32 bytes of base64", publicKey)
	}
	var pub [32]byte
	copy(pub[:], raw)
	return box.SealAnonymous(nil, message, &pub, rand.Reader)
}
