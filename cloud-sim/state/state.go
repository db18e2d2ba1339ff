// Package state keeps the fleet controller's durable state in NATS
// JetStream key-value buckets: on an embedded NATS server with a store
// directory by default, or on an external NATS cluster.
package state

import (
	"context"
	"encoding"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Bucket names one key-value bucket.
type Bucket string

// The buckets the controller uses.
const (
	Gateways    Bucket = "fleet_gateways"    // inventory, one record a gateway
	Devices     Bucket = "fleet_devices"     // provisioned MQTT identities (password hashes)
	Commands    Bucket = "fleet_commands"    // commands and their outcomes
	Credentials Bucket = "fleet_credentials" // registry credentials, encrypted
	Rollouts    Bucket = "fleet_rollouts"    // rollouts and their gateways
	Specs       Bucket = "fleet_specs"       // the last spec deployed to each gateway, for rollbacks
	Meta        Bucket = "fleet_meta"
)

var buckets = []Bucket{Gateways, Devices, Commands, Credentials, Rollouts, Specs, Meta}

// ErrNotFound is returned by Get for a missing key.
var ErrNotFound = errors.New("not found")

// Config configures Open.
type Config struct {
	// URL is an external NATS server or cluster (nats://…, tls://…, several
	// comma-separated); when empty an embedded server is started with its
	// JetStream store in Dir.
	URL string
	Dir string
	// Creds is a login file: one line user:password, or (external only) a
	// NATS credentials file with a user JWT and nkey seed. With URL it is
	// the login to the external NATS (none when empty). Embedded, it is
	// the server's own login, which it requires of every client: made on
	// first start (user cloud-sim, a random 256-bit password, mode 0600)
	// and reused; Dir/login when empty. Other replicas log in with it.
	Creds string
	// CA, Cert and Key are PEM files for TLS to an external NATS: the CA
	// that signs its certificate (TLS is then required) and a client
	// certificate and key for mutual TLS.
	CA, Cert, Key string
	// Listen is the embedded server's client address ("127.0.0.1:0" when
	// empty), so that other cloud-sim replicas can share it.
	Listen string
	// Replicas of each bucket and of the work queue. When 0, Open picks
	// them: 1 on a server outside a cluster, else 3 when JetStream can
	// place 3 (a probe stream; see planReplicas), else 2 or 1; an existing
	// bucket with more keeps them. When set, every bucket is updated to it.
	Replicas int
	Logger   *slog.Logger
}

// Store is an open connection to the buckets.
type Store struct {
	ns  *server.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	kvs map[Bucket]bucket
	url string
	// creds is the login file in use ("" for none).
	creds string
	// replicas of the work stream, as Open made or found it.
	replicas int
	log      *slog.Logger
}

// Open connects (starting the embedded server first when cfg.URL is
// empty) and creates the buckets if missing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{kvs: map[Bucket]bucket{}, url: cfg.URL, creds: cfg.Creds, log: cfg.Logger}
	opts := []nats.Option{nats.Name("cloud-sim"), nats.NoEcho(), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	if cfg.URL == "" {
		ns, l, err := startEmbedded(cfg)
		if err != nil {
			return nil, err
		}
		s.ns, s.url, s.creds = ns, ns.ClientURL(), cfg.Creds
		if s.creds == "" {
			s.creds = filepath.Join(cfg.Dir, "login")
		}
		opts = append(opts, l.option())
	} else {
		if cfg.Creds != "" {
			l, err := readLogin(cfg.Creds)
			if err != nil {
				return nil, fmt.Errorf("state: --nats-creds: %w", err)
			}
			opts = append(opts, l.option())
		}
		tlsOpts, err := tlsOptions(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, tlsOpts...)
	}
	nc, err := nats.Connect(s.url, opts...)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("state: connect to NATS %s: %w (%s)", redact(s.url), err, connectHint(err))
	}
	s.nc = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(asyncTimeout))
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("state: %w", err)
	}
	s.js = failoverJS{js}
	plan, err := planReplicas(ctx, nc, s.js, cfg)
	if err == nil {
		err = s.ensureStreams(ctx, plan)
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// startEmbedded starts the embedded server, which requires its login
// (embeddedLogin) of every client, and returns it with the login.
func startEmbedded(cfg Config) (*server.Server, login, error) {
	if cfg.Dir == "" {
		return nil, login{}, errors.New("state: Dir is required for the embedded NATS server (or give an external URL)")
	}
	if cfg.CA != "" || cfg.Cert != "" || cfg.Key != "" {
		return nil, login{}, errors.New("state: --nats-ca, --nats-cert and --nats-key are for an external NATS (--nats); the embedded one listens without TLS")
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, login{}, fmt.Errorf("state: --nats-listen %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, login{}, fmt.Errorf("state: --nats-listen %q: port: %w", listen, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if !loopback(host) {
		cfg.Logger.Warn("the embedded NATS listens beyond loopback without TLS: its login and the fleet's state cross the network in clear; prefer a NATS cluster with TLS (--nats, --nats-ca)", "listen", listen)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, login{}, fmt.Errorf("state: %w", err)
	}
	credsPath := cfg.Creds
	if credsPath == "" {
		credsPath = filepath.Join(cfg.Dir, "login")
	}
	l, err := embeddedLogin(credsPath, cfg.Logger)
	if err != nil {
		return nil, login{}, fmt.Errorf("state: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "cloud-sim", Host: host, Port: port, Username: l.user, Password: l.password,
		JetStream: true, StoreDir: cfg.Dir, NoSigs: true, NoLog: true,
	})
	if err != nil {
		return nil, login{}, fmt.Errorf("state: embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, login{}, errors.New("state: embedded NATS did not start within 30s")
	}
	return ns, l, nil
}

// URL is the NATS URL in use (the embedded server's when embedded), with
// any password in it hidden.
func (s *Store) URL() string { return redact(s.url) }

// Creds is the login file the store connected with: the embedded
// server's, which another replica sharing it gives as its Config.Creds
// ("" for an external NATS without one).
func (s *Store) Creds() string { return s.creds }

// Close disconnects and stops the embedded server, if any, after its
// writes are flushed.
func (s *Store) Close() {
	if s.nc != nil {
		_ = s.nc.Drain()
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
}

// Key encodes parts (tenant, gateway id, …) as one bucket key; ids may hold
// characters, such as "..", that a NATS key may not.
func Key(parts ...string) string {
	var b []byte
	for i, p := range parts {
		if i > 0 {
			b = append(b, 0)
		}
		b = append(b, p...)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Put stores v under key (see Encode).
func (s *Store) Put(ctx context.Context, b Bucket, key string, v any) error {
	data, err := Encode(v)
	if err != nil {
		return fmt.Errorf("state: encode %s: %w", b, err)
	}
	if _, err := s.kvs[b].Put(ctx, key, data); err != nil {
		return fmt.Errorf("state: put %s: %w", b, err)
	}
	return nil
}

// Get decodes the value under key into v.
func (s *Store) Get(ctx context.Context, b Bucket, key string, v any) error {
	e, err := s.kvs[b].Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("state: get %s: %w", b, err)
	}
	return Decode(e.Value(), v)
}

// Encode is v as the store keeps it: its MarshalBinary when it has one (a
// gateway's record, as protobuf), else JSON.
func Encode(v any) ([]byte, error) {
	if m, ok := v.(encoding.BinaryMarshaler); ok {
		return m.MarshalBinary()
	}
	return json.Marshal(v)
}

// Decode reads what Encode wrote into v.
func Decode(data []byte, v any) error {
	if u, ok := v.(encoding.BinaryUnmarshaler); ok {
		return u.UnmarshalBinary(data)
	}
	return json.Unmarshal(data, v)
}

// Delete removes key.
func (s *Store) Delete(ctx context.Context, b Bucket, key string) error {
	if err := s.kvs[b].Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("state: delete %s: %w", b, err)
	}
	return nil
}

// Each calls fn with the raw JSON of every value in the bucket, once per
// key. A listing that JetStream loses (its consumer was on a server that
// died) is taken up where it stopped.
func (s *Store) Each(ctx context.Context, b Bucket, fn func(key string, value []byte) error) error {
	_, err := s.EachAt(ctx, b, fn)
	return err
}

// EachAt is Each, and returns the revision of the newest value it listed
// (0 for none): a listing that returns less than a revision a watch has
// delivered was read from a server that had not caught up.
func (s *Store) EachAt(ctx context.Context, b Bucket, fn func(key string, value []byte) error) (uint64, error) {
	l := listing{known: map[string]struct{}{}, seen: map[string]struct{}{}, fn: fn}
	for {
		lctx, cancel := context.WithCancel(ctx)
		w, err := s.watchAll(lctx, b, watchOpts{after: l.last})
		if err != nil {
			cancel()
			return l.last, fmt.Errorf("state: list %s: %w", b, err)
		}
		done, err := l.from(ctx, w)
		_ = w.Stop()
		cancel()
		if done && err == nil {
			err = s.listMissed(ctx, b, &l)
		}
		if done || err != nil {
			return l.last, err
		}
		s.log.Warn("state: a listing lost its consumer; taking it up again", "bucket", string(b), "after", l.last)
		if err := pause(ctx, retryWait); err != nil {
			return l.last, fmt.Errorf("state: list %s: %w", b, err)
		}
	}
}

// listing is one EachAt's progress.
type listing struct {
	known map[string]struct{} // every key delivered, deleted or not
	seen  map[string]struct{} // the keys fn was called with
	last  uint64              // the newest revision delivered
	fn    func(key string, value []byte) error
}

// from calls fn with the values w delivers, once per key, deletions left
// out, until their initial values are done (true), the watch is lost
// (false), fn fails or ctx ends.
func (l *listing) from(ctx context.Context, w jetstream.KeyWatcher) (bool, error) {
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return false, nil
			}
			if e == nil { // the initial values are done
				return true, nil
			}
			if err := l.add(e.Key(), e.Revision(), e.Operation(), e.Value()); err != nil {
				return false, err
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

func (l *listing) add(key string, rev uint64, op jetstream.KeyValueOp, value []byte) error {
	l.last = max(l.last, rev)
	l.known[key] = struct{}{}
	if _, dup := l.seen[key]; dup || op != jetstream.KeyValuePut {
		return nil
	}
	l.seen[key] = struct{}{}
	return l.fn(key, value)
}

// listMissed lists the keys of the bucket a listing's watch did not
// deliver before its initial values were done. The server's counts that
// end them (the consumer's pending messages) can be short while keys are
// written again: a key whose value was replaced before its turn comes
// after the end, with the new value. Each is asked for on its own. (A
// follower's view of a rollout lost two of its 300 gateways so under make
// test's load, and showed 298 after the rollout ended; TestEachWhileWritten.)
func (s *Store) listMissed(ctx context.Context, b Bucket, l *listing) error {
	kv := s.kvs[b]
	n, _, err := kv.subjects(ctx, false)
	if err != nil {
		return fmt.Errorf("state: list %s: %w", b, err)
	}
	if uint64(len(l.known)) >= n {
		return nil // every key the stream holds (a key written since is counted too)
	}
	_, keys, err := kv.subjects(ctx, true)
	if err != nil {
		return fmt.Errorf("state: list %s: %w", b, err)
	}
	for _, key := range keys {
		if _, ok := l.known[key]; ok {
			continue
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted
		}
		if err != nil {
			return fmt.Errorf("state: list %s: %w", b, err)
		}
		if err := l.add(key, e.Revision(), e.Operation(), e.Value()); err != nil {
			return err
		}
	}
	return nil
}

// PutMany stores every value of batch (see Encode), publishing them to the
// bucket at once and then awaiting every acknowledgement: thousands of
// inventory records cost one round trip, not one each. Writes lost to a
// failover are sent again until ctx ends.
func (s *Store) PutMany(ctx context.Context, b Bucket, batch map[string]any) error {
	items := make([]pubItem, 0, len(batch))
	for key, v := range batch {
		data, err := Encode(v)
		if err != nil {
			return fmt.Errorf("state: encode %s: %w", b, err)
		}
		items = append(items, pubItem{key: key, data: data})
	}
	res, err := s.publishAll(ctx, b, items)
	if err != nil {
		return err
	}
	for _, err := range res.refused {
		return fmt.Errorf("state: put %s: %d of %d failed: %w", b, len(res.refused), len(batch), err)
	}
	return nil
}

// The work queue: items published once (deduplicated by id for ten
// minutes) and taken by exactly one worker of any replica sharing the
// NATS server.
const (
	workStream   = "FLEET_WORK"
	workConsumer = "workers"
	// WorkSubjects is the subject space of the work queue.
	WorkSubjects = "fleet.rollout.work"
)

func (s *Store) ensureWork(ctx context.Context, replicas int) error {
	_, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: workStream, Subjects: []string{WorkSubjects},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute, Replicas: replicas})
	if err != nil {
		return fmt.Errorf("state: work queue: %w", err)
	}
	return nil
}

// Enqueue adds an item; an item with an id already queued in the last ten
// minutes is dropped by the server.
func (s *Store) Enqueue(ctx context.Context, subject, id string, data []byte) error {
	_, err := s.EnqueueMany(ctx, subject, []WorkItem{{ID: id, Data: data}})
	return err
}

// WorkItem is an item for the work queue; its id deduplicates it.
type WorkItem struct {
	ID   string
	Data []byte
}

// EnqueueMany adds items at once, their acknowledgements awaited together,
// and returns how many of the first ones are queued. Like the store's
// other writes it rides out a failover: what a lost server left
// unacknowledged is sent again (retry), until ctx ends. After an error
// items[n:] may be queued or not: sending them again is safe, the server
// drops an id it queued in the last ten minutes.
func (s *Store) EnqueueMany(ctx context.Context, subject string, items []WorkItem) (n int, err error) {
	_, err = retry(ctx, func(ctx context.Context) (struct{}, error) {
		k, err := s.enqueue(ctx, subject, items[n:])
		n += k
		return struct{}{}, err
	})
	return n, err
}

// enqueue publishes items asynchronously, in chunks (the client stalls
// with more than 4,000 unacknowledged asynchronous publishes), and returns
// how many of the first ones the server acknowledged.
func (s *Store) enqueue(ctx context.Context, subject string, items []WorkItem) (n int, err error) {
	const chunk = 1000
	for n < len(items) {
		if err := ctx.Err(); err != nil {
			return n, fmt.Errorf("state: enqueue: %w", err)
		}
		part := items[n:min(len(items), n+chunk)]
		futures := make([]jetstream.PubAckFuture, 0, len(part))
		for _, it := range part {
			f, err := s.js.PublishAsync(subject, it.Data, jetstream.WithMsgID(it.ID))
			if err != nil {
				return n, fmt.Errorf("state: enqueue: %w", err)
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
				n++
			case err := <-f.Err():
				return n, fmt.Errorf("state: enqueue: %w", err)
			case <-ctx.Done():
				return n, fmt.Errorf("state: enqueue: %w", ctx.Err())
			}
		}
	}
	return n, nil
}

// Consume hands queued items to fn, up to parallel at a time, and
// acknowledges each when fn returns nil. An item fn returns an error for
// (the store or the broker could not be reached: it may succeed later) is
// handed out again after a while (nextTry), workTries times at most; one
// whose worker died, after a minute. lastTry tells fn that an error drops
// the item: it should record the failure instead. stop ends the
// consumption and waits for the items being handled; one that arrives
// after it is handed out again.
func (s *Store) Consume(ctx context.Context, parallel int, fn func(ctx context.Context, data []byte, lastTry bool) error) (stop func(), err error) {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, workStream, jetstream.ConsumerConfig{Durable: workConsumer,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxAckPending: 10 * parallel})
	if err != nil {
		return nil, fmt.Errorf("state: work consumer: %w", err)
	}
	sem := make(chan struct{}, parallel)
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var (
		mu      sync.Mutex
		stopped bool // guarded by mu
		running sync.WaitGroup
	)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		mu.Lock()
		if stopped {
			mu.Unlock()
			_ = m.Nak()
			return
		}
		running.Add(1)
		mu.Unlock()
		sem <- struct{}{}
		go func() {
			defer running.Done()
			defer func() { <-sem }()
			delivered := uint64(1)
			if md, merr := m.Metadata(); merr == nil {
				delivered = md.NumDelivered
			}
			after, again := nextTry(delivered)
			if err := fn(runCtx, m.Data(), !again); err != nil {
				if !again {
					// Its dispatch stays unsent: the scheduler queues it
					// again under a new id (requeueLost), or it times out.
					s.log.Error("work item dropped", "deliveries", delivered, "err", err)
					_ = m.Ack()
					return
				}
				s.log.Warn("work item not done; handed out again", "after", after, "deliveries", delivered, "err", err)
				_ = m.NakWithDelay(after)
				return
			}
			_ = m.Ack()
		}()
	}, // pulls are sent again within seconds of a lost server (30 s by default)
		jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(2*time.Second))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("state: work consumer: %w", err)
	}
	return func() {
		cc.Stop()
		mu.Lock()
		stopped = true
		mu.Unlock()
		running.Wait()
		cancel()
	}, nil
}

