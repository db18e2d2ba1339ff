package gateway_test

import (
	"context"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/agent/mqttlink"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// console is an MQTT client that sends commands to gateway t/g and keeps
// the replies and log chunks it receives.
type console struct {
	link *mqttlink.Link

	mu      sync.Mutex
	replies []*fleetv1.Reply
	chunks  []*fleetv1.LogChunk
	topics  []string // of the chunks
	births  int
}

func newConsole(t *testing.T, brokerURL string) *console {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	c := &console{}
	hello := func() (mqttlink.Message, error) {
		return mqttlink.Message{Topic: "test/console", Payload: []byte("console"), QoS: 1}, nil
	}
	s := topic.Default()
	ready := make(chan struct{})
	var once sync.Once
	c.link, err = mqttlink.New(mqttlink.Config{BrokerURL: u, ClientID: "console", Will: hello, Birth: hello,
		Subscriptions: []string{s.Filter(topic.LogStream), s.Filter(topic.Reply), s.Filter(topic.Birth)}, OnMessage: c.receive,
		OnReady: func(context.Context) { once.Do(func() { close(ready) }) },
		Logger:  testenv.Logger(t).With("component", "console")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := c.link.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Subscribed before it returns: Connect only starts connecting, and a
	// gateway started next published a logs chunk before the console's
	// subscription (TestLogsCutByRestart failed so under make test's load).
	select {
	case <-ready:
	case <-time.After(testenv.Timeout):
		t.Fatal("the test console did not connect and subscribe")
	}
	return c
}

func (c *console) receive(in mqttlink.Inbound) {
	tp, err := topic.Default().Parse(in.Topic)
	if err != nil {
		return
	}
	enc := codec.FromContentType(in.ContentType)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch tp.Kind {
	case topic.Birth:
		c.births++
	case topic.LogStream:
		m := new(fleetv1.LogChunk)
		if codec.Unmarshal(enc, in.Payload, m) == nil {
			c.chunks, c.topics = append(c.chunks, m), append(c.topics, in.Topic)
		}
	case topic.Reply:
		m := new(fleetv1.Reply)
		if codec.Unmarshal(enc, in.Payload, m) == nil {
			c.replies = append(c.replies, m)
		}
	}
}

func (c *console) send(t *testing.T, cmd *fleetv1.Command) {
	t.Helper()
	b, err := codec.Marshal(codec.JSON, cmd)
	if err != nil {
		t.Fatal(err)
	}
	m := mqttlink.Message{Topic: topic.Default().Command("t", "g", topic.VerbOf(cmd)), Payload: b, QoS: 1, ContentType: codec.JSON.ContentType()}
	ctx, cancel := context.WithTimeout(t.Context(), testenv.Timeout)
	defer cancel()
	if err := c.link.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// reply awaits the final (not ACCEPTED) reply to id.
func (c *console) reply(t *testing.T, id string) *fleetv1.Reply {
	t.Helper()
	var got *fleetv1.Reply
	testenv.Eventually(t, "final reply to "+id, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.replies {
			if r.GetCommandId() == id && r.GetResult() != fleetv1.Reply_ACCEPTED {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// TestLogsOverMQTT: through the real wiring and the embedded broker, a
// logs command's chunks arrive on .../g/logs/{id} in order, the last one
// final, before the final reply; a follow ends on cancel-logs.
func TestLogsOverMQTT(t *testing.T) {
	b := brokertest.Embedded(t)
	u, err := url.Parse(b.URL())
	if err != nil {
		t.Fatal(err)
	}
	eng := engine.NewFakeLogs(engine.NewFake("t/g"))
	eng.Publish("registry.example/web:1", "v1")
	g, err := gateway.New(gateway.Config{Tenant: "t", ID: "g", Scheme: topic.Default(), Encoding: codec.JSON,
		StateDir: t.TempDir(), BrokerURL: u, Engine: eng, Logs: gateway.LogsConfig{ChunkSize: 16 << 10}, Logger: testenv.Logger(t)})
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
	c := newConsole(t, b.URL())
	testenv.Eventually(t, "the gateway's birth", func() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.births > 0 })

	c.send(t, &fleetv1.Command{Id: "d1", Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{
		Name: "web", Revision: 1, Image: "registry.example/web:1"}}}})
	if r := c.reply(t, "d1"); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("deploy = %v", r)
	}
	cs, _ := eng.List(t.Context())
	for i := range 300 {
		eng.Write(cs[0].ID, engine.LogEntry{Text: []byte("line " + string(rune('a'+i%26)) + string(make([]byte, 500)))})
	}

	c.send(t, &fleetv1.Command{Id: "logs-1", Body: &fleetv1.Command_Logs{Logs: &fleetv1.Logs{Deployment: "web", Tail: 300}}})
	if r := c.reply(t, "logs-1"); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("logs = %v", r)
	}
	c.mu.Lock()
	var lines int
	for i, ch := range c.chunks {
		if ch.GetSequence() != uint64(i) || ch.GetFinal() != (i == len(c.chunks)-1) || c.topics[i] != "fleet/v1/t/g/logs/logs-1" {
			t.Errorf("chunk %d: sequence %d final %v on %s", i, ch.GetSequence(), ch.GetFinal(), c.topics[i])
		}
		lines += len(ch.GetLines())
	}
	// 300 lines of 506 bytes: 150 KiB, over a 16 KiB chunk, and over
	// 16 KiB/s with a 64 KiB burst: some are dropped and counted.
	var dropped uint64
	for _, ch := range c.chunks {
		dropped += ch.GetDroppedLines()
	}
	n := len(c.chunks)
	c.mu.Unlock()
	if n < 2 || lines+int(dropped) != 300 || dropped == 0 {
		t.Errorf("%d chunks, %d lines, %d dropped; want several chunks, 300 lines sent or dropped, some dropped", n, lines, dropped)
	}

	c.send(t, &fleetv1.Command{Id: "logs-2", Body: &fleetv1.Command_Logs{Logs: &fleetv1.Logs{Deployment: "web", Follow: true, Tail: 1}}})
	c.send(t, &fleetv1.Command{Id: "c1", Body: &fleetv1.Command_CancelLogs{CancelLogs: &fleetv1.CancelLogs{RequestId: "logs-2"}}})
	if r := c.reply(t, "c1"); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("cancel-logs = %v", r)
	}
	if r := c.reply(t, "logs-2"); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Errorf("canceled logs = %v", r)
	}
	testenv.Eventually(t, "final chunk CANCELED", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, ch := range c.chunks {
			if ch.GetRequestId() == "logs-2" && ch.GetFinal() && ch.GetEnded() == fleetv1.LogChunk_CANCELED {
				return true
			}
		}
		return false
	})
	if birth := g.Birth(); !contains(birth.GetCapabilities(), "logs") || !contains(birth.GetCapabilities(), "cancel-logs") {
		t.Errorf("birth capabilities %v, want logs and cancel-logs", birth.GetCapabilities())
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestLogsCutByRestart: a logs command the journal holds unfinished when
// the agent starts (it died while the stream ran) is not streamed again:
// a lone final chunk ended ERROR, then FAILED.
func TestLogsCutByRestart(t *testing.T) {
	dir := t.TempDir()
	keys, err := credential.LoadKeys(filepath.Join(dir, "at-rest.key"), filepath.Join(dir, "seal.key"))
	if err != nil {
		t.Fatal(err)
	}
	payload, err := codec.Marshal(codec.Protobuf, &fleetv1.Command{Id: "cut-1", Body: &fleetv1.Command_Logs{Logs: &fleetv1.Logs{Deployment: "web", Follow: true}}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Path: filepath.Join(dir, "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Begin(store.Command{ID: "cut-1", Verb: string(topic.Logs), ReceivedAt: time.Now(),
		Payload: keys.Encrypt(payload), ContentType: codec.Protobuf.ContentType()}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	b := brokertest.Embedded(t)
	c := newConsole(t, b.URL())
	u, _ := url.Parse(b.URL())
	g, err := gateway.New(gateway.Config{Tenant: "t", ID: "g", Scheme: topic.Default(), Encoding: codec.JSON,
		StateDir: dir, BrokerURL: u, Engine: engine.NewFakeLogs(engine.NewFake("t/g")), Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	r := c.reply(t, "cut-1")
	if r.GetResult() != fleetv1.Reply_FAILED || r.GetCode() != fleetv1.Reply_INTERNAL {
		t.Errorf("reply %v/%v (%s), want FAILED/INTERNAL", r.GetResult(), r.GetCode(), r.GetMessage())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.chunks) != 1 || !c.chunks[0].GetFinal() || c.chunks[0].GetEnded() != fleetv1.LogChunk_ERROR || c.chunks[0].GetSequence() != 0 {
		t.Errorf("chunks %v, want one final chunk, sequence 0, ended ERROR", c.chunks)
	}
}
