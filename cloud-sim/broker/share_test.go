package broker

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestSharedGroupByPublisher: three members of a shared subscription;
// 300 publishers publish twice each. Every publication reaches exactly
// one member, both of a publisher's reach the same one, and each member
// gets at least a quarter of the publishers (mochi alone gave one member of
// two 71 % of them).
func TestSharedGroupByPublisher(t *testing.T) {
	const publishers = 300
	br, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { br.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	var mu sync.Mutex
	got := map[string][]string{} // by member: the publishers it got, once per publication
	for i := range 3 {
		member := fmt.Sprintf("member-%d", i)
		conn, err := net.Dial("tcp", br.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
			func(pr paho.PublishReceived) (bool, error) {
				mu.Lock()
				got[member] = append(got[member], string(pr.Packet.Payload))
				mu.Unlock()
				return true, nil
			}}})
		if _, err := c.Connect(ctx, &paho.Connect{ClientID: member, KeepAlive: 30, CleanStart: true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Disconnect(&paho.Disconnect{}) })
		if _, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/fleet/#", QoS: 1}}}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range publishers {
		id := fmt.Sprintf("gw-%d", i)
		p := dialClient(t, br.Addr(), id)
		for range 2 {
			if _, err := p.Publish(ctx, &paho.Publish{Topic: "fleet/" + id, QoS: 1, Payload: []byte(id)}); err != nil {
				t.Fatal(err)
			}
		}
		p.Disconnect(&paho.Disconnect{})
	}
	testenv.Eventually(t, "every publication at one member", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ps := range got {
			n += len(ps)
		}
		return n == 2*publishers
	})
	mu.Lock()
	defer mu.Unlock()
	at := map[string]string{}
	for member, ps := range got {
		seen := map[string]bool{}
		for _, p := range ps {
			if other, ok := at[p]; ok && other != member {
				t.Errorf("%s's publications went to %s and %s", p, other, member)
			}
			at[p], seen[p] = member, true
		}
		if len(seen) < publishers/4 {
			t.Errorf("%s got %d of %d publishers", member, len(seen), publishers)
		}
		t.Logf("%s: %d publishers", member, len(seen))
	}
}