// workTries is how many times a work item whose worker keeps failing is
// handed out (about two and a half minutes of waits) before it is
// dropped: the scheduler's requeue of what stays unsent makes a new item
// of its dispatch every 75 s, and each would otherwise be retried forever.
const workTries = 10

// nextTry says when a work item whose worker failed on its nth delivery
// is handed out again (a second after the first, doubling to 30 s), and
// whether it is at all (workTries).
func nextTry(n uint64) (after time.Duration, again bool) {
	return min(time.Second<<min(max(n, 1)-1, 5), 30*time.Second), n < workTries
}

// Lease is a time-limited claim on a name in the Meta bucket, for leader
// election among replicas: whoever holds it is the leader until it stops
// renewing.
type Lease struct {
	Owner string    `json:"owner"`
	API   string    `json:"api,omitempty"`
	Until time.Time `json:"until"`
}

// Acquire takes or renews the lease on name for owner until now+ttl, with
// compare-and-set on the bucket revision; it reports whether owner holds it.
// An error says the store could not be asked (a failover): whether owner
// still holds the lease is not known, and its last term still runs.
func (s *Store) Acquire(ctx context.Context, name, owner, api string, now time.Time, ttl time.Duration) (bool, error) {
	kv := s.kvs[Meta]
	key := Key("lease", name)
	next, _ := json.Marshal(Lease{Owner: owner, API: api, Until: now.Add(ttl)})
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		if _, err := kv.Create(ctx, key, next); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return false, nil
			}
			return false, err
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	var cur Lease
	_ = json.Unmarshal(e.Value(), &cur)
	if cur.Owner != owner && now.Before(cur.Until) {
		return false, nil
	}
	if _, err := kv.Update(ctx, key, next, e.Revision()); err != nil {
		if isConflict(err) {
			return false, nil // another replica renewed or took it first
		}
		return false, fmt.Errorf("state: lease %s: %w", name, err)
	}
	return true, nil
}
