package broker

import (
	"context"
	"net"
	"path/filepath"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// oneGateway is an Authenticator that knows gateway acme/gw-1 while ok.
type oneGateway struct{ pass string }

func (a oneGateway) Authenticate(clientID, username string, password []byte) (Identity, error) {
	if username != "acme/gw-1" || clientID != username || string(password) != a.pass {
		return Identity{}, ErrDenied
	}
	return Identity{Tenant: "acme", Gateway: "gw-1"}, nil
}

func (oneGateway) Identify(string, string) (Identity, bool) { return Identity{}, false }

// TestDisconnect: Disconnect closes a live connection at once and, with
// deleteSession, forgets the session (its subscriptions), in the store
// too; without, the session stays for the next login, after a restart too.
func TestDisconnect(t *testing.T) {
	for _, tt := range []struct {
		name          string
		deleteSession bool
	}{{"keep session", false}, {"delete session", true}} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Auth: oneGateway{pass: "pw"}, Scheme: topic.Default(), StorePath: filepath.Join(t.TempDir(), "broker.db")}
			b, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			conn, err := net.Dial("tcp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			gone := make(chan struct{})
			c := paho.NewClient(paho.ClientConfig{Conn: conn,
				OnServerDisconnect: func(*paho.Disconnect) { close(gone) }})
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			expiry := uint32(3600)
			if _, err := c.Connect(ctx, &paho.Connect{ClientID: "acme/gw-1", Username: "acme/gw-1", UsernameFlag: true, Password: []byte("pw"),
				PasswordFlag: true, KeepAlive: 30, Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}}); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "fleet/v1/acme/gw-1/cmd/+", QoS: 1}}}); err != nil {
				t.Fatal(err)
			}
			if !b.Disconnect("acme/gw-1", tt.deleteSession) {
				t.Error("Disconnect of a connected client reported it was not connected")
			}
			select {
			case <-gone:
			case <-ctx.Done():
				t.Fatal("the client was not disconnected")
			}
			_, kept := b.srv.Clients.Get("acme/gw-1")
			if kept == tt.deleteSession {
				t.Errorf("session kept = %v, want %v", kept, !tt.deleteSession)
			}
			if b.Disconnect("acme/gw-1", false) {
				t.Error("Disconnect of a disconnected client reported it was connected")
			}
			b.Close()
			again, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if _, kept := again.srv.Clients.Get("acme/gw-1"); kept == tt.deleteSession {
				t.Errorf("after a restart, session kept = %v, want %v", kept, !tt.deleteSession)
			}
		})
	}
}

// gatewayAndCloud is an Authenticator that knows gateway acme/gw-1 and
// the controller, "cloud".
type gatewayAndCloud struct{ oneGateway }

func (a gatewayAndCloud) Authenticate(clientID, username string, password []byte) (Identity, error) {
	if username == "cloud" && string(password) == "cloud" {
		return Identity{Controller: true}, nil
	}
	return a.oneGateway.Authenticate(clientID, username, password)
}

// TestDisconnectSendsWill: the Will of a client Disconnect closes is
// published even while the client is busy sending. (Before: mochi's read
// loop, finding the client stopped between two packets, ended without an
// error and dropped the Will, so the controller kept a revoked gateway
// online: scenarios TestSecurityTargetReprovisionDropsSession flaked.)
func TestDisconnectSendsWill(t *testing.T) {
	scheme := topic.Default()
	b, err := Start(Config{Auth: gatewayAndCloud{oneGateway{pass: "pw"}}, Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	deaths := make(chan struct{}, 100)
	wconn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	watcher := paho.NewClient(paho.ClientConfig{Conn: wconn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(paho.PublishReceived) (bool, error) { deaths <- struct{}{}; return true, nil }}})
	if _, err := watcher.Connect(ctx, &paho.Connect{ClientID: "cloud", Username: "cloud", UsernameFlag: true, Password: []byte("cloud"), PasswordFlag: true, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	defer watcher.Disconnect(&paho.Disconnect{})
	death := scheme.Death("acme", "gw-1")
	if _, err := watcher.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: death, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		conn, err := net.Dial("tcp", b.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: "acme/gw-1", Username: "acme/gw-1", UsernameFlag: true, Password: []byte("pw"),
			PasswordFlag: true, CleanStart: true, KeepAlive: 30, WillMessage: &paho.WillMessage{Topic: death, QoS: 1, Payload: []byte("dead")}}); err != nil {
			t.Fatal(err)
		}
		busy := make(chan struct{})
		go func() {
			defer close(busy)
			for j := 0; ; j++ {
				if _, err := c.Publish(ctx, &paho.Publish{Topic: scheme.Events("acme", "gw-1"), Payload: make([]byte, 512)}); err != nil {
					return
				}
				if j == 200 {
					busy <- struct{}{}
				}
			}
		}()
		<-busy
		if !b.Disconnect("acme/gw-1", false) {
			t.Fatalf("round %d: Disconnect of a connected client reported it was not connected", i)
		}
		select {
		case <-deaths:
		case <-ctx.Done():
			t.Fatalf("round %d: no Will after Disconnect", i)
		}
		<-busy
		conn.Close()
	}
}
