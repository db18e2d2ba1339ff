package state

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxAutoReplicas is the replica count Open picks on a cluster that can
// place that many: a majority survives the loss of any one node.
const MaxAutoReplicas = 3

// JetStream's answers to a stream it cannot place (nats-server's
// errors.json).
const (
	errCodeNoPeers               jetstream.ErrorCode = 10005 // JSClusterNoPeersErrF
	errCodeInsufficientResources jetstream.ErrorCode = 10023 // JSInsufficientResourcesErr
	errCodeReplicasNotSupported  jetstream.ErrorCode = 10074 // JSStreamReplicasNotSupportedErr
)

// replicaPlan is the replica count of the buckets and the work stream:
// the operator's, or the one the cluster can place.
type replicaPlan struct {
	n        int
	explicit bool
	log      *slog.Logger
}

// planReplicas returns cfg.Replicas when set; else 1 on a server outside
// a cluster (its INFO names none), else the largest of 3 and 2 that
// JetStream places: it creates a small probe stream with that many
// replicas and deletes it. JetStream places a replica only on a server
// that is up and has JetStream, so the answer counts those, not the URLs
// given or the servers the client was told of.
func planReplicas(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, cfg Config) (replicaPlan, error) {
	p := replicaPlan{n: cfg.Replicas, explicit: cfg.Replicas > 0, log: cfg.Logger}
	if p.explicit {
		if p.n > 5 {
			return p, fmt.Errorf("state: --nats-replicas %d: JetStream keeps at most 5 replicas", p.n)
		}
		p.log.Info("NATS replicas", "replicas", p.n, "source", "--nats-replicas")
		return p, nil
	}
	if nc.ConnectedClusterName() == "" {
		p.n = 1
		p.log.Info("NATS replicas", "replicas", 1, "source", "a single NATS server (its INFO names no cluster)")
		return p, nil
	}
	sweepProbes(ctx, js)
	for n := MaxAutoReplicas; n > 1; n-- {
		// Bounded: right after a server's loss the cluster may not answer
		// a placement until it has noticed (TestClusterReplicas timed out
		// at 30 s under load); no answer counts as "cannot place n".
		probe, cancel := context.WithTimeout(ctx, probeTimeout)
		ok, err := retry(probe, func(ctx context.Context) (bool, error) { return probeReplicas(ctx, js, n) })
		cancel()
		if err != nil && transient(err) && ctx.Err() == nil {
			p.log.Warn("the NATS cluster did not answer a probe for replicas in time: taken as not placeable now", "replicas", n, "within", probeTimeout, "err", err)
			ok, err = false, nil
		}
		if err != nil {
			return p, err
		}
		if ok {
			p.n = n
			p.log.Info("NATS replicas", "replicas", n, "source", "JetStream placed a probe stream with that many", "cluster", nc.ConnectedClusterName())
			if n < MaxAutoReplicas {
				p.log.Warn("the NATS cluster placed fewer than 3 replicas: fewer than 3 JetStream servers are up; a later start raises the buckets to 3 when they are, or set --nats-replicas", "replicas", n)
			}
			return p, nil
		}
	}
	p.n = 1
	p.log.Warn("the NATS cluster cannot place 2 replicas: the buckets have 1; set --nats-replicas when its servers are up", "cluster", nc.ConnectedClusterName())
	return p, nil
}

// probeTimeout bounds the probes for one replica count.
const probeTimeout = 8 * time.Second

// probeSubjects prefixes the subject of each probe stream.
const probeSubjects = "fleet.replicas.probe."

// probeReplicas reports whether JetStream can place a stream of n
// replicas, by making a small one and deleting it.
func probeReplicas(ctx context.Context, js jetstream.JetStream, n int) (bool, error) {
	suffix := make([]byte, 8)
	_, _ = rand.Read(suffix)
	name := "FLEET_REPLICAS_PROBE_" + hex.EncodeToString(suffix)
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{probeSubjects + name},
		Storage: jetstream.FileStorage, Replicas: n, MaxMsgs: 1, MaxBytes: 1024})
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return true, fmt.Errorf("state: delete the replica probe stream %s: %w", name, err)
		}
		return true, nil
	case errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeInsufficientResources ||
		apiErr.ErrorCode == errCodeNoPeers || apiErr.ErrorCode == errCodeReplicasNotSupported):
		return false, nil
	}
	return false, fmt.Errorf("state: probe the NATS cluster for %d replicas: %w", n, err)
}

// sweepTimeout bounds sweepProbes: while the cluster elects a meta
// leader its API does not answer, and an unbounded sweep took all of
// Open's time (TestClusterReplicas, a start right after a node's loss,
// under make test's load).
const sweepTimeout = 3 * time.Second

// sweepProbes deletes probe streams left behind by a probe whose answer
// was lost (best effort, within sweepTimeout: the next start sweeps
// again).
func sweepProbes(ctx context.Context, js jetstream.JetStream) {
	ctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	names := js.StreamNames(ctx, jetstream.WithStreamListSubject(probeSubjects+">"))
	var left []string
	for name := range names.Name() {
		left = append(left, name)
	}
	for _, name := range left {
		_ = js.DeleteStream(ctx, name)
	}
}

