// Package store is the agent's crash-safe state, kept in a bbolt file under
// the state directory: the session counter and the command journal, and
// from later features desired deployments and credentials.
//
// The command journal serves three purposes. It makes commands idempotent
// (a repeated id gets the recorded reply), it lets a command that was taken
// but not finished before a crash resume on the next start, and it is the
// outbox for final replies: a reply stays undelivered until the broker has
// acknowledged it, and is sent again after a reconnect.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var (
	bucketMeta     = []byte("meta")
	bucketCommands = []byte("commands")
	bucketOrder    = []byte("command_order")

	keySession      = []byte("session")
	keyCommandCount = []byte("command_count")
)

// Defaults for the journal's bounds.
const (
	DefaultMaxCommands   = 10000
	DefaultMaxCommandAge = 7 * 24 * time.Hour
)

// Config configures Open.
type Config struct {
	Path          string
	MaxCommands   int           // journal entries kept; DefaultMaxCommands when 0
	MaxCommandAge time.Duration // finished entries older than this are dropped; DefaultMaxCommandAge when 0
	// NoSync skips the fsync of every write: for simulated gateways, of
	// which thousands share one disk. A real agent never sets it.
	NoSync bool
	Now    func() time.Time
}

// Store is the agent's state file.
type Store struct {
	db     *bolt.DB
	now    func() time.Time
	max    int
	maxAge time.Duration
	// keep: entries received more recently than this are never dropped,
	// even beyond the count bound (KeepAtLeast).
	keep atomic.Int64
}

// ErrLocked is returned by Open when another process holds the state file.
var ErrLocked = errors.New("state file is in use by another process")

// Open opens or creates the state file.
func Open(cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("store: Path is required")
	}
	if cfg.MaxCommands <= 0 {
		cfg.MaxCommands = DefaultMaxCommands
	}
	if cfg.MaxCommandAge <= 0 {
		cfg.MaxCommandAge = DefaultMaxCommandAge
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: cfg.NoSync})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("open %s: %w (is another fleet-agent running with this state directory?)", cfg.Path, ErrLocked)
		}
		return nil, fmt.Errorf("open %s: %w", cfg.Path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketCommands, bucketOrder} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise %s: %w", cfg.Path, err)
	}
	return &Store{db: db, now: cfg.Now, max: cfg.MaxCommands, maxAge: cfg.MaxCommandAge}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// NextSession increments the persisted session counter and returns the new
// value. It is called once per connection attempt.
func (s *Store) NextSession() (uint64, error) {
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		n = getUint(tx.Bucket(bucketMeta), keySession) + 1
		return putUint(tx.Bucket(bucketMeta), keySession, n)
	})
	return n, err
}

// Session returns the last session number handed out.
func (s *Store) Session() (uint64, error) {
	var n uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		n = getUint(tx.Bucket(bucketMeta), keySession)
		return nil
	})
	return n, err
}

// Command is one entry of the command journal.
type Command struct {
	ID         string    `json:"id"`
	Verb       string    `json:"verb"`
	ReceivedAt time.Time `json:"receivedAt"`
	// Payload and ContentType hold the command as received while it is
	// unfinished, so that it can be resumed after a crash; they are dropped
	// when it finishes.
	Payload     []byte `json:"payload,omitempty"`
	ContentType string `json:"contentType,omitempty"`
	// Where replies go: the command's response topic and correlation data,
	// empty for the gateway's default reply topic.
	ResponseTopic   string `json:"responseTopic,omitempty"`
	CorrelationData []byte `json:"correlationData,omitempty"`

	FinishedAt time.Time `json:"finishedAt,omitzero"`
	Reply      []byte    `json:"reply,omitempty"` // final reply, protobuf
	Delivered  bool      `json:"delivered,omitempty"`
}

// Finished reports whether the command has a final reply.
func (c Command) Finished() bool { return !c.FinishedAt.IsZero() }

// Begin records a newly received command. If the id is already in the
// journal, Begin records nothing and returns the existing entry with dup set.
func (s *Store) Begin(c Command) (existing Command, dup bool, err error) {
	err = s.db.Update(func(tx *bolt.Tx) error {
		cmds := tx.Bucket(bucketCommands)
		if raw := cmds.Get([]byte(c.ID)); raw != nil {
			dup = true
			return json.Unmarshal(raw, &existing)
		}
		if c.ReceivedAt.IsZero() {
			c.ReceivedAt = s.now()
		}
		if err := putJSON(cmds, c.ID, c); err != nil {
			return err
		}
		if err := tx.Bucket(bucketOrder).Put(orderKey(c.ReceivedAt, c.ID), []byte(c.ID)); err != nil {
			return err
		}
		meta := tx.Bucket(bucketMeta)
		if err := putUint(meta, keyCommandCount, getUint(meta, keyCommandCount)+1); err != nil {
			return err
		}
		return s.prune(tx)
	})
	return existing, dup, err
}

