package mqttlink_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// connectRecorder is a mochi hook that records the CONNECT packets.
type connectRecorder struct {
	mqtt.HookBase
	mu       sync.Mutex
	connects []packets.Packet
}

func (h *connectRecorder) ID() string { return "connect-recorder" }
func (h *connectRecorder) Provides(b byte) bool {
	return b == mqtt.OnConnect
}
func (h *connectRecorder) OnConnect(_ *mqtt.Client, pk packets.Packet) error {
	h.mu.Lock()
	h.connects = append(h.connects, pk)
	h.mu.Unlock()
	return nil
}

func (h *connectRecorder) all() []packets.Packet {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]packets.Packet(nil), h.connects...)
}

// startBroker starts a mochi broker that lets everyone in, with an inline
// client to publish from, and returns it with its URL.
func startBroker(t *testing.T, hook mqtt.Hook) (*mqtt.Server, *url.URL) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(auth.AllowHook), nil); err != nil {
		t.Fatal(err)
	}
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
	u, err := url.Parse("mqtt://" + ln.Address())
	if err != nil {
		t.Fatal(err)
	}
	return srv, u
}

// connect connects link until the test ends, and closes it before the
// broker (cleanups run last first): the broker closing a live link made
// autopaho log through t.Output() after the test had completed, which
// panics.
func connect(t *testing.T, link *mqttlink.Link) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), testenv.Timeout)
		defer ccancel()
		link.Close(cctx, nil)
	})
	if err := link.Connect(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMaxPacketSizeAdvertised: the link advertises MaxPacketSize in
// CONNECT (MQTT v5 Maximum Packet Size), so the broker drops a larger
// publication instead of sending it, and the link stays connected and
// receives what comes next.
func TestMaxPacketSizeAdvertised(t *testing.T) {
	const limit = 4096
	rec := &connectRecorder{}
	srv, u := startBroker(t, rec)

	var mu sync.Mutex
	var got []mqttlink.Inbound
	ready := make(chan struct{}, 10)
	link, err := mqttlink.New(mqttlink.Config{
		BrokerURL: u, ClientID: "gw-1", KeepAlive: 30 * time.Second, SessionExpiry: time.Minute, MaxPacketSize: limit,
		Subscriptions: []string{"cmd/#"},
		Will: func() (mqttlink.Message, error) {
			return mqttlink.Message{Topic: "death", Payload: []byte("dead"), QoS: 1}, nil
		},
		Birth: func() (mqttlink.Message, error) {
			return mqttlink.Message{Topic: "birth", Payload: []byte("born"), QoS: 1}, nil
		},
		OnReady: func(context.Context) { ready <- struct{}{} },
		Logger:  slog.New(slog.NewTextHandler(t.Output(), nil)),
		OnMessage: func(in mqttlink.Inbound) {
			mu.Lock()
			got = append(got, in)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, link)
	select {
	case <-ready:
	case <-time.After(testenv.Timeout):
		t.Fatal("the link did not connect")
	}

	connects := rec.all()
	if len(connects) != 1 || connects[0].Properties.MaximumPacketSize != limit {
		var adv []uint32
		for _, c := range connects {
			adv = append(adv, c.Properties.MaximumPacketSize)
		}
		t.Errorf("CONNECT Maximum Packet Size = %v, want [%d]", adv, limit)
	}

	// Too large by a byte's worth of payload, then one that fits.
	if err := srv.Publish("cmd/big", bytes.Repeat([]byte("x"), limit), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish("cmd/small", []byte("fits"), false, 1); err != nil {
		t.Fatal(err)
	}
	received := func() []string {
		mu.Lock()
		defer mu.Unlock()
		var topics []string
		for _, in := range got {
			topics = append(topics, in.Topic)
		}
		return topics
	}
	testenv.Eventually(t, "the publication that fits received", func() bool {
		for _, tp := range received() {
			if tp == "cmd/small" {
				return true
			}
		}
		return false
	})
	if topics := received(); len(topics) != 1 {
		t.Errorf("received %v, want only cmd/small (cmd/big is over the advertised maximum)", topics)
	}
	if n := len(rec.all()); n != 1 {
		t.Errorf("%d CONNECTs, want 1: the link stays connected", n)
	}
	if cl, ok := srv.Clients.Get("gw-1"); !ok || cl.Closed() {
		t.Error("the link's connection is closed, want it up")
	}
}
