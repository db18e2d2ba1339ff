package broker

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// stallEnd holds the end of one client's connection in mochi's clean-up
// (OnUnsubscribed, between its check for a takeover and its removal of
// the client by ID) until release is closed; only the first time, since a
// takeover unsubscribes the old client too.
type stallEnd struct {
	mqtt.HookBase
	target  atomic.Pointer[mqtt.Client]
	first   atomic.Bool
	stalled chan struct{}
	release chan struct{}
}

func (h *stallEnd) ID() string           { return "stall-end" }
func (h *stallEnd) Provides(b byte) bool { return b == mqtt.OnUnsubscribed }

func (h *stallEnd) OnUnsubscribed(cl *mqtt.Client, _ packets.Packet) {
	if cl != h.target.Load() {
		return
	}
	if h.first.CompareAndSwap(false, true) {
		close(h.stalled)
		<-h.release
	}
}

// TestTakeoverWhileTheOldConnectionEnds: a client that connects again
// while mochi is still cleaning up after its previous connection is, once
// connected, known to the broker: Disconnect closes it. (Before: mochi
// removed the client by ID after the new connection was added, so
// Disconnect found nothing to close; TestDisconnectSendsWill failed so
// under make test's load.)
func TestTakeoverWhileTheOldConnectionEnds(t *testing.T) {
	b, err := Start(Config{Auth: oneGateway{pass: "pw"}, Scheme: topic.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	stall := &stallEnd{stalled: make(chan struct{}), release: make(chan struct{})}
	if err := b.srv.AddHook(stall, nil); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if !released {
			released = true
			close(stall.release)
		}
	}
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	connect := func() *paho.Client {
		conn, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Error(err)
			return nil
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "acme/gw-1", Username: "acme/gw-1", UsernameFlag: true,
			Password: []byte("pw"), PasswordFlag: true, CleanStart: true, KeepAlive: 30}); err != nil {
			t.Errorf("connect: %v", err)
			return nil
		}
		return c
	}
	if connect() == nil {
		t.FailNow()
	}
	old, ok := b.srv.Clients.Get("acme/gw-1")
	if !ok {
		t.Fatal("the first connection is not in the broker's clients")
	}
	oldEnded := b.att.of(old.Net.Conn)
	if oldEnded == nil {
		t.Fatal("the first connection is not tracked")
	}
	stall.target.Store(old)
	if !b.Disconnect("acme/gw-1", false) {
		t.Fatal("Disconnect of the first connection reported it was not connected")
	}
	select {
	case <-stall.stalled:
	case <-ctx.Done():
		t.Fatal("the first connection's clean-up did not reach OnUnsubscribed")
	}

	// The second connection, while the first one's clean-up is held. Before
	// the fix it is added at once; after, it waits for the clean-up, so the
	// wait for it to be added ends at its deadline.
	second := make(chan *paho.Client, 1)
	go func() { second <- connect() }()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if cl, ok := b.srv.Clients.Get("acme/gw-1"); ok && cl != old {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	release()
	var c *paho.Client
	select {
	case c = <-second:
	case <-ctx.Done():
		t.Fatal("the second connection did not complete")
	}
	if c == nil {
		t.FailNow()
	}
	defer c.Disconnect(&paho.Disconnect{})
	select {
	case <-oldEnded:
	case <-ctx.Done():
		t.Fatal("mochi did not finish with the first connection")
	}
	cl, ok := b.srv.Clients.Get("acme/gw-1")
	if !ok || cl == old {
		t.Fatalf("the second connection is not in the broker's clients (found %v, the old one: %v)", ok, cl == old)
	}
	if !b.Disconnect("acme/gw-1", false) {
		t.Fatal("Disconnect of the second connection reported it was not connected")
	}
}
