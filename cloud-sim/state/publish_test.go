package state

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// failoverJSFake answers batched writes as a cluster losing a server
// does, by a script per key and attempt: "ok", "lost" (the write lands,
// its acknowledgement does not come: the client times out), "noresp" (no
// responder: not written) or "conflict" (another replica wrote the key).
type failoverJSFake struct {
	jetstream.JetStream
	script map[string][]string

	mu       sync.Mutex
	attempts map[string]int    // guarded by mu
	stored   map[string][]byte // guarded by mu
	seq      uint64            // guarded by mu
}

func (js *failoverJSFake) PublishAsync(subject string, data []byte, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	key := subject[strings.LastIndex(subject, ".")+1:]
	n := js.attempts[key]
	js.attempts[key]++
	what := "ok"
	if n < len(js.script[key]) {
		what = js.script[key][n]
	}
	f := &fakeFuture{ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	switch what {
	case "ok":
		js.seq++
		js.stored[key] = data
		f.ok <- &jetstream.PubAck{Sequence: js.seq}
	case "lost":
		js.seq++
		js.stored[key] = data
		f.err <- jetstream.ErrAsyncPublishTimeout
	case "noresp":
		f.err <- nats.ErrNoResponders
	case "conflict":
		f.err <- &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}
	default:
		f.err <- &jetstream.APIError{ErrorCode: jetstream.JSErrCodeMessageNotFound, Description: what}
	}
	return f, nil
}

// Get is the bucket's read, for the landed check.
func (js *failoverJSFake) Get(_ context.Context, key string) (jetstream.KeyValueEntry, error) {
	js.mu.Lock()
	defer js.mu.Unlock()
	v, ok := js.stored[key]
	if !ok {
		return nil, jetstream.ErrKeyNotFound
	}
	return storedEntry{kve(key, js.seq), v}, nil
}

type storedEntry struct {
	jetstream.KeyValueEntry
	value []byte
}

func (e storedEntry) Value() []byte { return e.value }

type fakeFuture struct {
	jetstream.PubAckFuture
	ok  chan *jetstream.PubAck
	err chan error
}

func (f *fakeFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f *fakeFuture) Err() <-chan error            { return f.err }

// fakeBucket reads from the fake JetStream.
type fakeBucket struct {
	bucket
	js *failoverJSFake
}

func (kv fakeBucket) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	return kv.js.Get(ctx, key)
}

// Batched writes lost to a failover are sent again; a compare-and-set
// write whose first attempt landed without its acknowledgement is not
// reported as a conflict with itself; a real conflict and a real refusal
// are reported. Before, a write whose server died was awaited until the
// caller's context ended, and the whole batch failed.
func TestPutIfManyRidesOutAFailover(t *testing.T) {
	js := &failoverJSFake{
		script: map[string][]string{
			"landed":  {"lost", "conflict"},
			"resent":  {"noresp", "noresp", "ok"},
			"other":   {"conflict"},
			"written": {"ok"},
		},
		attempts: map[string]int{}, stored: map[string][]byte{},
	}
	st := &Store{js: js, kvs: map[Bucket]bucket{Gateways: fakeBucket{js: js}}, log: slog.New(slog.DiscardHandler)}
	batch := map[string]Versioned{}
	for k := range js.script {
		batch[k] = Versioned{Value: k, Revision: 0}
	}
	revs, conflicts, err := st.PutIfMany(t.Context(), Gateways, batch)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(revs)); !slices.Equal(got, []string{"landed", "resent", "written"}) {
		t.Errorf("written %v; want [landed resent written]", got)
	}
	if !slices.Equal(conflicts, []string{"other"}) {
		t.Errorf("conflicts %v; want [other]: only another replica's write conflicts", conflicts)
	}
	if js.attempts["resent"] != 3 || js.attempts["other"] != 1 {
		t.Errorf("attempts %v; want resent 3 (sent until it landed), other 1", js.attempts)
	}

	// A refusal that is no failover fails the batch, naming it.
	js.script = map[string][]string{"bad": {"refused"}}
	js.attempts = map[string]int{}
	err = st.PutMany(t.Context(), Gateways, map[string]any{"bad": 1})
	if err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("PutMany with a refused write: %v; want its error", err)
	}
}
