package state

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// droppingKV is a bucket whose watches are scripted: the n-th watch
// delivers scripts[n] (nil for the initial-values marker) and then, when
// lose[n] is set, ends its channel as nats.go does when it gives up
// making a lost consumer again.
type droppingKV struct {
	bucket
	scripts [][]jetstream.KeyValueEntry
	lose    []bool

	mu      sync.Mutex
	watches int          // guarded by mu
	afters  []uint64     // guarded by mu: the revision each watch resumed after
	open    []*fakeWatch // guarded by mu
}

func (kv *droppingKV) watch(_ context.Context, o watchOpts) (jetstream.KeyWatcher, error) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	n := kv.watches
	kv.watches++
	kv.afters = append(kv.afters, o.after)
	w := &fakeWatch{ch: make(chan jetstream.KeyValueEntry, 16), stopped: make(chan struct{})}
	kv.open = append(kv.open, w)
	if n >= len(kv.scripts) {
		return w, nil // delivers nothing until stopped
	}
	for _, e := range kv.scripts[n] {
		w.ch <- e
	}
	if kv.lose[n] {
		w.once.Do(func() { close(w.ch) })
	}
	return w, nil
}

type fakeWatch struct {
	ch      chan jetstream.KeyValueEntry
	once    sync.Once
	stopped chan struct{}
}

func (w *fakeWatch) Updates() <-chan jetstream.KeyValueEntry { return w.ch }
func (w *fakeWatch) Stop() error {
	w.once.Do(func() { close(w.ch) })
	return nil
}

type fakeEntry struct {
	jetstream.KeyValueEntry
	key string
	rev uint64
}

func (e fakeEntry) Key() string                     { return e.key }
func (e fakeEntry) Value() []byte                   { return []byte(e.key) }
func (e fakeEntry) Revision() uint64                { return e.rev }
func (e fakeEntry) Operation() jetstream.KeyValueOp { return jetstream.KeyValuePut }

func kve(key string, rev uint64) jetstream.KeyValueEntry { return fakeEntry{key: key, rev: rev} }

func droppingStore(kv *droppingKV) *Store {
	return &Store{kvs: map[Bucket]bucket{Gateways: kv}, log: slog.New(slog.DiscardHandler)}
}

// A watch whose consumer nats.go gave up on is made again after the last
// revision seen, and the changes after the loss still reach fn. Before,
// the watch ended silently and the replica stopped seeing the others'
// writes for good.
func TestWatchSurvivesALostConsumer(t *testing.T) {
	kv := &droppingKV{
		scripts: [][]jetstream.KeyValueEntry{
			{kve("a", 1), nil, kve("b", 2)},
			{nil, kve("c", 3)},
		},
		lose: []bool{true, false},
	}
	st := droppingStore(kv)
	var mu sync.Mutex
	var got []string
	stop, err := st.Watch(t.Context(), Gateways, func(e Entry) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, e.Key)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	testenv.Eventually(t, "the watch sees a, b and c: c came after the consumer was lost", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(got, []string{"a", "b", "c"})
	})
	kv.mu.Lock()
	afters := slices.Clone(kv.afters)
	kv.mu.Unlock()
	if !slices.Equal(afters, []uint64{0, 2}) {
		t.Errorf("watches resumed after revisions %v; want [0 2]: the second after revision 2", afters)
	}
	stop()
	kv.mu.Lock()
	defer kv.mu.Unlock()
	for i, w := range kv.open {
		if _, ok := <-w.ch; ok {
			t.Errorf("watch %d still open after stop", i)
		}
	}
}

