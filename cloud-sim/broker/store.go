package broker

import (
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	bbolt "go.etcd.io/bbolt"
)

// boltStore is mochi's bbolt storage hook with one repair: the hook does not
// save the packet id of a queued message (mochi v2.7.9), so after a restart
// the broker could not resend what it queued for an offline client and
// dropped the client's connection on every attempt. The id is part of the
// stored message's key ("…:{packet id}"), and is restored from there.
//
// And one saving: mochi records the PUBACK of every inbound QoS 1 message
// as in flight and deletes it a moment later, two writes that keep nothing;
// only messages in flight to clients are stored, and only those are deleted.
//
// Retained messages are written behind, to a file of their own (rdb): the
// latest per topic is kept in memory and all of them are written in one
// transaction every retainDelay (and on Stop), so a status that changes
// several times a second costs one write and a thousand statuses one
// transaction, and publishers do not wait for the file. A broker crash can
// lose the last retainDelay of retained messages; gateways publish their
// birth (with every deployment's state) again when they reconnect.
type boltStore struct {
	*bolt.Hook
	held sync.Map // ids of stored in-flight messages
	rdb  *bbolt.DB
	// hasSysInfo: the store held the broker's $SYS counters when it was
	// opened. mochi's hook logs an ERROR reading a key that is missing, as
	// it is in every new store.
	hasSysInfo bool

	mu      sync.Mutex
	pending map[string]retainOp
	stop    chan struct{}
	done    chan struct{}
}

type retainOp struct {
	cl *mqtt.Client
	pk packets.Packet
	r  int64
}

const retainDelay = 500 * time.Millisecond

func (h *boltStore) Init(config any) error {
	if opts, ok := config.(*bolt.Options); ok && opts != nil {
		has, err := hasSysInfo(opts)
		if err != nil {
			return err
		}
		h.hasSysInfo = has
	}
	if err := h.Hook.Init(config); err != nil {
		return err
	}
	h.pending, h.stop, h.done = map[string]retainOp{}, make(chan struct{}), make(chan struct{})
	go func() {
		defer close(h.done)
		t := time.NewTicker(retainDelay)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				h.writeRetained()
				return
			case <-t.C:
				h.writeRetained()
			}
		}
	}()
	return nil
}

func (h *boltStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	h.mu.Lock()
	h.pending[pk.TopicName] = retainOp{cl, pk, r}
	h.mu.Unlock()
}

var retainedBucket = []byte("retained")

func (h *boltStore) writeRetained() {
	h.mu.Lock()
	ops := h.pending
	h.pending = make(map[string]retainOp, len(ops))
	h.mu.Unlock()
	if len(ops) == 0 {
		return
	}
	err := h.rdb.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(retainedBucket)
		if err != nil {
			return err
		}
		for name, op := range ops {
			if op.r == -1 || len(op.pk.Payload) == 0 {
				if err := b.Delete([]byte(name)); err != nil {
					return err
				}
				continue
			}
			props := op.pk.Properties.Copy(false)
			m := storage.Message{ID: storage.RetainedKey + "_" + name, T: storage.RetainedKey, FixedHeader: op.pk.FixedHeader,
				TopicName: name, Payload: op.pk.Payload, Created: op.pk.Created, Client: op.cl.ID, Origin: op.pk.Origin,
				Properties: storage.MessageProperties{PayloadFormat: props.PayloadFormat, MessageExpiryInterval: props.MessageExpiryInterval,
					ContentType: props.ContentType, ResponseTopic: props.ResponseTopic, CorrelationData: props.CorrelationData,
					User: props.User}}
			data, err := m.MarshalBinary()
			if err != nil {
				return err
			}
			if err := b.Put([]byte(name), data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		h.Log.Error("retained messages not saved", "count", len(ops), "err", err)
	}
}

// hasSysInfo reports whether the store at opts.Path holds the $SYS
// counters; it is read before mochi's hook opens the file (bbolt locks it).
func hasSysInfo(opts *bolt.Options) (bool, error) {
	if _, err := os.Stat(opts.Path); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	bucket := opts.Bucket
	if bucket == "" {
		bucket = "mochi" // the hook's default
	}
	db, err := bbolt.Open(opts.Path, 0o600, &bbolt.Options{Timeout: 5 * time.Second, ReadOnly: true})
	if err != nil {
		return false, err
	}
	defer db.Close()
	has := false
	err = db.View(func(tx *bbolt.Tx) error {
		if b := tx.Bucket([]byte(bucket)); b != nil {
			has = b.Get([]byte(storage.SysInfoKey)) != nil
		}
		return nil
	})
	return has, err
}

// StoredSysInfo reads the $SYS counters a previous broker saved; a new
// store has none, which is no error.
func (h *boltStore) StoredSysInfo() (storage.SystemInfo, error) {
	if !h.hasSysInfo {
		return storage.SystemInfo{}, nil
	}
	return h.Hook.StoredSysInfo()
}

// StoredRetainedMessages reads the retained file.
func (h *boltStore) StoredRetainedMessages() ([]storage.Message, error) {
	var msgs []storage.Message
	err := h.rdb.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(retainedBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error {
			var m storage.Message
			if err := m.UnmarshalBinary(v); err != nil {
				return err
			}
			msgs = append(msgs, m)
			return nil
		})
	})
	return msgs, err
}

func (h *boltStore) Stop() error {
	if h.stop != nil {
		close(h.stop)
		<-h.done
	}
	return errors.Join(h.Hook.Stop(), h.rdb.Close())
}

func inflightID(cl *mqtt.Client, pk packets.Packet) string {
	return storage.InflightKey + "_" + cl.ID + ":" + pk.FormatID()
}

func (h *boltStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if pk.FixedHeader.Type == packets.Puback {
		return
	}
	h.held.Store(inflightID(cl, pk), struct{}{})
	h.Hook.OnQosPublish(cl, pk, sent, resends)
}

func (h *boltStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if _, ok := h.held.LoadAndDelete(inflightID(cl, pk)); ok {
		h.Hook.OnQosComplete(cl, pk)
	}
}

func (h *boltStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if _, ok := h.held.LoadAndDelete(inflightID(cl, pk)); ok {
		h.Hook.OnQosDropped(cl, pk)
	}
}

func (h *boltStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.Hook.StoredInflightMessages()
	for i := range msgs {
		h.held.Store(msgs[i].ID, struct{}{})
		if msgs[i].PacketID != 0 {
			continue
		}
		if _, id, ok := cutLast(msgs[i].ID, ":"); ok {
			if n, err := strconv.ParseUint(id, 10, 16); err == nil {
				msgs[i].PacketID = uint16(n)
			}
		}
	}
	return msgs, err
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
