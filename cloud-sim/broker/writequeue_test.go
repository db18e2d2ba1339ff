package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
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

	write sync.Mutex // see Lock
}

// Lock and Unlock make heldConn a sync.Locker, which paho holds while it
// writes a packet. paho writes from more than one goroutine (its pinger
// sends a PINGREQ as soon as the connection is up), and a connection
// other than a *net.TCPConn gets each packet's parts as separate Writes:
// unlocked, a PINGREQ landed inside the first SUBSCRIBE now and then, and
// the broker dropped the connection as malformed.
func (c *heldConn) Lock()   { c.write.Lock() }
func (c *heldConn) Unlock() { c.write.Unlock() }

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
		if err := publishWithin(pub, testenv.Timeout, &paho.Publish{Topic: "load/x", QoS: 1, Payload: bytes.Clone(payload)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	dropped := br.Dropped()
	held.let()
	testenv.AwaitCount(t, "messages at the slow subscriber", n, func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(got)
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

// dialClient connects a paho client to addr with client id and no
// username.
func dialClient(t testing.TB, addr, id string) *paho.Client { return dialAs(t, addr, id, "") }

// dialAs connects a paho client to addr with client id and, when not
// empty, username; it is disconnected at cleanup.
func dialAs(t testing.TB, addr, id, username string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, Username: username, UsernameFlag: username != "", KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	return c
}
