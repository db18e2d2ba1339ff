package broker

import (
	"context"
	"net"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestExpiredSessionUnsubscribed: a session that expires while offline
// (a gateway gone for longer than its Session Expiry Interval) leaves
// nothing in the broker's subscriptions. mochi's expiry removed the client
// but kept its subscriptions in its topic index: every gateway that came
// and went left its command filters behind, for good.
func TestExpiredSessionUnsubscribed(t *testing.T) {
	br, err := Start(Config{Auth: replicaAuth{}, Scheme: topic.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	expiry := uint32(1)
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: "gw-1", Username: "gw-1", UsernameFlag: true, KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
		t.Fatal(err)
	}
	s := topic.Default()
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.CommandFilter("acme", "gw-1"), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	name := s.Command("acme", "gw-1", topic.Deploy)
	if _, ok := br.srv.Topics.Subscribers(name).Subscriptions["gw-1"]; !ok {
		t.Fatalf("gw-1 is not subscribed to %s", name)
	}
	if err := c.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "the session expired", func() bool {
		_, ok := br.srv.Clients.Get("gw-1")
		return !ok
	})
	if _, ok := br.srv.Topics.Subscribers(name).Subscriptions["gw-1"]; ok {
		t.Errorf("the expired session of gw-1 is still subscribed to %s", name)
	}
}
