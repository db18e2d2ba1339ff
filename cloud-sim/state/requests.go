package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// Requests between replicas go over the NATS connection the store holds:
// a request is answered by whichever replica's handler replies (the
// others return nil and stay silent), and is lost, for the requester to
// retry, when none does.

// Serve calls fn with every request on subject; a non-nil result is sent
// back as the reply. Call stop to end it.
func (s *Store) Serve(subject string, fn func(data []byte) []byte) (stop func(), err error) {
	sub, err := s.nc.Subscribe(subject, func(m *nats.Msg) {
		if out := fn(m.Data); out != nil && m.Reply != "" {
			_ = m.Respond(out)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("state: serve %s: %w", subject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// ErrNoResponder is returned by Request when no replica answered.
var ErrNoResponder = errors.New("no replica answered")

// Request sends data on subject and returns the first reply, within ctx.
func (s *Store) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	m, err := s.nc.RequestWithContext(ctx, subject, data)
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return nil, fmt.Errorf("state: request %s: %w (%w)", subject, ErrNoResponder, err)
	}
	if err != nil {
		return nil, fmt.Errorf("state: request %s: %w", subject, err)
	}
	return m.Data, nil
}

// Broadcast publishes data on subject to every replica listening (Serve),
// without waiting: what a replica that is down misses is lost.
func (s *Store) Broadcast(subject string, data []byte) error {
	if err := s.nc.Publish(subject, data); err != nil {
		return fmt.Errorf("state: broadcast %s: %w", subject, err)
	}
	return nil
}

// Release gives up owner's lease on name at once (compare-and-set: a
// lease another replica took meanwhile is left alone), so that another
// replica can take it without waiting for it to lapse.
func (s *Store) Release(ctx context.Context, name, owner string) error {
	kv := s.kvs[Meta]
	key := Key("lease", name)
	e, err := kv.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("state: release %s: %w", name, err)
	}
	var cur Lease
	if json.Unmarshal(e.Value(), &cur) != nil || cur.Owner != owner {
		return nil
	}
	cur.Until = time.Time{}
	data, _ := json.Marshal(cur)
	if _, err := kv.Update(ctx, key, data, e.Revision()); err != nil {
		return fmt.Errorf("state: release %s: %w", name, err)
	}
	return nil
}
