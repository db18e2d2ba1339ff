package api

import (
	"context"
	"encoding/base64"
	"net/http"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/cmdkeys"
)

// SigningKey is one of a tenant's command-signing keys, never its private
// key. A listing {keys: [SigningKey]} is a valid --command-signing-keys
// file for the tenant's gateways.
type SigningKey struct {
	ID string `json:"id"`
	// PublicKey is the Ed25519 public key, standard base64.
	PublicKey string `json:"publicKey"`
	// Signer: the controller signs with this key; the others are valid.
	Signer    bool      `json:"signer,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
}

func (a *api) listSigningKeys(w http.ResponseWriter, r *http.Request) {
	a.signingKeys(w, r, http.StatusOK, a.c.CommandSigningKeys)
}

func (a *api) addSigningKey(w http.ResponseWriter, r *http.Request) {
	a.signingKeys(w, r, http.StatusCreated, a.c.AddCommandSigningKey)
}

func (a *api) rotateSigningKey(w http.ResponseWriter, r *http.Request) {
	a.signingKeys(w, r, http.StatusOK, a.c.RotateCommandSigningKey)
}

func (a *api) retireSigningKey(w http.ResponseWriter, r *http.Request) {
	a.signingKeys(w, r, http.StatusOK, func(ctx context.Context, tenant string) ([]cmdkeys.Key, error) {
		return a.c.RetireCommandSigningKey(ctx, tenant, r.PathValue("id"))
	})
}

func (a *api) signingKeys(w http.ResponseWriter, r *http.Request, status int, op func(context.Context, string) ([]cmdkeys.Key, error)) {
	keys, err := op(r.Context(), r.PathValue("tenant"))
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]SigningKey, len(keys))
	for i, k := range keys {
		out[i] = SigningKey{ID: k.ID, PublicKey: base64.StdEncoding.EncodeToString(k.PublicKey), Signer: k.Signer, CreatedAt: k.CreatedAt}
	}
	writeJSON(w, status, map[string]any{"keys": out})
}
