package state

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watchHeartbeat is how often the server of a watch's consumer tells the
// client it is alive while the bucket is idle. nats.go makes an ordered
// consumer again once it has heard nothing for two to four heartbeats;
// its KV watch asks for one every 5 s, so a watch whose consumer lived on
// a NATS server that died delivered nothing for 20 s, and a replica
// showed gateways' older statuses long after the others had their new
// ones (TestScaleOut, with a NATS node killed mid-rollout).
const watchHeartbeat = 500 * time.Millisecond

// watchOpts say what a watch of a bucket delivers.
type watchOpts struct {
	// after: every write after this revision, in order; 0: the latest
	// value of each key, then every change.
	after uint64
}

// bucket is a key-value bucket whose watches notice the loss of their
// consumer's server within a few watchHeartbeats.
type bucket interface {
	jetstream.KeyValue
	watch(ctx context.Context, o watchOpts) (jetstream.KeyWatcher, error)
	// subjects is how many keys the bucket's stream holds a message for
	// (a deleted key's marker too) and, when withKeys, their names; asked
	// again through a failover, as Get is.
	subjects(ctx context.Context, withKeys bool) (uint64, []string, error)
}

func (kv failoverKV) subjects(ctx context.Context, withKeys bool) (uint64, []string, error) {
	prefix := "$KV." + kv.Bucket() + "."
	var opts []nats.JSOpt
	if withKeys {
		opts = append(opts, &nats.StreamInfoRequest{SubjectsFilter: prefix + ">"})
	}
	info, err := retry(ctx, func(ctx context.Context) (*nats.StreamInfo, error) {
		return kv.push.StreamInfo("KV_"+kv.Bucket(), append(opts, nats.Context(ctx))...)
	})
	if err != nil {
		return 0, nil, err
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subject, prefix))
	}
	return info.State.NumSubjects, keys, nil
}

// watch makes a watch of the bucket as nats.go's WatchAll does (an
// ordered consumer: the values, nil once the initial ones are delivered,
// then the changes), but with a heartbeat of watchHeartbeat. It ends
// when ctx ends, when Stop is called, or when nats.go gives up making its
// consumer again (the channel closes).
func (kv failoverKV) watch(ctx context.Context, o watchOpts) (jetstream.KeyWatcher, error) {
	name := kv.Bucket()
	prefix := "$KV." + name + "."
	w := &keyWatch{bucket: name,
		updates: make(chan jetstream.KeyValueEntry, 256), stopped: make(chan struct{})}
	opts := []nats.SubOpt{nats.BindStream("KV_" + name), nats.OrderedConsumer(),
		nats.IdleHeartbeat(watchHeartbeat), nats.Context(ctx)}
	if o.after > 0 {
		opts = append(opts, nats.StartSequence(o.after+1))
	} else {
		opts = append(opts, nats.DeliverLastPerSubject())
	}
	// Held until the initial state is known: deliveries wait for it.
	w.mu.Lock()
	defer w.mu.Unlock()
	sub, err := kv.push.Subscribe(prefix+">", func(m *nats.Msg) { w.deliver(m, prefix) }, opts...)
	if err != nil {
		return nil, err
	}
	// Called on the goroutine that delivers, after its last delivery.
	sub.SetClosedHandler(func(string) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.close()
	})
	w.sub = sub
	if !sub.IsValid() { // closed before the handler was set: it may not run
		w.close()
		return w, nil
	}
	if pending, err := sub.InitialConsumerPending(); err == nil {
		if pending == 0 {
			w.initDone = true
			w.updates <- nil // room: nothing was delivered before
		} else {
			w.initPending = pending
		}
	}
	return w, nil
}

// keyWatch is one watch made by failoverKV.watch.
type keyWatch struct {
	bucket   string
	updates  chan jetstream.KeyValueEntry
	stopped  chan struct{} // closed by Stop: deliveries are dropped
	stopOnce sync.Once
	sub      *nats.Subscription // set before any delivery

	mu       sync.Mutex // held while delivering
	closed   bool       // guarded by mu: updates is closed
	initDone bool       // guarded by mu
	// initKeys are the keys delivered before initDone (guarded by mu):
	// keys, not deliveries, are counted against initPending. A key
	// written again while the initial values are delivered comes twice
	// (its new value after the consumer passed its old one), and one whose
	// old value was replaced before its turn comes once, later: counting
	// deliveries, the nil came before such a key. (The server's counts,
	// initPending and NumPending, can also be short while keys are
	// written: a listing checks what it got, Store.listMissed.)
	initKeys    map[string]struct{}
	initPending uint64 // guarded by mu
}

func (w *keyWatch) Updates() <-chan jetstream.KeyValueEntry { return w.updates }

// Stop ends the watch; the channel closes once its delivery goroutine
// has ended.
func (w *keyWatch) Stop() error {
	w.stopOnce.Do(func() { close(w.stopped) })
	return w.sub.Unsubscribe()
}

// deliver hands m to the reader as an entry, and nil after the last of
// the initial values.
func (w *keyWatch) deliver(m *nats.Msg, prefix string) {
	meta, err := m.Metadata()
	if err != nil || !strings.HasPrefix(m.Subject, prefix) || len(m.Subject) == len(prefix) {
		return
	}
	e := &keyEntry{bucket: w.bucket, key: m.Subject[len(prefix):], value: m.Data, revision: meta.Sequence.Stream,
		created: meta.Timestamp, delta: meta.NumPending, op: operation(m.Header)}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.send(e)
	if !w.initDone {
		if w.initKeys == nil {
			w.initKeys = map[string]struct{}{}
		}
		w.initKeys[e.key] = struct{}{}
		if uint64(len(w.initKeys)) >= w.initPending || meta.NumPending == 0 {
			w.initDone, w.initKeys = true, nil
			w.send(nil)
		}
	}
}

// close ends the updates once. w.mu is held.
func (w *keyWatch) close() {
	if !w.closed {
		w.closed = true
		close(w.updates)
	}
}

// send waits for the reader to take e, unless the watch is stopped or
// its updates are closed. w.mu is held.
func (w *keyWatch) send(e jetstream.KeyValueEntry) {
	if w.closed {
		return
	}
	select {
	case w.updates <- e:
	case <-w.stopped:
	}
}

// operation is what a stored message did to its key (nats.go's headers).
func operation(h nats.Header) jetstream.KeyValueOp {
	switch h.Get("KV-Operation") {
	case "DEL":
		return jetstream.KeyValueDelete
	case "PURGE":
		return jetstream.KeyValuePurge
	}
	switch h.Get(jetstream.MarkerReasonHeader) {
	case "MaxAge", "Purge":
		return jetstream.KeyValuePurge
	case "Remove":
		return jetstream.KeyValueDelete
	}
	return jetstream.KeyValuePut
}

// keyEntry is one value a keyWatch delivers.
type keyEntry struct {
	bucket, key     string
	value           []byte
	revision, delta uint64
	created         time.Time
	op              jetstream.KeyValueOp
}

func (e *keyEntry) Bucket() string                  { return e.bucket }
func (e *keyEntry) Key() string                     { return e.key }
func (e *keyEntry) Value() []byte                   { return e.value }
func (e *keyEntry) Revision() uint64                { return e.revision }
func (e *keyEntry) Created() time.Time              { return e.created }
func (e *keyEntry) Delta() uint64                   { return e.delta }
func (e *keyEntry) Operation() jetstream.KeyValueOp { return e.op }
