package credential_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/internal/credential"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func TestKeys(t *testing.T) {
	dir := t.TempDir()
	rest, pair := filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key")
	k, err := credential.LoadKeys(rest, pair)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{rest, pair} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", p, fi.Mode().Perm(), err)
		}
	}
	secret := []byte("hunter2")
	enc := k.Encrypt(secret)
	if bytes.Contains(enc, secret) {
		t.Fatal("ciphertext contains the plaintext")
	}
	// The same keys after a restart.
	k2, err := credential.LoadKeys(rest, pair)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k2.Decrypt(enc); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("Decrypt after reload = %q, %v", got, err)
	}
	if k2.PublicKey() != k.PublicKey() {
		t.Error("public key changed across a reload")
	}
	sealed, err := credential.Seal(k.PublicKey(), secret)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := k2.OpenSealed(sealed); err != nil || !bytes.Equal(got, secret) {
		t.Errorf("OpenSealed = %q, %v", got, err)
	}
	other, _ := credential.LoadKeys(filepath.Join(dir, "o1"), filepath.Join(dir, "o2"))
	if _, err := other.OpenSealed(sealed); err == nil {
		t.Error("a box sealed to one gateway opened with another's key")
	}
	enc[len(enc)-1] ^= 1
	if _, err := k.Decrypt(enc); err == nil {
		t.Error("tampered ciphertext decrypted")
	}
}

// TestFingerprint: a fingerprint is keyed: it cannot be reproduced from
// the username and password alone (before issue 12 it was the unsalted
// sha256("robot\x00hunter2")[:12], an offline oracle for guessed
// passwords). The same keys and tenant give the same value (replicas
// sharing --secrets-key agree, and a gateway holding the credential is
// recognised); a new secret, another tenant or other keys give another.
func TestFingerprint(t *testing.T) {
	load := func() *credential.Keys {
		dir := t.TempDir()
		k, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k, other := load(), load()
	basic := func(password string) *fleetv1.Credential {
		return &fleetv1.Credential{Registry: "quay.io/acme", Kind: &fleetv1.Credential_Basic{Basic: &fleetv1.BasicAuth{Username: "robot", Password: password}}}
	}
	fp := k.Fingerprint("acme", basic("hunter2"))
	sum := sha256.Sum256([]byte("robot\x00hunter2"))
	if unsalted := hex.EncodeToString(sum[:])[:12]; fp == unsalted || len(fp) != 12 {
		t.Errorf("fingerprint %q, want 12 hex digits that are not the unsalted SHA-256 %q", fp, unsalted)
	}
	if again := k.Fingerprint("acme", basic("hunter2")); again != fp {
		t.Errorf("same keys, tenant and secret: %q, want %q", again, fp)
	}
	for name, got := range map[string]string{
		"rotated password": k.Fingerprint("acme", basic("hunter3")),
		"another tenant":   k.Fingerprint("globex", basic("hunter2")),
		"other keys":       other.Fingerprint("acme", basic("hunter2")),
	} {
		if got == fp {
			t.Errorf("%s: fingerprint %q unchanged", name, got)
		}
	}
	if got := k.Fingerprint("acme", &fleetv1.Credential{Registry: "quay.io", Kind: &fleetv1.Credential_Anonymous{}}); got != "" {
		t.Errorf("anonymous credential fingerprint %q, want none", got)
	}
}
