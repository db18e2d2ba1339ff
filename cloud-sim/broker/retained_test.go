package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/go-cmp/cmp"
	"github.com/mochi-mqtt/server/v2/packets"

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
	if err := b.store.rdb.Close(); err != nil { // every later write fails
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
