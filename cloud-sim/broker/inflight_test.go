package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestInflightNextImmediateWithWriters: mochi calls NextImmediate on a
// client's in-flight messages for every packet that client sends, once
// the client has a send quota (its CONNECT carried a Receive Maximum),
// while publishes to it Set new ones. In mochi v2.7.9 NextImmediate took
// the read lock twice (itself, then GetAll): a Set waiting for the write
// lock between the two blocked both for good, and with them the
// publisher's connection (third_party/mochi-mqtt-server/PATCHES.md).
// The two run against each other until the deadline; a deadlock shows
// as a round that does not end.
func TestInflightNextImmediateWithWriters(t *testing.T) {
	in := mqtt.NewInflights()
	deadline := time.Now().Add(2 * time.Second)
	for round := 0; time.Now().Before(deadline); round++ {
		var wg sync.WaitGroup
		wg.Go(func() {
			for id := range uint16(200) {
				in.Set(packets.Packet{PacketID: id + 1, Expiry: -1})
				in.Delete(id + 1)
			}
		})
		wg.Go(func() {
			for range 200 {
				in.NextImmediate()
			}
		})
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: NextImmediate and Set deadlocked on the in-flight messages' lock", round)
		}
	}
}

// TestReceiveMaximumSubscriber: a client whose CONNECT carries a Receive
// Maximum (4) takes a stream of QoS 1 publications from two publishers at
// once; it gets every one, and every publisher's PUBLISH is acknowledged.
// With mochi's NextImmediate taking its read lock twice, a publisher and
// this subscriber's PUBACKs met on that lock and the publisher's
// connection stopped (TestInflightNextImmediateWithWriters).
func TestReceiveMaximumSubscriber(t *testing.T) {
	const each = 400
	br, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	var got atomic.Int64
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	sub := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(paho.PublishReceived) (bool, error) { got.Add(1); return true, nil }}})
	recvMax := uint16(4)
	if _, err := sub.Connect(ctx, &paho.Connect{ClientID: "sub", KeepAlive: 30, CleanStart: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Disconnect(&paho.Disconnect{}) })
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "fleet/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for p := range 2 {
		pub := dialClient(t, br.Addr(), fmt.Sprintf("pub-%d", p))
		wg.Go(func() {
			for i := range each {
				if _, err := pub.Publish(ctx, &paho.Publish{Topic: fmt.Sprintf("fleet/%d", p), QoS: 1, Payload: []byte{byte(i)}}); err != nil {
					errs <- fmt.Errorf("publisher %d, publication %d: %w", p, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	testenv.Eventually(t, "every publication at the subscriber", func() bool { return got.Load() == 2*each })
}
