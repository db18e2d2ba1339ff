package state

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// While a NATS server is lost, the streams it led elect a new leader
// (seconds): a write sent meanwhile finds no responder, or is dropped and
// never acknowledged. The store retries such writes until the caller's
// context ends, each attempt bounded so that a dropped one is sent again.
const (
	attemptTimeout = 2 * time.Second
	// failoverTimeout bounds the retries of a call whose context has no
	// deadline.
	failoverTimeout = 30 * time.Second
	retryWait       = 100 * time.Millisecond
)

// JetStream's answers while a stream or the cluster has no leader
// (nats-server's errors.json).
const (
	errCodeClusterNotAvailable jetstream.ErrorCode = 10008 // JSClusterNotAvailErr
	errCodeLastSeqNotReady     jetstream.ErrorCode = 10163 // JSStreamExpectedLastSeqPerSubjectNotReady
)

// transient reports whether err is a failover's: worth sending again.
func transient(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return true
	case errors.As(err, &apiErr):
		return apiErr.ErrorCode == errCodeClusterNotAvailable || apiErr.ErrorCode == errCodeLastSeqNotReady
	}
	return false
}

// retry calls op with a context of at most attemptTimeout until it
// succeeds, fails otherwise than transiently, or ctx ends.
func retry[T any](ctx context.Context, op func(context.Context) (T, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, failoverTimeout)
		defer cancel()
	}
	for {
		attempt, cancel := context.WithTimeout(ctx, attemptTimeout)
		v, err := op(attempt)
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(retryWait):
		}
	}
}

// failoverKV is a bucket whose reads and writes ride out a failover: Put,
// Get and Delete are sent again; Create and Update too, and when the
// first one landed but its acknowledgement was lost (the second is then
// refused), the value stored being the one written counts as success.
// Its watches (keywatch.go) are made through push.
type failoverKV struct {
	jetstream.KeyValue
	push nats.JetStreamContext
}

func (kv failoverKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return retry(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return kv.KeyValue.Get(ctx, key) })
}

func (kv failoverKV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	return retry(ctx, func(ctx context.Context) (uint64, error) { return kv.KeyValue.Put(ctx, key, value) })
}

func (kv failoverKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	_, err := retry(ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, kv.KeyValue.Delete(ctx, key, opts...)
	})
	return err
}

func (kv failoverKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	sent := false
	return retry(ctx, func(ctx context.Context) (uint64, error) {
		rev, err := kv.KeyValue.Create(ctx, key, value, opts...)
		if errors.Is(err, jetstream.ErrKeyExists) && sent {
			if landed, ok := kv.landed(ctx, key, value, 0); ok {
				return landed, nil
			}
		}
		sent = sent || transient(err)
		return rev, err
	})
}

func (kv failoverKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	sent := false
	return retry(ctx, func(ctx context.Context) (uint64, error) {
		rev, err := kv.KeyValue.Update(ctx, key, value, last)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && sent {
			if landed, ok := kv.landed(ctx, key, value, last); ok {
				return landed, nil
			}
		}
		sent = sent || transient(err)
		return rev, err
	})
}

// landed reports whether key now holds value at a revision after last:
// the write whose acknowledgement was lost (or one that wrote the same).
func (kv failoverKV) landed(ctx context.Context, key string, value []byte, last uint64) (uint64, bool) {
	e, err := kv.KeyValue.Get(ctx, key)
	if err != nil || e.Revision() <= last || !bytes.Equal(e.Value(), value) {
		return 0, false
	}
	return e.Revision(), true
}

// failoverJS sends publishes (the work queue's, which carry a message id
// the stream deduplicates) again through a failover.
type failoverJS struct {
	jetstream.JetStream
}

func (js failoverJS) Publish(ctx context.Context, subject string, data []byte, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return retry(ctx, func(ctx context.Context) (*jetstream.PubAck, error) {
		return js.JetStream.Publish(ctx, subject, data, opts...)
	})
}
