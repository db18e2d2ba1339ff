package broker

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// controllerAuth lets user "controller" in as the controller and any
// other as gateway acme/{username}.
type controllerAuth struct{}

func (controllerAuth) Authenticate(_, username string, _ []byte) (Identity, error) {
	if username == "" {
		return Identity{}, errors.New("no username")
	}
	if username == "controller" {
		return Identity{Controller: true}, nil
	}
	return Identity{Tenant: "acme", Gateway: username}, nil
}

func (controllerAuth) Identify(string, string) (Identity, bool) { return Identity{}, false }

// TestControllerQueueHoldsABurst: the controller reads every gateway's
// statuses at QoS 0 (the broker retains the latest); a burst larger than
// a gateway's write queue, while the controller reads slowly, reaches it
// whole: its sessions get a queue of ControllerMaxQueuedBytes. With the
// gateways' 16 MiB the broker dropped part of the burst.
func TestControllerQueueHoldsABurst(t *testing.T) {
	const n, size = 12000, 2 << 10 // 24 MiB
	br, err := Start(Config{Auth: controllerAuth{}, Scheme: topic.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	var (
		mu  sync.Mutex
		got int
	)
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	held := &heldConn{Conn: conn}
	// paho's own 10 s per packet: make test under -race, with other builds
	// on the two cores, once took longer for the SUBACK.
	sub := paho.NewClient(paho.ClientConfig{Conn: held, PacketTimeout: testenv.Timeout, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			mu.Lock()
			got++
			mu.Unlock()
			return true, nil
		},
	}})
	// Each exchange has its own deadline, and says how long it took: the
	// connect and the subscribe together once took over 20 s under make
	// test's load.
	within := func(what string, do func(ctx context.Context) error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
		defer cancel()
		start := time.Now()
		if err := do(ctx); err != nil {
			t.Fatalf("%s, after %v: %v", what, time.Since(start).Round(time.Millisecond), err)
		}
		if d := time.Since(start); d > time.Second {
			t.Logf("%s took %v", what, d.Round(time.Millisecond))
		}
	}
	within("controller's connect", func(ctx context.Context) error {
		_, err := sub.Connect(ctx, &paho.Connect{ClientID: "controller-ingest", Username: "controller", UsernameFlag: true, KeepAlive: 30, CleanStart: true})
		return err
	})
	t.Cleanup(func() { sub.Disconnect(&paho.Disconnect{}) })
	within("controller's subscribe", func(ctx context.Context) error {
		_, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/fleet/v1/+/+/status/+", QoS: 0}}})
		return err
	})
	held.hold()
	pconn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	pub := paho.NewClient(paho.ClientConfig{Conn: pconn, PacketTimeout: testenv.Timeout})
	within("gateway's connect", func(ctx context.Context) error {
		_, err := pub.Connect(ctx, &paho.Connect{ClientID: "gw-1", Username: "gw-1", UsernameFlag: true, KeepAlive: 30, CleanStart: true})
		return err
	})
	t.Cleanup(func() { pub.Disconnect(&paho.Disconnect{}) })
	payload := make([]byte, size)
	// Each publish has its own deadline: the burst's 12,000 round trips
	// together took over 20 s under make test's load.
	for i := range n {
		binary.BigEndian.PutUint32(payload, uint32(i))
		if err := publishWithin(pub, testenv.Timeout, &paho.Publish{Topic: topic.Default().Status("acme", "gw-1", "web"), QoS: 1, Payload: bytes.Clone(payload)}); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	dropped := br.Dropped()
	held.let()
	testenv.AwaitCount(t, "statuses at the controller", n, func() int {
		mu.Lock()
		defer mu.Unlock()
		return got
	})
	if dropped != 0 {
		t.Errorf("broker dropped %d messages to the controller, want 0", dropped)
	}
}

func publishWithin(c *paho.Client, d time.Duration, p *paho.Publish) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := c.Publish(ctx, p)
	return err
}