// Finish records the final reply of a command and drops its payload.
func (s *Store) Finish(id string, reply []byte) error {
	return s.update(id, func(c *Command) {
		c.FinishedAt, c.Reply, c.Payload, c.Delivered = s.now(), reply, nil, false
	})
}

// MarkDelivered records that the broker acknowledged the final reply.
func (s *Store) MarkDelivered(id string) error {
	return s.update(id, func(c *Command) { c.Delivered = true })
}

// Get returns the journal entry for id.
func (s *Store) Get(id string) (Command, bool, error) {
	var c Command
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketCommands).Get([]byte(id))
		if raw == nil {
			return nil
		}
		ok = true
		return json.Unmarshal(raw, &c)
	})
	return c, ok, err
}

// Unfinished returns commands begun but not finished, oldest first.
func (s *Store) Unfinished() ([]Command, error) {
	return s.scan(func(c Command) bool { return !c.Finished() })
}

// Undelivered returns finished commands whose final reply the broker has not
// acknowledged, oldest first.
func (s *Store) Undelivered() ([]Command, error) {
	return s.scan(func(c Command) bool { return c.Finished() && !c.Delivered })
}

func (s *Store) scan(keep func(Command) bool) ([]Command, error) {
	var out []Command
	err := s.db.View(func(tx *bolt.Tx) error {
		cmds := tx.Bucket(bucketCommands)
		return tx.Bucket(bucketOrder).ForEach(func(_, id []byte) error {
			var c Command
			if err := json.Unmarshal(cmds.Get(id), &c); err != nil {
				return fmt.Errorf("command %q: %w", id, err)
			}
			if keep(c) {
				out = append(out, c)
			}
			return nil
		})
	})
	return out, err
}

func (s *Store) update(id string, f func(*Command)) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		cmds := tx.Bucket(bucketCommands)
		raw := cmds.Get([]byte(id))
		if raw == nil {
			return fmt.Errorf("command %q is not in the journal", id)
		}
		var c Command
		if err := json.Unmarshal(raw, &c); err != nil {
			return err
		}
		f(&c)
		return putJSON(cmds, id, c)
	})
}

// KeepAtLeast makes the journal remember every command id for at least d
// after it was received, even beyond its count bound, and raises its age
// bound to d if lower: the command processor's replay window needs it.
func (s *Store) KeepAtLeast(d time.Duration) { s.keep.Store(int64(d)) }

// prune drops the oldest finished and delivered journal entries beyond the
// count bound, and those older than the age bound, but none received less
// than KeepAtLeast ago. Unfinished commands and undelivered replies are
// never dropped: the journal may exceed its bound by their number.
func (s *Store) prune(tx *bolt.Tx) error {
	meta, cmds, order := tx.Bucket(bucketMeta), tx.Bucket(bucketCommands), tx.Bucket(bucketOrder)
	count := getUint(meta, keyCommandCount)
	now, keep := s.now(), time.Duration(s.keep.Load())
	cutoff, keepAfter := now.Add(-max(s.maxAge, keep)), now.Add(-keep)
	var victims [][2][]byte // order key, id
	cur := order.Cursor()
	for k, id := cur.First(); k != nil; k, id = cur.Next() {
		if count <= uint64(s.max) && orderTime(k).After(cutoff) || keep > 0 && orderTime(k).After(keepAfter) {
			break
		}
		var c Command
		if err := json.Unmarshal(cmds.Get(id), &c); err != nil {
			return err
		}
		if !c.Finished() || !c.Delivered {
			continue
		}
		victims = append(victims, [2][]byte{k, id})
		count--
	}
	for _, v := range victims {
		if err := order.Delete(v[0]); err != nil {
			return err
		}
		if err := cmds.Delete(v[1]); err != nil {
			return err
		}
	}
	return putUint(meta, keyCommandCount, count)
}

func orderKey(t time.Time, id string) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
	return append(k, id...)
}

func orderTime(k []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8])))
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b *bolt.Bucket, k []byte, v uint64) error {
	return b.Put(k, binary.BigEndian.AppendUint64(nil, v))
}

func putJSON(b *bolt.Bucket, k string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(k), raw)
}