// replicasOf returns the replica count for stream, and whether an
// existing stream changes to it: the plan's, or, when the plan is not
// the operator's and the stream already has more replicas, those (a
// start while a node is down does not shrink it).
func (p replicaPlan) replicasOf(ctx context.Context, js jetstream.JetStream, stream string) (int, bool, error) {
	st, err := retry(ctx, func(ctx context.Context) (jetstream.Stream, error) { return js.Stream(ctx, stream) })
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return p.n, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("state: stream %s: %w", stream, err)
	}
	have := st.CachedInfo().Config.Replicas
	switch {
	case have == p.n:
		return p.n, false, nil
	case !p.explicit && have > p.n:
		p.log.Warn("stream keeps its replicas: more than the cluster places now; set --nats-replicas to change it",
			"stream", stream, "replicas", have, "placeable", p.n)
		return have, false, nil
	}
	p.log.Info("stream replicas change", "stream", stream, "from", have, "to", p.n)
	return p.n, true, nil
}

// replicatedTimeout bounds the wait for streams whose replicas changed.
const replicatedTimeout = time.Minute

// awaitReplicated waits until each of streams has a leader and n-1 other
// replicas that are online and current, so that Open returns with the
// buckets as replicated as asked (losing a node while a new replica still
// catches up would leave a stream without quorum). Past
// replicatedTimeout it warns and returns: the streams work meanwhile.
func (p replicaPlan) awaitReplicated(ctx context.Context, js jetstream.JetStream, streams []string, n int) {
	ctx, cancel := context.WithTimeout(ctx, replicatedTimeout)
	defer cancel()
	start := time.Now()
	for _, name := range streams {
		for !replicated(ctx, js, name, n) {
			select {
			case <-ctx.Done():
				p.log.Warn("stream not yet replicated; it catches up in the background", "stream", name, "replicas", n, "waited", time.Since(start))
				return
			case <-time.After(retryWait):
			}
		}
	}
	if len(streams) > 0 {
		p.log.Info("streams replicated", "streams", len(streams), "replicas", n, "took", time.Since(start).Round(time.Millisecond))
	}
}

func replicated(ctx context.Context, js jetstream.JetStream, name string, n int) bool {
	attempt, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	st, err := js.Stream(attempt, name)
	if err != nil {
		return false
	}
	info := st.CachedInfo()
	if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != n-1 {
		return false
	}
	for _, r := range info.Cluster.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}

// replicasError says which setting fixes a bucket or stream that could
// not be created or updated with n replicas.
func (p replicaPlan) replicasError(what string, n int, err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return err
	}
	switch apiErr.ErrorCode {
	case errCodeReplicasNotSupported:
		return fmt.Errorf("%w (%s with %d replicas: the NATS server is not in a cluster; set --nats-replicas 1 or leave it unset)", err, what, n)
	case errCodeInsufficientResources, errCodeNoPeers:
		return fmt.Errorf("%w (%s with %d replicas: fewer JetStream servers are up than that; start them or lower --nats-replicas)", err, what, n)
	}
	return err
}

// ensureStreams creates or updates the buckets and the work stream with
// the plan's replicas.
func (s *Store) ensureStreams(ctx context.Context, plan replicaPlan) error {
	push, err := s.nc.JetStream() // the watches' (keywatch.go)
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	changed := map[int][]string{} // replicas: streams changed to them
	for _, b := range buckets {
		n, change, err := plan.replicasOf(ctx, s.js, "KV_"+string(b))
		if err != nil {
			return err
		}
		if change {
			changed[n] = append(changed[n], "KV_"+string(b))
		}
		kv, err := retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
			return s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: string(b), History: 1, Storage: jetstream.FileStorage, Replicas: n,
			})
		})
		if err != nil {
			return fmt.Errorf("state: bucket %s: %w", b, plan.replicasError("bucket "+string(b), n, err))
		}
		if n > 1 {
			if kv, err = leaderReads(ctx, s.js, b); err != nil {
				return err
			}
		}
		s.kvs[b] = failoverKV{KeyValue: kv, push: push}
	}
	n, change, err := plan.replicasOf(ctx, s.js, workStream)
	if err != nil {
		return err
	}
	if change {
		changed[n] = append(changed[n], workStream)
	}
	if _, err := retry(ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, s.ensureWork(ctx, n) }); err != nil {
		return plan.replicasError("stream "+workStream, n, err)
	}
	for n, streams := range changed {
		plan.awaitReplicated(ctx, s.js, streams, n)
	}
	s.replicas = n
	return nil
}

// Replicas is the replica count of the work stream (and, unless an
// existing bucket kept more, of every bucket).
func (s *Store) Replicas() int { return s.replicas }

// leaderReads turns off direct gets on a replicated bucket and binds it
// again: with them every replica answers a Get, and a follower that has
// not yet applied a write the leader acknowledged answers without it (a
// Put then a Get found nothing). Without them, the bucket's leader
// answers, so a Get sees every acknowledged write.
func leaderReads(ctx context.Context, js jetstream.JetStream, b Bucket) (jetstream.KeyValue, error) {
	name := "KV_" + string(b)
	_, err := retry(ctx, func(ctx context.Context) (struct{}, error) {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return struct{}{}, err
		}
		cfg := st.CachedInfo().Config
		if !cfg.AllowDirect {
			return struct{}{}, nil
		}
		cfg.AllowDirect = false
		_, err = js.UpdateStream(ctx, cfg)
		return struct{}{}, err
	})
	if err != nil {
		return nil, fmt.Errorf("state: bucket %s: reads from its leader: %w", b, err)
	}
	kv, err := retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return js.KeyValue(ctx, string(b)) })
	if err != nil {
		return nil, fmt.Errorf("state: bucket %s: %w", b, err)
	}
	return kv, nil
}
