// Package cmdsig signs and verifies commands: the controller signs every
// command it publishes with its tenant's Ed25519 command-signing key, and a
// gateway provisioned with the tenant's public keys refuses commands that
// are unsigned or signed by any other key.
//
// The signature covers the topic the command is published on, its MQTT
// content type and its exact payload bytes (see Message), so that a command
// to one gateway cannot be replayed to another, nor re-encoded or altered.
// It travels in two MQTT v5 user properties, PropKeyID and PropSignature.
// protocol/README.md ("Signed commands") is the reference, with a worked
// example that the tests verify.
package cmdsig

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
)

// The MQTT v5 user properties that carry a command's signature.
const (
	// PropKeyID names the signing key (KeyID of its public key).
	PropKeyID = "fleet-key-id"
	// PropSignature is the Ed25519 signature of Message, standard base64.
	PropSignature = "fleet-signature"
)

// Domain is the first line of every signed message, so that a signature
// made for a command is never valid for anything else.
const Domain = "fleet-command-v1"

var (
	// ErrUnsigned: the command carries no signature.
	ErrUnsigned = errors.New("the command is not signed")
	// ErrUnknownKey: the signature names a key the verifier does not hold.
	ErrUnknownKey = errors.New("the command is signed by a key this gateway does not trust")
	// ErrBadSignature: the signature does not verify.
	ErrBadSignature = errors.New("the command's signature does not verify")
)

// Message is what is signed for a command published on topic with
// contentType (as sent in the MQTT content type property, "" when absent):
//
//	"fleet-command-v1\n" + topic + "\n" + contentType + "\n" + payload
//
// topic and contentType may not contain a newline.
func Message(topic, contentType string, payload []byte) ([]byte, error) {
	if strings.ContainsAny(topic, "\n") || strings.ContainsAny(contentType, "\n") {
		return nil, errors.New("cmdsig: topic and content type may not contain a newline")
	}
	b := make([]byte, 0, len(Domain)+len(topic)+len(contentType)+len(payload)+3)
	b = append(b, Domain+"\n"...)
	b = append(b, topic+"\n"...)
	b = append(b, contentType+"\n"...)
	return append(b, payload...), nil
}

// KeyID identifies a public key: the first 8 bytes of its SHA-256, in hex.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Sign signs a command and returns the values of PropKeyID and
// PropSignature.
func Sign(priv ed25519.PrivateKey, topic, contentType string, payload []byte) (keyID, signature string, err error) {
	msg, err := Message(topic, contentType, payload)
	if err != nil {
		return "", "", err
	}
	pub := priv.Public().(ed25519.PublicKey)
	return KeyID(pub), base64.StdEncoding.EncodeToString(ed25519.Sign(priv, msg)), nil
}

// PublicKey is a command-signing public key as gateways are given it: in
// the provisioning response and in the agent's --command-signing-keys file.
type PublicKey struct {
	ID string `json:"id"`
	// PublicKey is the 32-byte Ed25519 public key, standard base64.
	PublicKey string `json:"publicKey"`
}

// KeySet is the JSON of a command-signing keys file:
// {"keys": [{"id": "…", "publicKey": "…"}]}.
type KeySet struct {
	Keys []PublicKey `json:"keys"`
}

// Public returns pub as a PublicKey.
func Public(pub ed25519.PublicKey) PublicKey {
	return PublicKey{ID: KeyID(pub), PublicKey: base64.StdEncoding.EncodeToString(pub)}
}

// Verifier holds the public keys a gateway trusts. Replace swaps them
// while commands are being verified.
type Verifier struct {
	keys atomic.Pointer[map[string]ed25519.PublicKey]
}

// NewVerifier checks keys (at least one; each id must be the KeyID of its
// key) and returns a verifier that trusts them.
func NewVerifier(keys []PublicKey) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, errors.New("no command-signing keys")
	}
	m := map[string]ed25519.PublicKey{}
	for i, k := range keys {
		raw, err := base64.StdEncoding.DecodeString(k.PublicKey)
		if err != nil || len(raw) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("keys[%d].publicKey: must be a %d-byte Ed25519 public key in standard base64", i, ed25519.PublicKeySize)
		}
		pub := ed25519.PublicKey(raw)
		if want := KeyID(pub); k.ID != want {
			return nil, fmt.Errorf("keys[%d].id: %q is not the id of its public key (%q); copy both from the provisioning response", i, k.ID, want)
		}
		m[k.ID] = pub
	}
	v := new(Verifier)
	v.keys.Store(&m)
	return v, nil
}

// Replace makes v trust the keys of other instead of its own.
func (v *Verifier) Replace(other *Verifier) { v.keys.Store(other.keys.Load()) }

// ParseKeys decodes a command-signing keys file (KeySet JSON) into a
// verifier. Other fields are ignored, so that the cloud's listing of a
// tenant's keys (with signer and createdAt) can be saved as the file.
func ParseKeys(data []byte) (*Verifier, error) {
	var set KeySet
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf(`not a keys file ({"keys": [{"id": …, "publicKey": …}]}): %w`, err)
	}
	return NewVerifier(set.Keys)
}

// IDs are the ids of the trusted keys, sorted.
func (v *Verifier) IDs() []string { return slices.Sorted(maps.Keys(*v.keys.Load())) }

// Verify checks the signature of a command published on topic with
// contentType and payload; keyID and signature are the values of PropKeyID
// and PropSignature ("" when absent).
func (v *Verifier) Verify(topic, contentType string, payload []byte, keyID, signature string) error {
	if keyID == "" && signature == "" {
		return fmt.Errorf("%w (user properties %s and %s are missing)", ErrUnsigned, PropKeyID, PropSignature)
	}
	pub, ok := (*v.keys.Load())[keyID]
	if !ok {
		return fmt.Errorf("%w (%s %q)", ErrUnknownKey, PropKeyID, keyID)
	}
	sig, err := base64.StdEncoding.DecodeString(signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w (%s is not a %d-byte signature in standard base64)", ErrBadSignature, PropSignature, ed25519.SignatureSize)
	}
	msg, err := Message(topic, contentType, payload)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w (key %s; signed over the topic, content type and payload)", ErrBadSignature, keyID)
	}
	return nil
}
