package state

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/internal/testenv"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func openCluster(t *testing.T, c *testenv.NATSCluster, cfg Config) *Store {
	t.Helper()
	// Right after a node's loss Open may wait out a meta leader's election
	// and a probe's bound (8 s) before the next one.
	ctx, cancel := context.WithTimeout(context.Background(), 2*testenv.Timeout)
	defer cancel()
	if cfg.URL == "" {
		cfg.URL = c.URLs()
	}
	cfg.Creds, cfg.Logger = c.CredsFile, testLogger(t)
	st, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open on the cluster: %v", err)
	}
	t.Cleanup(st.Close)
	return st
}

// streamReplicas returns the replica count of every bucket's stream and
// of the work stream.
func streamReplicas(t *testing.T, st *Store) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, name := range append(streamNames(), workStream) {
		info := streamInfo(t, st, name)
		got[name] = info.Config.Replicas
	}
	return got
}

func ctx0(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func streamNames() []string {
	var names []string
	for _, b := range buckets {
		names = append(names, "KV_"+string(b))
	}
	return names
}

func streamInfo(t *testing.T, st *Store, name string) *jetstream.StreamInfo {
	t.Helper()
	info, err := tryStreamInfo(st, name)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func tryStreamInfo(st *Store, name string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := st.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	return info, nil
}

func wantReplicas(t *testing.T, st *Store, want int) {
	t.Helper()
	for name, n := range streamReplicas(t, st) {
		if n != want {
			t.Errorf("stream %s has %d replicas, want %d", name, n, want)
		}
	}
	if st.Replicas() != want {
		t.Errorf("Replicas() = %d, want %d", st.Replicas(), want)
	}
}

// TestClusterReplicas: on a 3-node cluster the buckets get 3 replicas
// unless the operator sets them; buckets made with another count are
// updated; a start while a node is down keeps 3; a single server gets 1,
// and 3 asked of it is refused naming --nats-replicas.
func TestClusterReplicas(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})

	one := openCluster(t, c, Config{Replicas: 1})
	wantReplicas(t, one, 1)
	one.Close()

	auto := openCluster(t, c, Config{})
	wantReplicas(t, auto, 3) // raised from 1
	if err := auto.Put(context.Background(), Meta, "k", "v"); err != nil {
		t.Fatal(err)
	}

	// A probe stream whose deletion was lost is swept by the next start.
	if _, err := auto.js.CreateStream(ctx0(t), jetstream.StreamConfig{Name: "FLEET_REPLICAS_PROBE_left", Subjects: []string{probeSubjects + "left"}}); err != nil {
		t.Fatal(err)
	}
	auto.Close()
	auto = openCluster(t, c, Config{})
	if _, err := auto.js.Stream(ctx0(t), "FLEET_REPLICAS_PROBE_left"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the left probe stream: %v; want it deleted", err)
	}
	auto.Close()

	// A start that finds fewer servers placeable (planReplicas: 2) keeps
	// the 3 replicas; an operator's count is applied, down as well as up.
	ctx, cancel := context.WithTimeout(context.Background(), 2*testenv.Timeout)
	defer cancel()
	st := openCluster(t, c, Config{})
	for _, tt := range []struct {
		plan replicaPlan
		want int
	}{
		{replicaPlan{n: 2}, 3},
		{replicaPlan{n: 2, explicit: true}, 2},
		{replicaPlan{n: 3}, 3},
	} {
		tt.plan.log = testLogger(t)
		if err := st.ensureStreams(ctx, tt.plan); err != nil {
			t.Fatalf("plan %+v: %v", tt.plan, err)
		}
		wantReplicas(t, st, tt.want)
	}
	st.Close()

	// With a node down, Open works and the buckets keep 3.
	c.Kill(2)
	down := openCluster(t, c, Config{})
	wantReplicas(t, down, 3)
	down.Close()
	c.Restart(t, 2)

	embedded, err := Open(context.Background(), Config{Dir: t.TempDir(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	wantReplicas(t, embedded, 1)
	embedded.Close()
	_, err = Open(context.Background(), Config{Dir: t.TempDir(), Replicas: 3})
	if err == nil || !strings.Contains(err.Error(), "--nats-replicas") {
		t.Errorf("3 replicas on a single server: %v; want a refusal naming --nats-replicas", err)
	}
}

// TestClusterSurvivesNodeLoss: a store connected to all three URLs keeps
// writing, reading, watching and taking work while the server it is
// connected to is SIGKILLed; the server rejoins and catches up after its
// restart.
func TestClusterSurvivesNodeLoss(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	st := openCluster(t, c, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*testenv.Timeout)
	defer cancel()
	if err := st.Put(ctx, Gateways, "before", "v1"); err != nil {
		t.Fatal(err)
	}

	// A watch through a second client, and the work queue through the store.
	watcher := openCluster(t, c, Config{})
	w, err := watcher.kvs[Gateways].WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var mu sync.Mutex
	var work []string // guarded by mu
	stop, err := st.Consume(ctx, 2, func(_ context.Context, data []byte, _ bool) error {
		mu.Lock()
		work = append(work, string(data))
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	killed := st.nc.ConnectedServerName()
	start := time.Now()
	i := nodeIndex(t, c, killed)
	c.Kill(i)
	t.Logf("killed %s, the store's server", killed)
	took := func(what string) { t.Logf("%s with %s down: done %v after the kill", what, killed, time.Since(start)) }

	if err := st.Put(ctx, Gateways, "after", "v2"); err != nil {
		t.Fatalf("put with %s down: %v", killed, err)
	}
	took("put")
	var got string
	if err := st.Get(ctx, Gateways, "after", &got); err != nil || got != `v2` {
		t.Fatalf("get with %s down: %q, %v; want v2", killed, got, err)
	}
	if now := st.nc.ConnectedServerName(); now == killed || now == "" {
		t.Errorf("the store is connected to %q; want another server than %s", now, killed)
	}
	// The watch's consumer may be made again on another server and then
	// deliver "before" once more; what counts is that "after" arrives.
	for seen := false; !seen; {
		select {
		case e := <-w.Updates():
			seen = e != nil && e.Key() == "after"
		case <-ctx.Done():
			t.Fatal("the watch saw no update of key after with a node down")
		}
	}
	took("watch")
	if err := st.Enqueue(ctx, WorkSubjects, "item-1", []byte("item-1")); err != nil {
		t.Fatalf("enqueue with %s down: %v", killed, err)
	}
	testenv.Eventually(t, "the work item is taken with a node down", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(work) == 1 && work[0] == "item-1"
	})
	took("work queue")
	var m Lease
	if err := st.Modify(ctx, Meta, "modify", &m, func(bool) error { m.Owner = "a"; return nil }); err != nil {
		t.Fatalf("modify with %s down: %v", killed, err)
	}

	took("modify")
	c.Restart(t, i)
	testenv.Eventually(t, killed+" is back in every stream's group and current", func() bool {
		for _, name := range append(streamNames(), workStream) {
			info, err := tryStreamInfo(st, name)
			if err != nil || !groupCurrent(info, killed) {
				return false
			}
		}
		return true
	})
	// The restarted server answers reads itself (direct get) with what
	// was written while it was down.
	only := openCluster(t, c, Config{URL: c.URL(i)})
	if err := only.Get(ctx, Gateways, "after", &got); err != nil || got != "v2" {
		t.Errorf("get from the restarted %s: %q, %v; want v2", killed, got, err)
	}
}

// groupCurrent reports whether server is the stream's leader or a
// current, online replica of it.
func groupCurrent(info *jetstream.StreamInfo, server string) bool {
	if info.Cluster == nil {
		return false
	}
	if info.Cluster.Leader == server {
		return true
	}
	for _, p := range info.Cluster.Replicas {
		if p.Name == server {
			return p.Current && !p.Offline
		}
	}
	return false
}

func nodeIndex(t *testing.T, c *testenv.NATSCluster, name string) int {
	t.Helper()
	for i := range 3 {
		if c.Name(i) == name {
			return i
		}
	}
	t.Fatalf("the store is connected to %q, not a server of the cluster", name)
	return -1
}

// TestClusterModifyConcurrent: Modify's compare-and-set retries on a
// replicated bucket, whose conflicts JetStream reports with another
// error code (10164) than on a single server (10071).
func TestClusterModifyConcurrent(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	// Two writers of five each: one loses at most five times in a row,
	// within Modify's ten attempts.
	const writers, each = 2, 5
	stores := make([]*Store, writers)
	for i := range stores {
		stores[i] = openCluster(t, c, Config{URL: c.URL(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*testenv.Timeout)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for _, st := range stores {
		wg.Go(func() {
			for range each {
				var n int
				errs <- st.Modify(ctx, Meta, "counter", &n, func(bool) error { n++; return nil })
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Modify: %v", err)
		}
	}
	var n int
	if err := stores[0].Get(ctx, Meta, "counter", &n); err != nil || n != writers*each {
		t.Errorf("counter = %d, %v; want %d", n, err, writers*each)
	}
}

// TestClusterTLS: the cluster requires TLS with client certificates;
// --nats-ca with the CA that signed the servers' certificate connects
// (and gets 3 replicas), another CA is refused naming --nats-ca.
func TestClusterTLS(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca, err := registry.NewCA("test NATS cluster CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := registry.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(serverCert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.IssueClient("cloud-sim")
	if err != nil {
		t.Fatal(err)
	}
	caFile, otherCA := write("ca.pem", ca.PEM()), write("other.pem", other.PEM())
	clientCert, clientKey := write("client.pem", certPEM), write("client.key", keyPEM)
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{
		TLSCert: write("server.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: serverCert.Certificate[0]}))),
		TLSKey:  write("server.key", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))),
		TLSCA:   caFile,
	})
	urls := strings.ReplaceAll(c.URLs(), "nats://", "tls://")

	st := openCluster(t, c, Config{URL: urls, CA: caFile, Cert: clientCert, Key: clientKey})
	wantReplicas(t, st, 3)
	if !st.nc.TLSRequired() {
		t.Error("the connection is not TLS")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"another CA", Config{URL: urls, CA: otherCA, Cert: clientCert, Key: clientKey}, "--nats-ca"},
		{"no client certificate", Config{URL: urls, CA: caFile}, "--nats-cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Creds = c.CredsFile
			st, err := Open(ctx, tt.cfg)
			if err == nil {
				st.Close()
				t.Fatalf("connected; want a refusal naming %s", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v; want one naming %s", err, tt.wantErr)
			}
		})
	}
}

// TestSweepProbesBounded: the sweep of left probe streams is best effort
// and bounded. Right after the meta leader's loss nobody answers the
// cluster's API until another is elected, and a request sent meanwhile
// is not answered at all: unbounded, the sweep then took all of Open's
// 20 s (TestClusterReplicas under make test's load).
func TestSweepProbesBounded(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3, testenv.NATSOptions{})
	leader := nodeIndex(t, c, c.MetaLeader(t, 0))
	other := (leader + 1) % 3
	st := openCluster(t, c, Config{URL: c.URL(other)})
	c.Kill(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 4*sweepTimeout)
	defer cancel()
	sweepProbes(ctx, st.js)
	if ctx.Err() != nil {
		t.Fatalf("sweepProbes returned at its caller's deadline (%v), not within its own bound %v", 4*sweepTimeout, sweepTimeout)
	}
}
