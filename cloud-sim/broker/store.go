package broker

import (
	"errors"
	"fmt"
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
	"github.com/mochi-mqtt/server/v2/system"
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
// Retained messages go to a file of their own (rdb, through its write-ahead
// log rlog), in group commits (retainWriter), before they are acknowledged:
// mochi stores a retained PUBLISH (OnRetainMessage) before it writes the
// PUBACK or PUBREC, and calls OnQosPublish in between, where the client's
// read loop waits for the batch holding its message to be appended to the
// log. A broker killed right after a PUBACK therefore serves, once
// restarted, what it acknowledged or something newer (issue 15; before,
// retained messages were written 500 ms behind and a crash lost them).
// Nothing is fsynced (NoSync, see addStore): what reached the OS survives
// a crash of the broker, not a power cut.
type boltStore struct {
	*bolt.Hook
	held sync.Map // ids of stored in-flight messages
	rdb  *bbolt.DB
	// hasSysInfo: the store held the broker's $SYS counters when it was
	// opened. mochi's hook logs an ERROR reading a key that is missing, as
	// it is in every new store.
	hasSysInfo bool

	rlog     *retainLog // rdb's write-ahead log
	retained *retainWriter
	acks     sync.Map // *mqtt.Client → *retainBatch holding its last retained message

	// life keeps mochi's event loop off the databases once they are
	// stopped: mochi's Close stops the hooks without waiting for the loop,
	// which may then be in a $SYS tick or an expiry (a data race, and a
	// nil database dereference: mochi's hook sets it to nil in Stop).
	// Clients' goroutines have ended by then (Close waits for them).
	life    sync.RWMutex
	stopped bool // guarded by life
}

// live runs f unless the store is stopped, and holds Stop off meanwhile.
func (h *boltStore) live(f func()) {
	h.life.RLock()
	defer h.life.RUnlock()
	if !h.stopped {
		f()
	}
}

// The hooks mochi's event loop calls (also OnClientExpired, OnQosDropped).

func (h *boltStore) OnSysInfoTick(sys *system.Info) {
	h.live(func() { h.Hook.OnSysInfoTick(sys) })
}

func (h *boltStore) OnRetainedExpired(filter string) {
	h.live(func() { h.Hook.OnRetainedExpired(filter) })
}

func (h *boltStore) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.live(func() { h.Hook.OnWillSent(cl, pk) })
}

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
	h.rlog.log = h.Log
	h.retained = startRetainWriter(h.rlog.write)
	return nil
}

// OnRetainMessage queues the message for the next group commit; the
// client's acknowledgement waits for it in OnQosPublish. (mochi calls it
// for retained Wills too, which nobody acknowledges.)
func (h *boltStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	b := h.retained.add(retainOp{cl, pk, r})
	if cl != nil {
		h.acks.Store(cl, b)
	}
}

// awaitRetained waits until the retained message cl sent last is written.
// One that could not be written is not acknowledged: cl's connection is
// closed before mochi writes the PUBACK, so that the client sends the
// message again when it reconnects.
func (h *boltStore) awaitRetained(cl *mqtt.Client) {
	v, ok := h.acks.LoadAndDelete(cl)
	if !ok {
		return
	}
	b := v.(*retainBatch)
	<-b.done
	if b.err != nil {
		h.Log.Error("retained message not saved; not acknowledged", "client", cl.ID, "err", b.err)
		cl.Stop(fmt.Errorf("broker: retained message not saved: %w", b.err))
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
	h.life.Lock()
	h.stopped = true
	h.life.Unlock()
	if h.retained != nil {
		h.retained.Stop()
	}
	return errors.Join(h.Hook.Stop(), h.rlog.Close(), h.rdb.Close())
}

func inflightID(cl *mqtt.Client, pk packets.Packet) string {
	return storage.InflightKey + "_" + cl.ID + ":" + pk.FormatID()
}

// OnQosPublish runs before mochi writes the PUBACK (or PUBREC) of an
// inbound PUBLISH: the acknowledgement waits there for the message's
// retained copy to be written.
func (h *boltStore) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	switch pk.FixedHeader.Type {
	case packets.Puback:
		h.awaitRetained(cl)
		return
	case packets.Pubrec:
		h.awaitRetained(cl)
	}
	h.held.Store(inflightID(cl, pk), struct{}{})
	h.Hook.OnQosPublish(cl, pk, sent, resends)
}

// OnDisconnect and OnClientExpired forget the client's last retained
// batch (one of a QoS 0 or a Will, which nobody waits for).
func (h *boltStore) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.acks.Delete(cl)
	h.Hook.OnDisconnect(cl, err, expire)
}

// OnUnsubscribed is also called from mochi's event loop: its expiry
// unsubscribes an expired session (mochi patch 6).
func (h *boltStore) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.live(func() { h.Hook.OnUnsubscribed(cl, pk) })
}

func (h *boltStore) OnClientExpired(cl *mqtt.Client) {
	h.acks.Delete(cl)
	h.live(func() { h.Hook.OnClientExpired(cl) })
}

func (h *boltStore) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if _, ok := h.held.LoadAndDelete(inflightID(cl, pk)); ok {
		h.Hook.OnQosComplete(cl, pk)
	}
}

// OnQosDropped deletes a message in flight that mochi dropped, except
// one a session taken over drops: the new connection took it over under
// the same id (client id and packet id), and deleting each from the store
// held the takeover up (a second for 1,500 of them).
func (h *boltStore) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if cl.IsTakenOver() {
		return
	}
	if _, ok := h.held.LoadAndDelete(inflightID(cl, pk)); ok {
		h.live(func() { h.Hook.OnQosDropped(cl, pk) })
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
