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

func (oneGateway) Identify(string) (Identity, bool) { return Identity{}, false }

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
