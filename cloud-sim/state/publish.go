package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// asyncTimeout is how long a batched write waits for its acknowledgement
// before it counts as lost and is sent again. Without one, a write whose
// server died after taking it is awaited until the caller's context ends
// (the scheduler's tick: 30 s, every tick, while its lease lapses).
const asyncTimeout = 10 * time.Second

// pubItem is one write of a batch: the key's value, and the revision it
// must be written over when expect is set.
type pubItem struct {
	key    string
	data   []byte
	expect bool
	rev    uint64
}

// batchResult is what became of a batch: the revision of each key written
// and the error of each key refused. A key sent again after a lost
// acknowledgement whose second write is refused as a conflict is looked
// up: when it holds the value written, the first write landed, and it
// counts as written.
type batchResult struct {
	revs    map[string]uint64
	refused map[string]error
}

// publishAll writes items to bucket b at once, awaiting the
// acknowledgements in chunks, and sends again the writes lost to a
// failover (no responder, no acknowledgement in asyncTimeout) until they
// land or ctx ends (the error).
func (s *Store) publishAll(ctx context.Context, b Bucket, items []pubItem) (batchResult, error) {
	res := batchResult{revs: make(map[string]uint64, len(items)), refused: map[string]error{}}
	resent := map[string]bool{}
	for pending := items; len(pending) > 0; {
		lost, err := s.publishRound(ctx, b, pending, resent, res)
		if err != nil {
			return res, err
		}
		if len(lost) > 0 {
			if err := pause(ctx, retryWait); err != nil {
				return res, fmt.Errorf("state: put %s: %d writes lost to a failover: %w", b, len(lost), err)
			}
			for _, it := range lost {
				resent[it.key] = true
			}
		}
		pending = lost
	}
	return res, nil
}

// publishRound sends pending once and returns the writes to send again.
func (s *Store) publishRound(ctx context.Context, b Bucket, pending []pubItem, resent map[string]bool, res batchResult) ([]pubItem, error) {
	// In chunks: the client stalls with more than 4,000 unacknowledged
	// asynchronous publishes.
	const chunk = 1000
	type sent struct {
		it pubItem
		f  jetstream.PubAckFuture
	}
	var lost []pubItem
	futures := make([]sent, 0, chunk)
	await := func() error {
		for _, p := range futures {
			select {
			case ack := <-p.f.Ok():
				res.revs[p.it.key] = ack.Sequence
			case err := <-p.f.Err():
				switch {
				case isConflict(err) && resent[p.it.key]:
					if rev, ok := s.landed(ctx, b, p.it); ok {
						res.revs[p.it.key] = rev
						continue
					}
					res.refused[p.it.key] = err
				case transient(err) || errors.Is(err, jetstream.ErrAsyncPublishTimeout):
					lost = append(lost, p.it)
				default:
					res.refused[p.it.key] = err
				}
			case <-ctx.Done():
				return fmt.Errorf("state: put %s: %w", b, ctx.Err())
			}
		}
		futures = futures[:0]
		return nil
	}
	for _, it := range pending {
		var opts []jetstream.PublishOpt
		if it.expect {
			opts = append(opts, jetstream.WithExpectLastSequencePerSubject(it.rev))
		}
		f, err := s.js.PublishAsync("$KV."+string(b)+"."+it.key, it.data, opts...)
		if err != nil {
			return nil, fmt.Errorf("state: put %s: %w", b, err)
		}
		if futures = append(futures, sent{it, f}); len(futures) == chunk {
			if err := await(); err != nil {
				return nil, err
			}
		}
	}
	if err := await(); err != nil {
		return nil, err
	}
	return lost, nil
}

// landed reports whether the key of it holds its value now, at a revision
// after the one it was written over: the write whose acknowledgement was
// lost.
func (s *Store) landed(ctx context.Context, b Bucket, it pubItem) (uint64, bool) {
	e, err := s.kvs[b].Get(ctx, it.key)
	if err != nil || e.Revision() <= it.rev || !bytes.Equal(e.Value(), it.data) {
		return 0, false
	}
	return e.Revision(), true
}
