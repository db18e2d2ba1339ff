package gateway_test

import (
	"context"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestUnopenableJournalEntryAnsweredAfterConnect: a command left
// unfinished by a crash whose payload no longer opens (a damaged entry, or
// an at-rest key that changed) is answered FAILED/INTERNAL once the link
// is up; the agent must not publish before the link exists (it panicked).
func TestUnopenableJournalEntryAnsweredAfterConnect(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	// Sealed with some other at-rest key: it does not decrypt with this one.
	_, _, err = st.Begin(store.Command{ID: "lost-1", Verb: string(topic.Deploy), ReceivedAt: time.Now(),
		Payload: []byte("0123456789abcdef0123456789abcdef-not-ours"), ContentType: codec.Protobuf.ContentType()})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()

	b := brokertest.EmbeddedInMemory(t)
	rec := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
	u, err := url.Parse(b.URL())
	if err != nil {
		t.Fatal(err)
	}
	g, err := gateway.New(gateway.Config{Tenant: "t", ID: "g", Scheme: topic.Default(), Encoding: codec.Protobuf,
		StateDir: dir, BrokerURL: u, Engine: engine.NewFake("t/g"), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	})

	got := rec.Await(t, "reply to lost-1", 1, func(m mqttclient.Received) bool {
		r, ok := m.Message.(*fleetv1.Reply)
		return m.Topic.Kind == topic.Reply && ok && r.GetCommandId() == "lost-1"
	}).Message.(*fleetv1.Reply)
	if got.GetResult() != fleetv1.Reply_FAILED || got.GetCode() != fleetv1.Reply_INTERNAL {
		t.Errorf("reply = %v/%v (%s), want FAILED/INTERNAL", got.GetResult(), got.GetCode(), got.GetMessage())
	}
	rec.Await(t, "birth", 1, mqttclienttest.Kind(topic.Birth, "g"))
}