// A listing whose consumer is lost is taken up where it stopped, each key
// once; before, the closed channel read as the end of the values and Each
// returned a partial listing without an error (a takeover then missed
// rollouts).
func TestEachSurvivesALostConsumer(t *testing.T) {
	kv := &droppingKV{
		scripts: [][]jetstream.KeyValueEntry{
			{kve("a", 1), kve("b", 2)},
			{kve("b", 4), kve("c", 5), nil},
		},
		lose: []bool{true, false},
	}
	var got []string
	err := droppingStore(kv).Each(t.Context(), Gateways, func(key string, _ []byte) error {
		got = append(got, key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("Each gave %v; want [a b c], each key once", got)
	}
}

// A replica's watches and listings ride out the loss of the server that
// led the bucket: the ordered consumer behind a watch lives on
// one server, and when it dies nats.go gives up making it again on the
// errors a cluster electing a leader answers.
func TestClusterWatchFollowsLeaderLoss(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*testenv.Timeout)
	defer cancel()
	writer := openCluster(t, c, Config{})
	watcher := openCluster(t, c, Config{})
	if err := writer.Put(ctx, Gateways, "k0", "v"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{} // guarded by mu
	stop, err := watcher.Watch(ctx, Gateways, func(e Entry) {
		mu.Lock()
		defer mu.Unlock()
		seen[e.Key] = true
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for round := 1; round <= 1; round++ {
		leader := streamInfo(t, writer, "KV_"+string(Gateways)).Cluster.Leader
		i := nodeIndex(t, c, leader)
		c.Kill(i)
		t.Logf("round %d: killed %s, the bucket's leader", round, leader)
		key := fmt.Sprintf("k%d", round)
		if err := writer.Put(ctx, Gateways, key, "v"); err != nil {
			t.Fatalf("put with %s down: %v", leader, err)
		}
		testenv.Eventually(t, "the watch sees "+key+" written after "+leader+" died", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen[key]
		})
		var keys []string
		if err := watcher.Each(ctx, Gateways, func(k string, _ []byte) error { keys = append(keys, k); return nil }); err != nil {
			t.Fatalf("each with %s down: %v", leader, err)
		}
		if len(keys) != round+1 {
			t.Errorf("each with %s down listed %v; want k0…k%d", leader, keys, round)
		}
	}
}

// A watch whose consumer's server dies takes up within seconds: nats.go
// makes the consumer again once it misses the heartbeats, and its KV
// watch asked for one every 5 s, so the watch delivered nothing for 20 s
// (TestScaleOut: a surviving replica still showed gateways' older
// statuses 2 s after the rollout). The server killed leads neither the
// cluster nor the bucket: without a meta leader no consumer can be made,
// and without the bucket's leader no write stored, until the others
// elect another (seconds more, whatever the heartbeat).
func TestClusterWatchFollowsConsumerLoss(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 4*testenv.Timeout)
	defer cancel()
	watcher := openCluster(t, c, Config{})
	var mu sync.Mutex
	seen := map[string]time.Time{} // guarded by mu
	i := -1
	for i < 0 {
		stop, err := watcher.Watch(ctx, Gateways, func(e Entry) {
			mu.Lock()
			defer mu.Unlock()
			seen[e.Key] = time.Now()
		})
		if err != nil {
			t.Fatal(err)
		}
		defer stop()
		server := consumerServer(t, watcher, Gateways)
		if server != c.MetaLeader(t, 0) && server != streamInfo(t, watcher, "KV_"+string(Gateways)).Cluster.Leader {
			i = nodeIndex(t, c, server)
			continue
		}
		stop() // its consumer is on a leader: another one
		testenv.Eventually(t, "the watch's consumer is gone", func() bool { return consumerServer(t, watcher, Gateways) == "" })
	}
	writer := openCluster(t, c, Config{URL: c.URL((i + 1) % 3)})
	c.Kill(i)
	t.Logf("killed %s, the server of the watch's consumer (the watcher is connected to %s)", c.Name(i), watcher.nc.ConnectedServerName())
	if err := writer.Put(ctx, Gateways, "after", "v"); err != nil {
		t.Fatalf("put with %s down: %v", c.Name(i), err)
	}
	written := time.Now()
	const within = 5 * time.Second // 20 s before
	for {
		mu.Lock()
		at, ok := seen["after"]
		mu.Unlock()
		if ok {
			t.Logf("the watch saw the write %v after it was stored", at.Sub(written).Round(time.Millisecond))
			break
		}
		if time.Since(written) > within {
			t.Fatalf("the watch did not see a write within %v with the server of its consumer (%s) down", within, c.Name(i))
		}
		time.Sleep(20 * time.Millisecond) // polling what fn saw
	}
}

// consumerServer is the server of the one consumer of bucket b ("" when
// it has none).
func consumerServer(t *testing.T, st *Store, b Bucket) string {
	t.Helper()
	s, err := st.js.Stream(ctx0(t), "KV_"+string(b))
	if err != nil {
		t.Fatal(err)
	}
	var servers []string
	for ci := range s.ListConsumers(ctx0(t)).Info() {
		if ci.Cluster != nil {
			servers = append(servers, ci.Cluster.Leader)
		}
	}
	switch len(servers) {
	case 0:
		return ""
	case 1:
		return servers[0]
	}
	t.Fatalf("the consumers of %s are on %v; want one at most", b, servers)
	return ""
}

// subjects: the fake's scripts are all the bucket holds.
func (kv *droppingKV) subjects(context.Context, bool) (uint64, []string, error) { return 0, nil, nil }
