package broker

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
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

// stallMove holds a session's takeover inside mochi, where the old client
// is marked taken over and its messages in flight copied to the new one
// but the new one is not yet in mochi's map (while mochi clears the old
// client's messages in flight: OnQosDropped), until release is closed.
type stallMove struct {
	mqtt.HookBase
	id      string
	once    sync.Once
	stalled chan struct{}
	release chan struct{}
}

func (h *stallMove) ID() string           { return "stall-move" }
func (h *stallMove) Provides(b byte) bool { return b == mqtt.OnQosDropped }

func (h *stallMove) OnQosDropped(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID == h.id && cl.IsTakenOver() {
		h.once.Do(func() {
			close(h.stalled)
			<-h.release
		})
	}
}

// TestNothingLostWhileSessionMoves: QoS 1 publications routed to a
// persistent session while it moves to a new connection reach the new
// connection. mochi put them in flight to the old client after copying
// its messages in flight to the new one, and they were lost without a
// count: a console whose connection was cut while statuses flowed lost
// hundreds.
func TestNothingLostWhileSessionMoves(t *testing.T) {
	for _, withStore := range []bool{false, true} {
		t.Run(fmt.Sprintf("store %v", withStore), func(t *testing.T) {
			cfg := Config{}
			if withStore {
				cfg.StorePath = filepath.Join(t.TempDir(), "broker.db")
			}
			b, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			stall := &stallMove{id: "sub", stalled: make(chan struct{}), release: make(chan struct{})}
			if err := b.srv.AddHook(stall, nil); err != nil {
				t.Fatal(err)
			}
			release := sync.OnceFunc(func() { close(stall.release) })
			defer release()
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			expiry := uint32(3600)
			// sub connects; acks only when ack is set (the first
			// connection leaves its message in flight).
			connectSub := func(ack bool, got chan<- string) (*paho.Client, net.Conn, error) {
				conn, err := net.Dial("tcp", b.Addr())
				if err != nil {
					return nil, nil, err
				}
				var c *paho.Client
				c = paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: true,
					OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
						got <- string(pr.Packet.Payload)
						if ack {
							_ = c.Ack(pr.Packet)
						}
						return true, nil
					}}})
				_, err = c.Connect(ctx, &paho.Connect{ClientID: "sub", KeepAlive: 30, CleanStart: false,
					Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
				return c, conn, err
			}
			first := make(chan string, 10)
			sub, subConn, err := connectSub(false, first)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "t/#", QoS: 1}}}); err != nil {
				t.Fatal(err)
			}
			pub, _, err := connect(t, b.Addr(), "pub")
			if err != nil {
				t.Fatal(err)
			}
			publish := func(payload string) {
				t.Helper()
				if _, err := pub.Publish(ctx, &paho.Publish{Topic: "t/x", QoS: 1, Payload: []byte(payload)}); err != nil {
					t.Fatal(err)
				}
			}
			publish("before")
			select {
			case <-first: // in flight, not acknowledged
			case <-ctx.Done():
				t.Fatal("the first connection got nothing")
			}
			old, _ := b.srv.Clients.Get("sub")
			subConn.Close() // cut
			testenv.Eventually(t, "the broker seeing the connection end", old.Closed)

			// The session moves to a new connection, held where mochi
			// loses what comes to the old client; three publications come.
			got := make(chan string, 10)
			connected := make(chan error, 1)
			go func() {
				_, _, err := connectSub(true, got)
				connected <- err
			}()
			select {
			case <-stall.stalled:
			case <-ctx.Done():
				t.Fatal("the takeover never reached mochi's clean-up of the old client")
			}
			want := map[string]bool{"before": true}
			for _, p := range []string{"during-1", "during-2", "during-3"} {
				publish(p)
				want[p] = true
			}
			testenv.Eventually(t, "the publications routed (to the old client)", func() bool { return old.State.Inflight.Len() >= 3 })
			release()
			if err := <-connected; err != nil {
				t.Fatal(err)
			}
			for len(want) > 0 {
				select {
				case p := <-got:
					delete(want, p)
				case <-ctx.Done():
					t.Fatalf("the new connection never got %v", want)
				}
			}
		})
	}
}
