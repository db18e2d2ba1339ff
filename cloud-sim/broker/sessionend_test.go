package broker

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// holdSessionEnd is a mochi hook that lets every client in and allows
// everything, and holds the end of the first connection of client id
// once its session has expired (mochi calls OnUnsubscribed from there)
// until a later connection of id has its session established, or for
// at most a second: with the end and the new connection kept apart, the
// new one cannot be established while the end is held.
type holdSessionEnd struct {
	mqtt.HookBase
	id string

	mu          sync.Mutex
	first       *mqtt.Client
	ending      chan struct{} // closed when the first connection's end is held
	established chan struct{} // closed when a later connection's session is
}

func (h *holdSessionEnd) ID() string { return "hold-session-end" }

func (h *holdSessionEnd) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck ||
		b == mqtt.OnSessionEstablished || b == mqtt.OnUnsubscribed
}

func (h *holdSessionEnd) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *holdSessionEnd) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

func (h *holdSessionEnd) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	if cl.ID != h.id {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.first == nil {
		h.first = cl
		return
	}
	close(h.established)
}

func (h *holdSessionEnd) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	first := h.first
	h.mu.Unlock()
	// The end of the session unsubscribes its filters; the client's own
	// UNSUBSCRIBE is not one of them here.
	if cl != first || !cl.Closed() {
		return
	}
	close(h.ending)
	select {
	case <-h.established:
	case <-time.After(time.Second):
	}
}

// TestSessionEndKeepsNextConnection: a connection whose session expires
// when it closes (Session Expiry 0: a controller replica's ingest
// session) ends while the same client id connects again. In mochi
// v2.7.9 the ended connection's clean-up, past its "taken over?" check,
// deleted the client id from the broker's clients: the new connection
// was gone from them, so nothing was delivered to it, though it was
// connected and subscribed (TestResubscribedAfterRefusal in
// cloud-sim/mqttclient failed so in CI). The hook holds the clean-up
// where the new connection can meet it.
func TestSessionEndKeepsNextConnection(t *testing.T) {
	hook := &holdSessionEnd{id: "ingest", ending: make(chan struct{}), established: make(chan struct{})}
	srv, addr := plainMochi(t, hook)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()

	connect := func(clean bool, received chan<- *paho.Publish) *paho.Client {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case received <- pr.Packet:
				default:
				}
				return true, nil
			}}})
		// No Session Expiry Interval: the session ends with the connection.
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "ingest", KeepAlive: 30, CleanStart: clean}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "fleet/#"}}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := connect(true, make(chan *paho.Publish, 1))
	first.Disconnect(&paho.Disconnect{})
	select {
	case <-hook.ending:
	case <-ctx.Done():
		t.Fatal("the first connection's session did not end")
	}
	// As autopaho reconnects: without Clean Start.
	received := make(chan *paho.Publish, 100)
	next := connect(false, received)
	t.Cleanup(func() { next.Disconnect(&paho.Disconnect{}) })

	testenv.Eventually(t, "a publication at the new connection", func() bool {
		if err := srv.Publish("fleet/gw-1", []byte("x"), false, 0); err != nil {
			t.Fatal(err)
		}
		select {
		case <-received:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})
	if cl, ok := srv.Clients.Get("ingest"); !ok || cl.Closed() {
		t.Errorf("the broker's clients hold no open connection of ingest (found: %v)", ok)
	}
}

// holdDisconnect is a mochi hook that lets every client in, allows
// everything, and holds the end of client id's first connection in
// OnDisconnect (before its session's clean-up) until release is closed.
type holdDisconnect struct {
	mqtt.HookBase
	id      string
	first   sync.Once
	held    chan struct{}
	release chan struct{}
}

func (h *holdDisconnect) ID() string { return "hold-disconnect" }

func (h *holdDisconnect) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnDisconnect
}

func (h *holdDisconnect) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }
func (h *holdDisconnect) OnACLCheck(*mqtt.Client, string, bool) bool              { return true }

func (h *holdDisconnect) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	if cl.ID != h.id {
		return
	}
	h.first.Do(func() {
		close(h.held)
		<-h.release
	})
}

// TestExpiredWhileEndingKeepsNextConnection: a connection with an explicit
// Session Expiry Interval of 0 ends; mochi's expiry loop removes its
// session before the connection's own clean-up runs; a new connection of
// the same id comes in between. The clean-up, which found no takeover,
// deleted the id: the new connection was gone from the clients.
func TestExpiredWhileEndingKeepsNextConnection(t *testing.T) {
	hook := &holdDisconnect{id: "ingest", held: make(chan struct{}), release: make(chan struct{})}
	srv, addr := plainMochi(t, hook)
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	connect := func() *paho.Client {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		zero := uint32(0)
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "ingest", KeepAlive: 30, CleanStart: true,
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &zero}}); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := connect()
	first.Disconnect(&paho.Disconnect{})
	<-hook.held
	testenv.Eventually(t, "the ended session expired", func() bool {
		_, ok := srv.Clients.Get("ingest")
		return !ok
	})
	next := connect()
	t.Cleanup(func() { next.Disconnect(&paho.Disconnect{}) })
	nextCl, ok := srv.Clients.Get("ingest")
	if !ok {
		t.Fatal("the new connection is not among the broker's clients")
	}
	close(hook.release)
	// The first connection's clean-up has run once its goroutine is gone;
	// the server's client count says so.
	testenv.Eventually(t, "the first connection's end done", func() bool {
		return atomic.LoadInt64(&srv.Info.ClientsConnected) == 1
	})
	if cl, ok := srv.Clients.Get("ingest"); !ok || cl != nextCl {
		t.Errorf("the broker's clients no longer hold the new connection of ingest (found: %v)", ok)
	}
}

// plainMochi is a mochi server as published (but for the patches of its
// copy), without the embedded broker's hooks, with hook and an inline
// client, on a loopback port; it is closed at cleanup.
func plainMochi(t *testing.T, hook mqtt.Hook) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	ln := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := srv.AddListener(ln); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, ln.Address()
}
