package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// heldConn is a client connection that reads nothing while held: the
// socket's buffers fill and the broker's writes to it wait, as for a
// subscriber that has fallen behind.
type heldConn struct {
	net.Conn
	mu      sync.Mutex
	release chan struct{} // guarded by mu: nil when not held
}

func (c *heldConn) hold() {
	c.mu.Lock()
	c.release = make(chan struct{})
	c.mu.Unlock()
}

func (c *heldConn) let() {
	c.mu.Lock()
	close(c.release)
	c.release = nil
	c.mu.Unlock()
}

func (c *heldConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	release := c.release
	c.mu.Unlock()
	if release != nil {
		<-release
	}
	return c.Conn.Read(p)
}

// TestSlowSubscriberLosesNoQoS1 publishes 4,000 QoS 1 messages of 4 KiB
// (16 MiB, more than the sockets buffer) to a subscriber that reads
// nothing until the last is acknowledged to the publisher, through a
// broker with its default outbound channel (DefaultMaxPendingWrites).
// Every message must arrive, in order. Before the connection's write
// queue, mochi's write loop waited on the full socket holding the
// subscriber's lock, which the publisher's PUBLISH needs too: the
// publisher got no PUBACK after about 1,000 messages, and with a free lock
// the channel would have filled and dropped the rest.
func TestSlowSubscriberLosesNoQoS1(t *testing.T) {
	const n, size = 4000, 4 << 10
	br, err := Start(Config{MaxQueuedBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	var (
		mu  sync.Mutex
		got []int
	)
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	held := &heldConn{Conn: conn}
	sub := paho.NewClient(paho.ClientConfig{Conn: held, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			mu.Lock()
			got = append(got, int(binary.BigEndian.Uint32(pr.Packet.Payload)))
			mu.Unlock()
			return true, nil
		},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := sub.Connect(ctx, &paho.Connect{ClientID: "slow", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Disconnect(&paho.Disconnect{}) })
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "load/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	held.hold()
	pub := dialClient(t, br.Addr(), "publisher")
	payload := make([]byte, size)
	for i := range n {
		binary.BigEndian.PutUint32(payload, uint32(i))
		if _, err := pub.Publish(ctx, &paho.Publish{Topic: "load/x", QoS: 1, Payload: bytes.Clone(payload)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	dropped := br.Dropped()
	held.let()
	testenv.Eventually(t, fmt.Sprintf("%d messages at the slow subscriber", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= n
	})
	if dropped != 0 {
		t.Errorf("broker dropped %d messages, want 0", dropped)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, v := range got {
		if v != i {
			t.Fatalf("message %d carries %d: want every message once, in order", i, v)
		}
	}
}

func dialClient(t testing.TB, addr, id string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}

// BenchmarkConnectionMemory measures the broker's heap per idle connected
// client: 2,000 MQTT v5 clients connect (a bare CONNECT each, no
// subscription) and the heap's growth after GC is divided among them. The
// clients' side of each connection, in this process too, is a net.Conn
// and a few hundred bytes. It uses only Start's API, so that the same file
// measures an older broker (docs/benchmarks.md, issue 15).
func BenchmarkConnectionMemory(b *testing.B) {
	const clients = 2000
	for b.Loop() {
		br, err := Start(Config{})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, clients)
		for i := range conns {
			conns[i] = rawConnect(b, br.Addr(), fmt.Sprintf("idle-%d", i))
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/clients/1024, "KiB/connection")
		for _, c := range conns {
			c.Close()
		}
		br.Close()
	}
}

// rawConnect sends an MQTT v5 CONNECT (clean start, keep-alive 60 s) and
// reads the CONNACK.
func rawConnect(b *testing.B, addr, id string) net.Conn {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	body := []byte{0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0}
	body = binary.BigEndian.AppendUint16(body, uint16(len(id)))
	body = append(body, id...)
	if _, err := conn.Write(append([]byte{0x10, byte(len(body))}, body...)); err != nil {
		b.Fatal(err)
	}
	head := make([]byte, 2)
	if _, err := io.ReadFull(conn, head); err != nil || head[0] != 0x20 {
		b.Fatalf("CONNACK of %s: %x %v", id, head, err)
	}
	if _, err := io.ReadFull(conn, make([]byte, head[1])); err != nil {
		b.Fatal(err)
	}
	return conn
}
