package credential_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/internal/credential"
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
