package broker

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// holdFirstWrite is a mochi hook that holds the first PUBLISH written to
// client id (in its write loop) until release is closed: the loop stops
// taking messages from the client's outbound channel, as when it is
// starved of CPU on a busy machine.
type holdFirstWrite struct {
	mqtt.HookBase
	id      string
	once    sync.Once
	held    chan struct{} // closed once the write is held
	release chan struct{}
}

func (h *holdFirstWrite) ID() string           { return "hold-first-write" }
func (h *holdFirstWrite) Provides(b byte) bool { return b == mqtt.OnPacketEncode }
func (h *holdFirstWrite) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if cl.ID == h.id && pk.FixedHeader.Type == packets.Publish {
		h.once.Do(func() {
			close(h.held)
			<-h.release
		})
	}
	return pk
}

// TestControllerOverflowStaysInFlight: a QoS 1 message for a controller
// replica's session (a reply, an event) that finds the session's outbound
// channel full is written to it at once and stays in flight until the
// replica acknowledges it: when the connection is cut first, the session
// gets it again on its next connection. mochi drops such a message and
// takes it out of flight; the broker's rescue wrote it at QoS 0, so a cut
// before the replica read it lost it.
func TestControllerOverflowStaysInFlight(t *testing.T) {
	br, err := Start(Config{Auth: replicaAuth{}, Scheme: topic.Default(), MaxPendingWrites: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	hold := &holdFirstWrite{id: "controller-b", held: make(chan struct{}), release: make(chan struct{})}
	if err := br.srv.AddHook(hold, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	name := topic.Default().Events("acme", "gw-1")

	var mu sync.Mutex
	var got []string // payloads the second connection received
	connect := func(first bool) (*paho.Client, net.Conn) {
		conn, err := net.Dial("tcp", br.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: first,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				if !first {
					mu.Lock()
					got = append(got, string(pr.Packet.Payload))
					mu.Unlock()
				}
				return true, nil
			}}})
		expiry := uint32(3600)
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "controller-b", Username: "controller", UsernameFlag: true, KeepAlive: 30,
			CleanStart: first, Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
			t.Fatal(err)
		}
		return c, conn
	}
	ctl, conn := connect(true)
	if _, err := ctl.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: name, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	gw := dialAs(t, br.Addr(), "gw-1", "gw-1")
	publish := func(payload string) {
		t.Helper()
		if _, err := gw.Publish(ctx, &paho.Publish{Topic: name, QoS: 1, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	publish("m1") // taken by the write loop, which is held
	<-hold.held
	publish("m2") // fills the channel
	publish("m3") // finds it full
	// The replica has acknowledged nothing; its connection is cut.
	conn.Close()
	close(hold.release)

	ctl, _ = connect(false)
	t.Cleanup(func() {
		ctl.Disconnect(&paho.Disconnect{})
		if t.Failed() {
			mu.Lock()
			t.Logf("the next connection got %q", got)
			mu.Unlock()
		}
	})
	testenv.Eventually(t, "m1, m2 and m3 sent again to the session's next connection", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(got, "m1") && slices.Contains(got, "m2") && slices.Contains(got, "m3")
	})
}
