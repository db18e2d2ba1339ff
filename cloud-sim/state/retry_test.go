package state

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// lossyKV is a bucket of one key whose writes fail as scripted: each
// call takes the next outcome; "lost" stores the value but answers with
// a timeout, as a write whose acknowledgement a failover dropped.
type lossyKV struct {
	jetstream.KeyValue // nil: only the methods below are called
	outcomes           []string
	value              []byte
	rev                uint64
	calls              int
}

func (kv *lossyKV) next() string {
	kv.calls++
	if len(kv.outcomes) == 0 {
		return "ok"
	}
	o := kv.outcomes[0]
	kv.outcomes = kv.outcomes[1:]
	return o
}

func (kv *lossyKV) write(value []byte, last uint64) (uint64, error) {
	switch kv.next() {
	case "no responders":
		return 0, nats.ErrNoResponders
	case "lost":
		kv.value, kv.rev = value, kv.rev+1
		return 0, context.DeadlineExceeded
	case "other":
		kv.value, kv.rev = []byte("theirs"), kv.rev+1
		return 0, fmt.Errorf("wrong last sequence: %w", jetstream.ErrKeyRevisionMismatch)
	}
	if kv.rev != last {
		return 0, fmt.Errorf("wrong last sequence: %w", jetstream.ErrKeyRevisionMismatch)
	}
	kv.value, kv.rev = value, kv.rev+1
	return kv.rev, nil
}

func (kv *lossyKV) Update(_ context.Context, _ string, value []byte, last uint64) (uint64, error) {
	return kv.write(value, last)
}

func (kv *lossyKV) Get(context.Context, string) (jetstream.KeyValueEntry, error) {
	return entry{value: kv.value, rev: kv.rev}, nil
}

type entry struct {
	jetstream.KeyValueEntry
	value []byte
	rev   uint64
}

func (e entry) Value() []byte    { return e.value }
func (e entry) Revision() uint64 { return e.rev }

// TestFailoverUpdate: an Update is sent again through a failover; when
// the first one landed but its answer was lost, the refusal of the second
// counts as success; when another writer's value is there, it is the
// conflict the caller handles.
func TestFailoverUpdate(t *testing.T) {
	tests := []struct {
		name     string
		outcomes []string
		wantErr  error
		want     string
	}{
		{"no responder, then ok", []string{"no responders", "no responders"}, nil, "mine"},
		{"lost acknowledgement", []string{"lost"}, nil, "mine"},
		{"another writer first", []string{"other"}, jetstream.ErrKeyRevisionMismatch, "theirs"},
		{"lost, then another writer", []string{"lost", "other"}, jetstream.ErrKeyRevisionMismatch, "theirs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &lossyKV{outcomes: tt.outcomes, value: []byte("old"), rev: 1}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := failoverKV{KeyValue: fake}.Update(ctx, "k", []byte("mine"), 1)
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if string(fake.value) != tt.want {
				t.Errorf("stored %q, want %q", fake.value, tt.want)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{nats.ErrNoResponders, true},
		{fmt.Errorf("put: %w", jetstream.ErrNoStreamResponse), true},
		{context.DeadlineExceeded, true},
		{&jetstream.APIError{ErrorCode: errCodeClusterNotAvailable}, true},
		{jetstream.ErrKeyNotFound, false},
		{jetstream.ErrKeyRevisionMismatch, false},
		{context.Canceled, false},
		{&jetstream.APIError{ErrorCode: errCodeInsufficientResources}, false},
	}
	for _, tt := range tests {
		if got := transient(tt.err); got != tt.want {
			t.Errorf("transient(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
