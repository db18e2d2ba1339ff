package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	bbolt "go.etcd.io/bbolt"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// blockingWrites is a retainWriter's write that records each batch and
// holds the first until released.
type blockingWrites struct {
	started chan struct{}
	release chan struct{}
	err     error

	mu      sync.Mutex
	batches []map[string]string // topic → payload
}

func newBlockingWrites(err error) *blockingWrites {
	return &blockingWrites{started: make(chan struct{}), release: make(chan struct{}), err: err}
}

func (w *blockingWrites) write(ops map[string]retainOp) error {
	w.mu.Lock()
	first := len(w.batches) == 0
	batch := map[string]string{}
	for topic, op := range ops {
		batch[topic] = string(op.pk.Payload)
	}
	w.batches = append(w.batches, batch)
	w.mu.Unlock()
	if first {
		close(w.started)
		<-w.release
	}
	return w.err
}

func retained(topic, payload string) retainOp {
	return retainOp{pk: packets.Packet{TopicName: topic, Payload: []byte(payload)}, r: 1}
}

func await(t *testing.T, b *retainBatch) error {
	t.Helper()
	select {
	case <-b.done:
		return b.err
	case <-time.After(testenv.Timeout):
		t.Fatal("batch not written")
		return nil
	}
}

// TestRetainWriterGroupCommits: what arrives while a batch is written goes
// in the next one, a single transaction holding the latest message per
// topic; each add's batch is done only once written.
func TestRetainWriterGroupCommits(t *testing.T) {
	writes := newBlockingWrites(nil)
	w := startRetainWriter(writes.write)
	defer w.Stop()
	first := w.add(retained("t/0", "a"))
	<-writes.started
	var later []*retainBatch
	for i := range 50 {
		later = append(later, w.add(retained(fmt.Sprintf("t/%d", i%10), fmt.Sprint(i))))
	}
	select {
	case <-later[0].done:
		t.Fatal("a batch added during a write was done before it was written")
	default:
	}
	close(writes.release)
	for _, b := range append(later, first) {
		if err := await(t, b); err != nil {
			t.Fatal(err)
		}
	}
	want := []map[string]string{{"t/0": "a"}, {}}
	for i := 40; i < 50; i++ {
		want[1][fmt.Sprintf("t/%d", i%10)] = fmt.Sprint(i)
	}
	writes.mu.Lock()
	defer writes.mu.Unlock()
	if diff := cmp.Diff(want, writes.batches); diff != "" {
		t.Errorf("batches written (-want +got):\n%s", diff)
	}
}

// TestRetainWriterFailures: a failed write fails every message of its
// batch; a message added after Stop fails at once; Stop writes what was
// added before it.
func TestRetainWriterFailures(t *testing.T) {
	full := errors.New("disk full")
	writes := newBlockingWrites(full)
	w := startRetainWriter(writes.write)
	b := w.add(retained("t/0", "a"))
	<-writes.started
	close(writes.release)
	if err := await(t, b); !errors.Is(err, full) {
		t.Errorf("failed write: got %v, want %v", err, full)
	}

	ok := newBlockingWrites(nil)
	close(ok.release)
	w = startRetainWriter(ok.write)
	pending := w.add(retained("t/1", "b"))
	w.Stop()
	if err := await(t, pending); err != nil {
		t.Errorf("added before Stop: got %v, want it written", err)
	}
	if err := await(t, w.add(retained("t/2", "c"))); !errors.Is(err, errRetainStopped) {
		t.Errorf("added after Stop: got %v, want %v", err, errRetainStopped)
	}
}

