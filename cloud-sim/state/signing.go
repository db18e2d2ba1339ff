package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SigningKeys are a tenant's command-signing keys, in the Meta bucket under
// Key("command-signing-keys", tenant).
type SigningKeys struct {
	Tenant string       `json:"tenant"`
	Keys   []SigningKey `json:"keys"`
}

// SigningKey is one Ed25519 command-signing key, its private key encrypted
// with the controller's at-rest key.
type SigningKey struct {
	ID         string    `json:"id"`
	PublicKey  []byte    `json:"publicKey"`
	PrivateKey []byte    `json:"privateKey"`
	Signer     bool      `json:"signer,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
}

// Modify reads the value under key into v (leaving v as it is when there
// is none), calls fn with whether there was one, and stores v if fn
// returns nil, with compare-and-set on the bucket revision: when another
// replica wrote the key in between, it reads again and calls fn again.
func (s *Store) Modify(ctx context.Context, b Bucket, key string, v any, fn func(found bool) error) error {
	kv := s.kvs[b]
	for range 10 {
		e, err := kv.Get(ctx, key)
		found := err == nil
		var rev uint64
		switch {
		case found:
			if err := json.Unmarshal(e.Value(), v); err != nil {
				return fmt.Errorf("state: decode %s: %w", b, err)
			}
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return fmt.Errorf("state: get %s: %w", b, err)
		}
		if err := fn(found); err != nil {
			return err
		}
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("state: encode %s: %w", b, err)
		}
		if found {
			_, err = kv.Update(ctx, key, data, rev)
		} else {
			_, err = kv.Create(ctx, key, data)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return fmt.Errorf("state: put %s: %w", b, err)
		}
	}
	return fmt.Errorf("state: %s: too many concurrent writers of one key", b)
}

// isWrongSequence reports whether err is the refusal of an Update whose
// revision is no longer the latest: code 10071 from a single server,
// 10164 from a replicated bucket (both wrapped in ErrKeyRevisionMismatch).
func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
