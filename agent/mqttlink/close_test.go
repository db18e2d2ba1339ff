package mqttlink_test

import (
	"context"
	"sync"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// publishRecorder is a mochi hook that records the topics clients publish on.
type publishRecorder struct {
	mqtt.HookBase
	mu     sync.Mutex
	topics []string
}

func (h *publishRecorder) ID() string           { return "publish-recorder" }
func (h *publishRecorder) Provides(b byte) bool { return b == mqtt.OnPublish }
func (h *publishRecorder) OnPublish(_ *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	h.mu.Lock()
	h.topics = append(h.topics, pk.TopicName)
	h.mu.Unlock()
	return pk, nil
}

func (h *publishRecorder) has(topic string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range h.topics {
		if t == topic {
			return true
		}
	}
	return false
}

// TestCloseWhileTheBirthIsOnItsWay: a link closed after it connected but
// before its birth was acknowledged (a SIGTERM right after a reconnect)
// still publishes its last message, the death. It used to publish it only
// once the birth was acknowledged, and then disconnected cleanly, so the
// broker dropped the Will too: the birth could reach the cloud with no
// death after it.
func TestCloseWhileTheBirthIsOnItsWay(t *testing.T) {
	rec := &publishRecorder{}
	_, u := startBroker(t, rec)
	building, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	link, err := mqttlink.New(mqttlink.Config{
		BrokerURL: u, ClientID: "gw-1", KeepAlive: 30 * time.Second, SessionExpiry: time.Minute,
		Will: func() (mqttlink.Message, error) {
			return mqttlink.Message{Topic: "will", Payload: []byte("dead"), QoS: 1}, nil
		},
		Birth: func() (mqttlink.Message, error) {
			once.Do(func() { close(building) })
			<-release // the birth on its way, not acknowledged yet
			return mqttlink.Message{Topic: "birth", Payload: []byte("born"), QoS: 1}, nil
		},
		OnMessage: func(mqttlink.Inbound) {},
		Logger:    testenv.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := link.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-building:
	case <-time.After(testenv.Timeout):
		t.Fatal("the link did not connect")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer ccancel()
	err = link.Close(cctx, &mqttlink.Message{Topic: "death", Payload: []byte("shutdown"), QoS: 1})
	close(release)
	if err != nil {
		t.Fatalf("close: %v", err)
	}
	// The death goes at QoS 1: Close returns after the broker's PUBACK,
	// which mochi sends after its OnPublish hooks.
	if !rec.has("death") {
		t.Error("the broker got no death from a link closed while its birth was on its way")
	}
}
