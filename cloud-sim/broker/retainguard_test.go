package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

func dial(t *testing.T, ctx context.Context, b *Broker, id string) *paho.Client {
	t.Helper()
	conn, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	if _, err := c.Connect(ctx, &paho.Connect{ClientID: id, CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatalf("connect %s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	return c
}

// TestRetainedWhileSubscribing: retained messages published, and retained
// Wills sent, while another client subscribes with wildcards (and gets the
// retained messages) are no data race. Under -race this failed before retainGuard: mochi v2.7.9
// writes a topic's retainPath under its lock and reads it, for a wildcard
// subscription, without (mochi-mqtt/server#200), as a gateway's retained
// birth and the controller's subscription do after a broker restart
// (scenarios TestQueuedCommandsAcrossBrokerRestart/embedded).
func TestRetainedWhileSubscribing(t *testing.T) {
	for _, name := range []string{"in memory", "with store"} {
		t.Run(name, func(t *testing.T) {
			cfg := Config{}
			if name == "with store" {
				cfg.StorePath = t.TempDir() + "/broker.db"
			}
			b, err := Start(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()

			const rounds = 200
			var wg sync.WaitGroup
			for p := range 2 {
				pub := dial(t, ctx, b, fmt.Sprintf("pub-%d", p))
				wg.Go(func() {
					for i := range rounds {
						payload := []byte(fmt.Sprint(i))
						if i%5 == 4 {
							payload = nil // clears the retained message
						}
						if _, err := pub.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("fleet/t/gw-%d/status", i%4), Retain: true, Payload: payload}); err != nil {
							t.Errorf("publish: %v", err)
							return
						}
					}
				})
			}
			wg.Go(func() { // gateways whose connection drops: their retained Will is published
				for i := range rounds / 10 {
					conn, err := net.Dial("tcp", b.Addr())
					if err != nil {
						t.Errorf("dial: %v", err)
						return
					}
					c := paho.NewClient(paho.ClientConfig{Conn: conn})
					will := &paho.WillMessage{Topic: fmt.Sprintf("fleet/t/gw-%d/status", i%4), Payload: []byte("offline"), Retain: true}
					if _, err := c.Connect(ctx, &paho.Connect{ClientID: "gone", CleanStart: true, KeepAlive: 30, WillMessage: will}); err != nil {
						t.Errorf("connect with will: %v", err)
						return
					}
					conn.Close()
				}
			})
			sub := dial(t, ctx, b, "sub")
			wg.Go(func() {
				for range rounds {
					for _, f := range []string{"fleet/+/+/status", "fleet/#"} {
						if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: f}}}); err != nil {
							t.Errorf("subscribe %s: %v", f, err)
							return
						}
						if _, err := sub.Unsubscribe(ctx, &paho.Unsubscribe{Topics: []string{f}}); err != nil {
							t.Errorf("unsubscribe %s: %v", f, err)
							return
						}
					}
				}
			})
			wg.Wait()
		})
	}
}
