package cmdkeys_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/cmdkeys"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
)

func setup(t *testing.T) (*state.Store, *credential.Keys) {
	t.Helper()
	st, err := state.Open(context.Background(), state.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	return st, keys
}

func verifies(t *testing.T, pubs []cmdsig.PublicKey, keyID, sig string) bool {
	t.Helper()
	v, err := cmdsig.NewVerifier(pubs)
	if err != nil {
		t.Fatal(err)
	}
	return v.Verify("fleet/v1/acme/gw-1/cmd/rebirth", "application/json", []byte("{}"), keyID, sig) == nil
}

// TestRotation: a tenant's first key is made on first use and stored
// encrypted, shared by replicas; after a rotation the new key signs and
// both are listed; a retired key is no longer listed; the signer cannot be
// retired.
func TestRotation(t *testing.T) {
	ctx := context.Background()
	st, cipher := setup(t)
	a, _ := cmdkeys.New(cmdkeys.Config{Store: st, Cipher: cipher})
	b, _ := cmdkeys.New(cmdkeys.Config{Store: st, Cipher: cipher, CacheFor: 1}) // a replica that always reads the store

	first, err := a.Public(ctx, "acme")
	if err != nil || len(first) != 1 {
		t.Fatalf("Public = %v, %v; want the first key", first, err)
	}
	var rec state.SigningKeys
	if err := st.Get(ctx, state.Meta, state.Key("command-signing-keys", "acme"), &rec); err != nil {
		t.Fatal(err)
	}
	if raw, _ := cipher.Decrypt(rec.Keys[0].PrivateKey); len(raw) == 0 || bytes.Contains(rec.Keys[0].PrivateKey, raw) {
		t.Error("the private key is not encrypted at rest")
	}
	kid, sig, err := b.Sign(ctx, "acme", "fleet/v1/acme/gw-1/cmd/rebirth", "application/json", []byte("{}"))
	if err != nil || kid != first[0].ID || !verifies(t, first, kid, sig) {
		t.Fatalf("replica signs with %s (%v), want the shared key %s", kid, err, first[0].ID)
	}

	rotated, err := a.Rotate(ctx, "acme")
	if err != nil || len(rotated) != 2 || !rotated[0].Signer || rotated[1].ID != first[0].ID || rotated[1].Signer {
		t.Fatalf("Rotate = %+v, %v; want a new signer first and the old key still listed", rotated, err)
	}
	both, _ := b.Public(ctx, "acme")
	kid, sig, _ = b.Sign(ctx, "acme", "fleet/v1/acme/gw-1/cmd/rebirth", "application/json", []byte("{}"))
	if kid != rotated[0].ID || !verifies(t, both, kid, sig) || verifies(t, first, kid, sig) {
		t.Errorf("after rotation the replica signs with %s, want %s: verifiable with both keys listed, not with the old one alone", kid, rotated[0].ID)
	}

	if _, err := a.Retire(ctx, "acme", rotated[0].ID); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("retire the signer: err = %v, want invalid argument", err)
	}
	if _, err := a.Retire(ctx, "acme", "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("retire an unknown key: err = %v, want not found", err)
	}
	left, err := a.Retire(ctx, "acme", first[0].ID)
	if err != nil || len(left) != 1 || left[0].ID != rotated[0].ID {
		t.Fatalf("Retire = %+v, %v; want only the new key", left, err)
	}
	if pubs, _ := b.Public(ctx, "acme"); len(pubs) != 1 || pubs[0].ID != rotated[0].ID {
		t.Errorf("a replica lists %v after retirement, want only %s", pubs, rotated[0].ID)
	}
	if other, _ := a.Public(ctx, "other"); len(other) != 1 || other[0].ID == rotated[0].ID {
		t.Errorf("another tenant's keys = %v, want its own", other)
	}
}

// TestStagedRotation: a key added is valid but does not sign until Rotate
// makes it the signer, so gateways can be given it first.
func TestStagedRotation(t *testing.T) {
	ctx := context.Background()
	st, cipher := setup(t)
	k, _ := cmdkeys.New(cmdkeys.Config{Store: st, Cipher: cipher})
	first, _ := k.List(ctx, "acme")
	staged, err := k.Add(ctx, "acme")
	if err != nil || len(staged) != 2 || staged[0].ID != first[0].ID || !staged[0].Signer || staged[1].Signer {
		t.Fatalf("Add = %+v, %v; want the first key still signing and the new one listed", staged, err)
	}
	if kid, _, _ := k.Sign(ctx, "acme", "fleet/v1/acme/gw-1/cmd/rebirth", "", nil); kid != first[0].ID {
		t.Errorf("signed with %s while staged, want %s", kid, first[0].ID)
	}
	rotated, err := k.Rotate(ctx, "acme")
	if err != nil || len(rotated) != 2 || rotated[0].ID != staged[1].ID || !rotated[0].Signer {
		t.Fatalf("Rotate = %+v, %v; want the staged key %s signing", rotated, err, staged[1].ID)
	}
	if kid, _, _ := k.Sign(ctx, "acme", "fleet/v1/acme/gw-1/cmd/rebirth", "", nil); kid != staged[1].ID {
		t.Errorf("signed with %s after rotation, want %s", kid, staged[1].ID)
	}
}
