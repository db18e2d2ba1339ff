package broker

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// replicaAuth lets username "controller" in as a controller whatever its
// client id (each controller replica has its own), and any other username
// as gateway acme/{username} with that client id. Like the cloud's
// identities, it tells a restored session's identity from its client id
// and the username it began with.
type replicaAuth struct{}

func (replicaAuth) Authenticate(clientID, username string, _ []byte) (Identity, error) {
	switch {
	case username == "controller":
		return Identity{Controller: true}, nil
	case username == "" || clientID != username:
		return Identity{}, ErrDenied
	}
	return Identity{Tenant: "acme", Gateway: username}, nil
}

func (replicaAuth) Identify(clientID, username string) (Identity, bool) {
	if username == "controller" {
		return Identity{Controller: true}, true
	}
	return Identity{Tenant: "acme", Gateway: username}, username != "" && clientID == username
}

// TestRestoredReplicaSessionGetsItsMessages: a controller replica's
// persistent session, offline while the broker restarts (the embedded
// broker runs in replica a: its restart), gets what is published for it
// meanwhile once it is back. The broker checks a restored session's
// reads against the Authenticator's Identify, which knew the session only
// by client id: the replica's own (--controller-id) was no identity it
// knew, and every message for the session was dropped as not authorized
// until the replica reconnected.
func TestRestoredReplicaSessionGetsItsMessages(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	start := func() *Broker {
		br, err := Start(Config{StorePath: path, Auth: replicaAuth{}, Scheme: topic.Default()})
		if err != nil {
			t.Fatal(err)
		}
		return br
	}
	name := topic.Default().Events("acme", "gw-1")
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	got := make(chan *paho.Publish, 1)
	replica := func(addr string, clean bool) *paho.Client {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				select {
				case got <- pr.Packet:
				default:
				}
				return true, nil
			}}})
		expiry := uint32(3600)
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "controller-b", Username: "controller", UsernameFlag: true, KeepAlive: 30,
			CleanStart: clean, Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
			t.Fatal(err)
		}
		return c
	}

	br := start()
	c := replica(br.Addr(), true)
	if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: name, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(&paho.Disconnect{}); err != nil {
		t.Fatal(err)
	}
	br.Close()

	br = start()
	t.Cleanup(func() { br.Close() })
	gw := dialAs(t, br.Addr(), "gw-1", "gw-1")
	if _, err := gw.Publish(ctx, &paho.Publish{Topic: name, QoS: 1, Payload: []byte("while away")}); err != nil {
		t.Fatal(err)
	}
	c = replica(br.Addr(), false)
	t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
	select {
	case p := <-got:
		if string(p.Payload) != "while away" {
			t.Errorf("the replica got %q, want what the gateway published while it was away", p.Payload)
		}
	case <-time.After(testenv.Timeout):
		t.Fatal("the replica's restored session did not get what was published for it while it was away")
	}
}