// TestRetainedNotSavedNotAcknowledged: a retained QoS 1 message the broker
// cannot write is not acknowledged: the publisher's connection is closed
// instead of a PUBACK, so that it sends the message again.
func TestRetainedNotSavedNotAcknowledged(t *testing.T) {
	b, err := Start(Config{StorePath: filepath.Join(t.TempDir(), "broker.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.store.rlog.f.Close(); err != nil { // every later write fails
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnClientError: func(err error) { lost <- err }})
	connectClient(t, c, conn, "pub")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	acked := make(chan error, 1)
	go func() {
		_, err := c.Publish(ctx, &paho.Publish{Topic: "t/0", QoS: 1, Retain: true, Payload: []byte("1")})
		acked <- err
	}()
	select {
	case err := <-acked:
		t.Fatalf("publish returned %v before the connection was lost, want no PUBACK", err)
	case <-lost:
	case <-time.After(testenv.Timeout):
		t.Fatal("connection not closed")
	}
	cancel()
	if err := <-acked; err == nil {
		t.Error("publish acknowledged, want no PUBACK")
	}
}

// TestRetainLogRecovery: a broker that dies without closing its store
// finds, on the next open, every batch its log holds, those already
// applied to the retained file at a checkpoint and those after it, and
// ignores a record cut short at the end (a write that never finished).
func TestRetainLogRecovery(t *testing.T) {
	dir := t.TempDir()
	rdbPath, logPath := filepath.Join(dir, "r.db"), filepath.Join(dir, "r.log")
	rdb, err := bbolt.Open(rdbPath, 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := openRetainLog(rdb, logPath, 400) // a checkpoint after the second batch (a record is ~165 bytes)
	if err != nil {
		t.Fatal(err)
	}
	batches := []map[string]retainOp{
		{"t/a": retained("t/a", "1"), "t/b": retained("t/b", "1")},
		{"t/a": retained("t/a", "2")},
		{"t/b": retained("t/b", ""), "t/c": retained("t/c", "3")},
	}
	for i, ops := range batches {
		if err := l.write(ops); err != nil {
			t.Fatal(err)
		}
		if i == 1 && l.size != 0 {
			t.Fatalf("log holds %d bytes after %d, want a checkpoint", l.size, l.max)
		}
	}
	l.f.Close() // killed: no checkpoint
	torn := appendRetainRecord(nil, "t/d", []byte("4"))
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(torn[:len(torn)-1])
	f.Close()
	rdb.Close()

	rdb, err = bbolt.Open(rdbPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	l, err = openRetainLog(rdb, logPath, 400)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := map[string]string{}
	rdb.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(retainedBucket).ForEach(func(k, v []byte) error {
			var m storage.Message
			if err := m.UnmarshalBinary(v); err != nil {
				t.Errorf("%s: %v", k, err)
			}
			got[string(k)] = string(m.Payload)
			return nil
		})
	})
	if diff := cmp.Diff(map[string]string{"t/a": "2", "t/c": "3"}, got); diff != "" {
		t.Errorf("retained after reopening (-want +got):\n%s", diff)
	}
	if fi, err := os.Stat(logPath); err != nil || fi.Size() != 0 {
		t.Errorf("log after reopening: %v, %v; want it applied and empty", fi.Size(), err)
	}
}

// TestRetainLogCheckpointFails: a batch appended to the log is written,
// even when applying the log to the retained file then fails; the log
// keeps it for the next open.
func TestRetainLogCheckpointFails(t *testing.T) {
	dir := t.TempDir()
	rdbPath, logPath := filepath.Join(dir, "r.db"), filepath.Join(dir, "r.log")
	rdb, err := bbolt.Open(rdbPath, 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := openRetainLog(rdb, logPath, 1) // a checkpoint after every batch
	if err != nil {
		t.Fatal(err)
	}
	rdb.Close() // every checkpoint fails
	if err := l.write(map[string]retainOp{"t/a": retained("t/a", "1")}); err != nil {
		t.Fatalf("write with a failing checkpoint: %v, want the batch written to the log", err)
	}
	l.f.Close()
	rdb, err = bbolt.Open(rdbPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if l, err = openRetainLog(rdb, logPath, 1); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var got storage.Message
	rdb.View(func(tx *bbolt.Tx) error { return got.UnmarshalBinary(tx.Bucket(retainedBucket).Get([]byte("t/a"))) })
	if string(got.Payload) != "1" {
		t.Errorf("t/a after reopening: got %q, want %q", got.Payload, "1")
	}
}
