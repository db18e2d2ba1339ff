package broker

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// TestRetainedDoNotExpireAfterADay: a retained message published without a
// message expiry (a gateway's birth, a deployment's status) is kept until
// it is replaced, not dropped by the broker a day later (mochi's default
// maximum expiry is 24 h; its retained messages then vanished from the
// running broker and came back after a restart). A message that asks for
// an expiry keeps it.
func TestRetainedDoNotExpireAfterADay(t *testing.T) {
	b, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := dial(t, ctx, b, "gw")
	ten := uint32(10)
	for _, p := range []*paho.Publish{
		{Topic: "fleet/v1/t/gw/birth", QoS: 1, Retain: true, Payload: []byte("birth")},
		{Topic: "fleet/v1/t/gw/events", QoS: 1, Retain: true, Payload: []byte("short"), Properties: &paho.PublishProperties{MessageExpiry: &ten}},
	} {
		if _, err := c.Publish(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	week := time.Now().Add(7 * 24 * time.Hour).Unix()
	for _, tt := range []struct {
		topic    string
		lastsTil func(expiry int64) bool
		want     string
	}{
		{"fleet/v1/t/gw/birth", func(e int64) bool { return e == 0 || e > week }, "no expiry, or years away"},
		{"fleet/v1/t/gw/events", func(e int64) bool { return e > 0 && e <= time.Now().Unix()+10 }, "its own 10 s"},
	} {
		pk, ok := b.srv.Topics.Retained.Get(tt.topic)
		if !ok {
			t.Fatalf("%s not retained", tt.topic)
		}
		if !tt.lastsTil(pk.Expiry) {
			t.Errorf("%s expires at %v, want %s", tt.topic, time.Unix(pk.Expiry, 0), tt.want)
		}
	}
}
