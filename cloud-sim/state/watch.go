package state

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

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
//
// JetStream delivers a watch through a consumer on one server. When that
// server dies the client makes the consumer again once it misses the
// consumer's heartbeats (watchHeartbeat), but it gives up on errors a
// cluster electing leaders answers (no responders), and the watch then
// ends without a word. Watch makes it again, from the revision after the
// last one fn saw, for as long as ctx lasts.
func (s *Store) Watch(ctx context.Context, b Bucket, fn func(Entry)) (stop func(), err error) {
	wctx, cancel := context.WithCancel(ctx)
	w, err := s.watchAll(wctx, b, watchOpts{})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("state: watch %s: %w", b, err)
	}
	f := &follow{store: s, bucket: b, fn: fn, loaded: make(chan struct{}), done: make(chan struct{}), cur: w}
	stopAll := context.AfterFunc(wctx, f.stopCurrent)
	go f.run(wctx)
	select {
	case <-f.loaded:
	case <-ctx.Done():
		cancel()
		<-f.done
		stopAll()
		return nil, fmt.Errorf("state: watch %s: %w", b, ctx.Err())
	}
	return func() { cancel(); <-f.done }, nil
}

// follow is one Watch: the watcher in use, made again when lost.
type follow struct {
	store  *Store
	bucket Bucket
	fn     func(Entry)
	loaded chan struct{} // closed once the initial values are seen
	done   chan struct{} // closed when run returns

	mu  sync.Mutex
	cur jetstream.KeyWatcher // guarded by mu
}

func (f *follow) stopCurrent() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur != nil {
		_ = f.cur.Stop()
	}
}

func (f *follow) run(ctx context.Context) {
	defer close(f.done)
	initial := true
	var last uint64
	for {
		f.mu.Lock()
		w := f.cur
		f.mu.Unlock()
		for e := range w.Updates() {
			if e == nil { // the stored values are done; changes follow
				if initial {
					initial = false
					close(f.loaded)
				}
				continue
			}
			last = e.Revision()
			op := e.Operation()
			f.fn(Entry{Key: e.Key(), Value: e.Value(), Revision: e.Revision(), Deleted: op == jetstream.KeyValueDelete || op == jetstream.KeyValuePurge})
		}
		if ctx.Err() != nil {
			if initial {
				close(f.loaded)
			}
			return
		}
		f.store.log.Warn("state: a watch lost its consumer; making it again", "bucket", string(f.bucket), "after", last)
		next := f.rewatch(ctx, last)
		if next == nil {
			if initial {
				close(f.loaded)
			}
			return
		}
		f.mu.Lock()
		f.cur = next
		f.mu.Unlock()
		if ctx.Err() != nil { // stopped while it was being made: stopCurrent ran before
			_ = next.Stop()
		}
	}
}

// rewatch makes the watch again, after revision last, until it succeeds
// or ctx ends (nil).
func (f *follow) rewatch(ctx context.Context, last uint64) jetstream.KeyWatcher {
	for {
		if err := pause(ctx, retryWait); err != nil {
			return nil
		}
		w, err := f.store.watchAll(ctx, f.bucket, watchOpts{after: last})
		if err == nil {
			return w
		}
		f.store.log.Warn("state: watch not made again yet", "bucket", string(f.bucket), "err", err)
	}
}

// watchAttempt bounds the making of a watch: the request that makes its
// consumer waits for as long as the watch's context lasts when the server
// it went to died meanwhile.
const watchAttempt = 5 * time.Second

// watchAll makes a watch of b that lasts until ctx ends, trying again
// every watchAttempt. nats.go ends a watch when the context it was made
// with ends, so each attempt has a context of its own, cancelled when the
// attempt is given up or when ctx ends.
func (s *Store) watchAll(ctx context.Context, b Bucket, o watchOpts) (jetstream.KeyWatcher, error) {
	type made struct {
		w   jetstream.KeyWatcher
		err error
	}
	for {
		actx, cancel := context.WithCancel(ctx)
		res := make(chan made, 1)
		go func() {
			w, err := s.kvs[b].watch(actx, o)
			res <- made{w, err}
		}()
		t := time.NewTimer(watchAttempt)
		select {
		case m := <-res:
			t.Stop()
			if m.err != nil {
				cancel()
				if transient(m.err) && ctx.Err() == nil {
					continue
				}
				return nil, m.err
			}
			context.AfterFunc(ctx, cancel)
			return m.w, nil
		case <-t.C:
			cancel() // the attempt's watch, if it is made after all, ends at once
			s.log.Warn("state: a watch took too long to make; trying again", "bucket", string(b))
		case <-ctx.Done():
			t.Stop()
			cancel()
			return nil, ctx.Err()
		}
	}
}

// pause waits d, or until ctx ends (its error).
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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

// PutIfMany writes every value of batch (see Encode) over the revision given
// with it, at once, like PutMany. It returns the new revision of each key
// written; a key another replica wrote since is left out of it and
// listed in conflicts, for the caller to read, merge and write again.
func (s *Store) PutIfMany(ctx context.Context, b Bucket, batch map[string]Versioned) (revs map[string]uint64, conflicts []string, err error) {
	items := make([]pubItem, 0, len(batch))
	for key, v := range batch {
		data, err := Encode(v.Value)
		if err != nil {
			return nil, nil, fmt.Errorf("state: encode %s: %w", b, err)
		}
		items = append(items, pubItem{key: key, data: data, expect: true, rev: v.Revision})
	}
	res, err := s.publishAll(ctx, b, items)
	if err != nil {
		return nil, nil, err
	}
	var errs []error
	for key, err := range res.refused {
		if isConflict(err) {
			conflicts = append(conflicts, key)
		} else {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return res.revs, conflicts, fmt.Errorf("state: put %s: %d of %d failed: %w", b, len(errs), len(batch), errs[0])
	}
	return res.revs, conflicts, nil
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
