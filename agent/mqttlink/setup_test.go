package mqttlink_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// slowSubscribe is a mochi hook that holds the first SUBSCRIBE, and so its
// SUBACK, until release is closed: a broker too busy to answer in time.
type slowSubscribe struct {
	mqtt.HookBase
	release chan struct{}
	mu      sync.Mutex
	seen    int // SUBSCRIBEs
}

func (h *slowSubscribe) ID() string           { return "slow-subscribe" }
func (h *slowSubscribe) Provides(b byte) bool { return b == mqtt.OnSubscribe }
func (h *slowSubscribe) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	h.mu.Lock()
	h.seen++
	first := h.seen == 1
	h.mu.Unlock()
	if first {
		<-h.release
	}
	return pk
}

// TestSetupTriedAgain: a SUBACK that comes after the set-up timeout does
// not leave the gateway connected but unborn: the link subscribes again on
// the same connection and publishes its birth. It gave up on that
// connection until it dropped, and 152 of TestReplicasShareIngest's 300
// simulated gateways never came online under make test's load.
func TestSetupTriedAgain(t *testing.T) {
	hook := &slowSubscribe{release: make(chan struct{})}
	_, u := startBroker(t, hook)
	released := sync.OnceFunc(func() { close(hook.release) })
	t.Cleanup(released) // before the broker closes (cleanups run last first)

	logs := &testenv.LogBuffer{}
	ready := make(chan struct{}, 10)
	link, err := mqttlink.New(mqttlink.Config{
		BrokerURL: u, ClientID: "gw-1", KeepAlive: 30 * time.Second, SessionExpiry: time.Minute,
		Subscriptions: []string{"cmd/#"}, SetupTimeout: 200 * time.Millisecond,
		Backoff: backoff.Policy{Base: 50 * time.Millisecond, Max: 100 * time.Millisecond},
		Will: func() (mqttlink.Message, error) {
			return mqttlink.Message{Topic: "death", Payload: []byte("dead"), QoS: 1}, nil
		},
		Birth: func() (mqttlink.Message, error) {
			return mqttlink.Message{Topic: "birth", Payload: []byte("born"), QoS: 1}, nil
		},
		OnReady:   func(context.Context) { ready <- struct{}{} },
		OnMessage: func(mqttlink.Inbound) {},
		Logger:    slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	connect(t, link)
	// The first set-up times out waiting for its SUBACK; then the broker
	// answers (the SUBACK comes too late) and takes the next SUBSCRIBE.
	testenv.Eventually(t, "the first set-up timed out", func() bool {
		return strings.Contains(logs.String(), "subscribe")
	})
	released()
	select {
	case <-ready:
	case <-time.After(testenv.Timeout):
		t.Fatalf("the link never published its birth after its first set-up timed out; it logged:\n%s", logs)
	}
	if !link.Ready() {
		t.Error("OnReady was called but the link is not Ready")
	}
}
