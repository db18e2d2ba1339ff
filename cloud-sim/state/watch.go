package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Entry is one value of a bucket with its revision: the JetStream
// sequence of the write, which every replica sees the same.
type Entry struct {
	Key      string
	Value    []byte
	Revision uint64
	// Deleted is set for a key that was deleted (Value is empty).
	Deleted bool
}

// Watch calls fn with every value of the bucket, then with every change
// any replica makes to it, in the order the store took them, until ctx
// ends or stop is called. It returns once fn has seen the values stored
// when it was called; fn runs on one goroutine and must not block long.
func (s *Store) Watch(ctx context.Context, b Bucket, fn func(Entry)) (stop func(), err error) {
	w, err := s.kvs[b].WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("state: watch %s: %w", b, err)
	}
	loaded := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		initial := true
		for e := range w.Updates() {
			if e == nil { // the stored values are done; changes follow
				if initial {
					initial = false
					close(loaded)
				}
				continue
			}
			op := e.Operation()
			fn(Entry{Key: e.Key(), Value: e.Value(), Revision: e.Revision(), Deleted: op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge})
		}
		if initial {
			close(loaded)
		}
	}()
	select {
	case <-loaded:
	case <-ctx.Done():
		_ = w.Stop()
		<-done
		return nil, fmt.Errorf("state: watch %s: %w", b, ctx.Err())
	}
	return func() { _ = w.Stop(); <-done }, nil
}

// GetEntry returns the value under key with its revision.
func (s *Store) GetEntry(ctx context.Context, b Bucket, key string) (Entry, error) {
	e, err := s.kvs[b].Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Entry{Key: key}, ErrNotFound
	}
	if err != nil {
		return Entry{Key: key}, fmt.Errorf("state: get %s: %w", b, err)
	}
	return Entry{Key: key, Value: e.Value(), Revision: e.Revision()}, nil
}

// Versioned is a value to write only over the revision the writer read
// (0: only if the key holds nothing).
type Versioned struct {
	Value    any
	Revision uint64
}

// ErrConflict is reported for a key another replica wrote since the
// writer read it.
var ErrConflict = errors.New("written by another replica since it was read")

// PutIfMany writes every value of batch as JSON over the revision given
// with it, at once, like PutMany. It returns the new revision of each key
// written; a key another replica wrote since is left out of it and
// listed in conflicts, for the caller to read, merge and write again.
func (s *Store) PutIfMany(ctx context.Context, b Bucket, batch map[string]Versioned) (revs map[string]uint64, conflicts []string, err error) {
	type pending struct {
		key string
		f   jetstream.PubAckFuture
	}
	revs = make(map[string]uint64, len(batch))
	var errs []error
	const chunk = 1000 // see PutMany
	futures := make([]pending, 0, chunk)
	await := func() error {
		for _, p := range futures {
			select {
			case ack := <-p.f.Ok():
				revs[p.key] = ack.Sequence
			case err := <-p.f.Err():
				if isConflict(err) {
					conflicts = append(conflicts, p.key)
				} else {
					errs = append(errs, err)
				}
			case <-ctx.Done():
				return fmt.Errorf("state: put %s: %w", b, ctx.Err())
			}
		}
		futures = futures[:0]
		return nil
	}
	for key, v := range batch {
		data, err := json.Marshal(v.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("state: encode %s: %w", b, err)
		}
		f, err := s.js.PublishAsync("$KV."+string(b)+"."+key, data, jetstream.WithExpectLastSequencePerSubject(v.Revision))
		if err != nil {
			return nil, nil, fmt.Errorf("state: put %s: %w", b, err)
		}
		if futures = append(futures, pending{key, f}); len(futures) == chunk {
			if err := await(); err != nil {
				return nil, nil, err
			}
		}
	}
	if err := await(); err != nil {
		return nil, nil, err
	}
	if len(errs) > 0 {
		return revs, conflicts, fmt.Errorf("state: put %s: %d of %d failed: %w", b, len(errs), len(batch), errs[0])
	}
	return revs, conflicts, nil
}

// isConflict reports whether err is JetStream's refusal of a write whose
// expected last sequence is not the subject's (10164 on replicated
// streams).
func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
