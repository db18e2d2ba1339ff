package mqttclient

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// refuseShare is a mochi hook that lets every client in and allows
// everything, except that it refuses the shared subscriptions of one
// SUBSCRIBE, the refuse-th that asks for them (0: none).
type refuseShare struct {
	mqtt.HookBase
	refuse int

	mu   sync.Mutex
	asks int // SUBSCRIBEs with shared subscriptions seen
}

func (h *refuseShare) ID() string { return "refuse-share" }

func (h *refuseShare) Provides(b byte) bool {
	return b == mqtt.OnConnectAuthenticate || b == mqtt.OnACLCheck || b == mqtt.OnSubscribe
}

func (h *refuseShare) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

// OnSubscribe counts the SUBSCRIBEs that ask for shared subscriptions.
func (h *refuseShare) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	if len(pk.Filters) > 0 && strings.HasPrefix(pk.Filters[0].Filter, "$share/") {
		h.mu.Lock()
		h.asks++
		h.mu.Unlock()
	}
	return pk
}

func (h *refuseShare) OnACLCheck(_ *mqtt.Client, name string, _ bool) bool {
	if !strings.HasPrefix(name, "$share/") {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.asks != h.refuse
}

// startBroker is a mochi broker on loopback with hook (and an inline
// client, to publish from the test).
func startBroker(t *testing.T, hook mqtt.Hook) (*mqtt.Server, *url.URL) {
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
	return srv, &url.URL{Scheme: "mqtt", Host: ln.Address()}
}

// dialShared dials a console of share group g with id, its log in logs;
// it is closed before the broker.
func dialShared(t *testing.T, u *url.URL, id string, logs *testenv.LogBuffer, watch func(Received)) *Console {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	c, err := Dial(ctx, Config{BrokerURL: u, ID: id, Scheme: topic.Default(), Share: "g", SessionExpiry: time.Hour, LatestOnly: true,
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Watch: watch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestResubscribedAfterRefusal: when the broker refuses the ingest
// session's shared subscriptions on a new connection (or does not answer
// in time), the console tries again on that connection until they are in
// place. It logged the refusal and took no share until the connection
// dropped again: a clean session has no subscriptions of its own.
func TestResubscribedAfterRefusal(t *testing.T) {
	hook := &refuseShare{refuse: 2} // the first reconnection's
	srv, u := startBroker(t, hook)
	got := make(chan Received, 100)
	logs := &testenv.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the console's log:\n%s", logs)
		}
	})
	dialShared(t, u, "c1", logs, func(r Received) {
		if r.Topic.Kind == topic.Status && !r.Retained {
			select {
			case got <- r:
			default:
			}
		}
	})
	first, ok := srv.Clients.Get("c1-ingest")
	if !ok {
		t.Fatal("no ingest session at the broker")
	}
	_ = srv.DisconnectClient(first, packets.ErrAdministrativeAction) // returns the code sent
	testenv.Eventually(t, "the refused shares asked for again", func() bool {
		hook.mu.Lock()
		defer hook.mu.Unlock()
		return hook.asks > hook.refuse
	})
	name := topic.Default().Status("acme", "gw-1", "web")
	testenv.Eventually(t, "a status taken through the share", func() bool {
		if err := srv.Publish(name, []byte{}, false, 0); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})
	if !strings.Contains(logs.String(), "0x87") {
		t.Errorf("the console's log does not name the refusal (0x87, not authorized):\n%s", logs)
	}
}

// TestResyncLeftoversDropped: a replica stopped during a Resync leaves
// its persistent session subscribed to every birth, death and status; when
// it connects again, the console unsubscribes them, so that live ones do
// not come to it twice (through its share and its own session).
func TestResyncLeftoversDropped(t *testing.T) {
	srv, u := startBroker(t, &refuseShare{})
	s := topic.Default()
	filters := []string{s.Filter(topic.Birth), s.Filter(topic.Death), s.Filter(topic.Status)}
	// The earlier process: its session, subscribed as Resync does.
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	old, err := autopaho.NewConnection(ctx, autopaho.ClientConfig{ServerUrls: []*url.URL{u}, KeepAlive: 30, SessionExpiryInterval: 3600,
		CleanStartOnInitialConnection: true, ClientConfig: paho.ClientConfig{ClientID: "c1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.AwaitConnection(ctx); err != nil {
		t.Fatal(err)
	}
	var subs []paho.SubscribeOptions
	for _, f := range filters {
		subs = append(subs, paho.SubscribeOptions{Topic: f})
	}
	if _, err := old.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs}); err != nil {
		t.Fatal(err)
	}
	if err := old.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	subscribed := func(name string) bool {
		_, ok := srv.Topics.Subscribers(name).Subscriptions["c1"]
		return ok
	}
	names := []string{s.Birth("acme", "gw-1"), s.Death("acme", "gw-1"), s.Status("acme", "gw-1", "web")}
	for _, name := range names {
		if !subscribed(name) {
			t.Fatalf("the earlier session is not subscribed to %s", name)
		}
	}

	dialShared(t, u, "c1", &testenv.LogBuffer{}, nil)
	testenv.Eventually(t, "the own session no longer subscribed to births, deaths and statuses", func() bool {
		for _, name := range names {
			if subscribed(name) {
				return false
			}
		}
		return true
	})
	if !subscribed(s.ConsoleReply("acme", "gw-1", "c1")) {
		t.Error("the own session lost its subscription to its replies")
	}
}
