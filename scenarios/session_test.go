package scenarios

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

const tenant = "acme"

// eachBroker runs f against the embedded broker and against Mosquitto.
func eachBroker(t *testing.T, f func(t *testing.T, b testenv.Broker)) {
	for _, start := range brokertest.Brokers(t) {
		b := start(t)
		t.Run(b.Name(), func(t *testing.T) { f(t, b) })
	}
}

func birthOf(m mqttclient.Received) *fleetv1.Birth { return m.Message.(*fleetv1.Birth) }
func deathOf(m mqttclient.Received) *fleetv1.Death { return m.Message.(*fleetv1.Death) }

func rebirth(id string) *fleetv1.Command {
	return &fleetv1.Command{Id: id, IssuedAt: timestamppb.Now(), Body: &fleetv1.Command_Rebirth{Rebirth: &fleetv1.Rebirth{}}}
}

func send(tb testing.TB, c *mqttclienttest.Recorder, gateway string, cmd *fleetv1.Command) *fleetv1.Reply {
	tb.Helper()
	return sendWithin(tb, c, gateway, cmd, testenv.Timeout)
}

// sendWithin sends a command to one gateway and waits for its final reply.
func sendWithin(tb testing.TB, c *mqttclienttest.Recorder, gateway string, cmd *fleetv1.Command, d time.Duration) *fleetv1.Reply {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	req, err := c.Send(ctx, tenant, gateway, cmd)
	if err != nil {
		tb.Fatal(err)
	}
	r, err := req.Final(ctx)
	if err != nil {
		tb.Fatalf("command %s: %v", cmd.GetId(), err)
	}
	return r
}

func TestBirthAndDeath(t *testing.T) {
	eachBroker(t, func(t *testing.T, b testenv.Broker) {
		gw := "gw-life-" + b.Name()
		rec := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		agent := testenv.StartAgent(t, b.URL(), tenant, gw, "--label", "site=berlin", "--group", "g1", "--metrics-interval", "1s")
		first := birthOf(rec.Await(t, "birth", 1, mqttclienttest.Kind(topic.Birth, gw)))
		hb := rec.Await(t, "metrics heartbeat", 1, mqttclienttest.Kind(topic.Metrics, gw))
		if m := hb.Message.(*fleetv1.Metrics); m.GetSession() != first.GetSession() || m.GetMemoryTotalBytes() == 0 || m.GetDiskFreeBytes() == 0 {
			t.Errorf("heartbeat = %v, want session %d with memory and disk figures", m, first.GetSession())
		}
		if first.GetSession() < 1 || first.GetTenant() != tenant || first.GetLabels()["site"] != "berlin" ||
			first.GetProtocolVersion() != 1 || first.GetHost().GetCpuCount() == 0 {
			t.Errorf("birth = %v", first)
		}

		// The birth is retained: a console that connects later gets it.
		late := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		got := late.Await(t, "retained birth", 1, mqttclienttest.Kind(topic.Birth, gw))
		if !got.Retained || birthOf(got).GetSession() != first.GetSession() {
			t.Errorf("late console got birth retained=%v session %d, want retained session %d", got.Retained, birthOf(got).GetSession(), first.GetSession())
		}

		// SIGKILL: the broker publishes the Will, the death of the same session.
		agent.Kill()
		d := deathOf(rec.Await(t, "death (Will)", 1, mqttclienttest.Kind(topic.Death, gw)))
		if d.GetReason() != fleetv1.Death_CONNECTION_LOST || d.GetSession() != first.GetSession() {
			t.Errorf("death after SIGKILL = %v, want CONNECTION_LOST session %d", d, first.GetSession())
		}

		// Restarted: a higher session. SIGTERM: a SHUTDOWN death of it, exit 0.
		agent.Start(t)
		second := birthOf(rec.Await(t, "birth after restart", 2, mqttclienttest.Kind(topic.Birth, gw)))
		if second.GetSession() <= first.GetSession() {
			t.Errorf("session after restart = %d, want > %d", second.GetSession(), first.GetSession())
		}
		if code := agent.Term(t); code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0", code)
		}
		d = deathOf(rec.Await(t, "death on SIGTERM", 2, mqttclienttest.Kind(topic.Death, gw)))
		if d.GetReason() != fleetv1.Death_SHUTDOWN || d.GetSession() != second.GetSession() {
			t.Errorf("death after SIGTERM = %v, want SHUTDOWN session %d", d, second.GetSession())
		}
		// A clean disconnect must not also fire the Will.
		if deaths := rec.All(mqttclienttest.Kind(topic.Death, gw)); len(deaths) != 2 {
			t.Errorf("got %d deaths, want 2 (the Will must not follow a clean shutdown)", len(deaths))
		}
	})
}

func TestCommandReplies(t *testing.T) {
	eachBroker(t, func(t *testing.T, b testenv.Broker) {
		gw := "gw-cmd-" + b.Name()
		rec := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		testenv.StartAgent(t, b.URL(), tenant, gw, "--group", "g1")
		rec.Await(t, "birth", 1, mqttclienttest.Kind(topic.Birth, gw))

		for _, enc := range []codec.Encoding{codec.Protobuf, codec.JSON} {
			t.Run(enc.String(), func(t *testing.T) {
				c := mqttclienttest.NewRecorder(t, b.URL(), enc)
				id := "rebirth-" + enc.String()
				r := send(t, c, gw, rebirth(id))
				if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetCommandId() != id || r.GetGatewayId() != gw {
					t.Errorf("reply = %v, want SUCCEEDED for %s from %s", r, id, gw)
				}
				// The reply came on the response topic with the correlation data
				// (Send matches on it) and in the command's encoding.
				m := c.Await(t, "reply on console topic", 1, func(m mqttclient.Received) bool {
					return m.Topic.Kind == topic.Reply && m.Topic.Console == c.ID()
				})
				if m.ContentType != enc.ContentType() || len(m.CorrelationData) == 0 {
					t.Errorf("reply content type %q correlation %q, want %q and the request's", m.ContentType, m.CorrelationData, enc.ContentType())
				}
			})
		}

		t.Run("no response topic, group topic", func(t *testing.T) {
			cmd := rebirth("group-1")
			payload, _ := codec.Marshal(codec.JSON, cmd)
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			if _, err := rec.SendRaw(ctx, topic.Default().GroupCommand(tenant, "g1", topic.Rebirth), payload, codec.ContentTypeJSON, ""); err != nil {
				t.Fatal(err)
			}
			m := rec.Await(t, "reply on the gateway's reply topic", 1, func(m mqttclient.Received) bool {
				return m.Name == topic.Default().Reply(tenant, gw)
			})
			if r := m.Message.(*fleetv1.Reply); r.GetCommandId() != "group-1" || r.GetResult() != fleetv1.Reply_SUCCEEDED {
				t.Errorf("reply = %v", r)
			}
		})
	})
}

// barrier sends one more rebirth and waits for its reply: commands run in
// order, so everything sent before has been executed when it returns.
func barrier(t *testing.T, c *mqttclienttest.Recorder, gw string) {
	t.Helper()
	if r := send(t, c, gw, rebirth(fmt.Sprintf("barrier-%d", time.Now().UnixNano()))); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		t.Fatalf("barrier reply = %v", r)
	}
}

func TestDuplicateExpiredMalformed(t *testing.T) {
	eachBroker(t, func(t *testing.T, b testenv.Broker) {
		gw := "gw-checks-" + b.Name()
		rec := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		testenv.StartAgent(t, b.URL(), tenant, gw, "--max-payload", "4096")
		rec.Await(t, "birth", 1, mqttclienttest.Kind(topic.Birth, gw))

		t.Run("duplicate id executed once", func(t *testing.T) {
			before := len(rec.All(mqttclienttest.Kind(topic.Birth, gw)))
			first := send(t, rec, gw, rebirth("dup-1"))
			again := send(t, rec, gw, rebirth("dup-1"))
			barrier(t, rec, gw)
			if first.GetResult() != fleetv1.Reply_SUCCEEDED || !again.GetTimestamp().AsTime().Equal(first.GetTimestamp().AsTime()) {
				t.Errorf("duplicate reply = %v, want the recorded %v", again, first)
			}
			// dup-1 once and the barrier once: two births, not three.
			if n := len(rec.All(mqttclienttest.Kind(topic.Birth, gw))) - before; n != 2 {
				t.Errorf("births after duplicate = %d, want 2", n)
			}
		})

		t.Run("expired", func(t *testing.T) {
			cmd := rebirth("expired-1")
			cmd.ExpiresAt = timestamppb.New(time.Now().Add(-time.Minute))
			r := send(t, rec, gw, cmd)
			if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != fleetv1.Reply_EXPIRED || r.GetField() != "expiresAt" {
				t.Errorf("reply = %v, want REJECTED EXPIRED on expiresAt", r)
			}
		})

		s := topic.Default()
		tests := []struct {
			name        string
			verb        topic.Verb
			payload     string
			contentType string
			wantID      string
			wantCode    fleetv1.Reply_Code
			wantInMsg   string
		}{
			{"garbage protobuf", topic.Rebirth, "\xff\xff\xff", codec.ContentTypeProtobuf, "", fleetv1.Reply_INVALID_ARGUMENT, "cannot decode"},
			{"unknown JSON field", topic.Rebirth, `{"id":"m-1","rebirth":{},"colour":"red"}`, codec.ContentTypeJSON, "m-1", fleetv1.Reply_INVALID_ARGUMENT, "colour"},
			{"verb mismatch", topic.Deploy, `{"id":"m-2","rebirth":{}}`, codec.ContentTypeJSON, "m-2", fleetv1.Reply_INVALID_ARGUMENT, "put the body under \"deploy\""},
			{"no body", topic.Rebirth, `{"id":"m-3"}`, codec.ContentTypeJSON, "m-3", fleetv1.Reply_INVALID_ARGUMENT, "no body"},
			{"id too long", topic.Rebirth, `{"id":"` + strings.Repeat("x", 65) + `","rebirth":{}}`, codec.ContentTypeJSON, "", fleetv1.Reply_INVALID_ARGUMENT, "1-64"},
			{"too large", topic.Rebirth, `{"id":"m-4","rebirth":{},"pad":"` + strings.Repeat("x", 5000) + `"}`, codec.ContentTypeJSON, "m-4", fleetv1.Reply_PAYLOAD_TOO_LARGE, "4096"},
			{"check-registry of an invalid reference", topic.CheckRegistry, `{"id":"m-5","checkRegistry":{"image":"Team/Web:1"}}`, codec.ContentTypeJSON, "m-5", fleetv1.Reply_INVALID_ARGUMENT, "checkRegistry.image"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
				defer cancel()
				req, err := rec.SendRaw(ctx, s.Command(tenant, gw, tt.verb), []byte(tt.payload), tt.contentType, s.ConsoleReply(tenant, gw, rec.ID()))
				if err != nil {
					t.Fatal(err)
				}
				r, err := req.Final(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if r.GetResult() != fleetv1.Reply_REJECTED || r.GetCode() != tt.wantCode || r.GetCommandId() != tt.wantID && tt.wantID != "" ||
					!strings.Contains(r.GetMessage(), tt.wantInMsg) {
					t.Errorf("reply = %v, want REJECTED %v for id %q mentioning %q", r, tt.wantCode, tt.wantID, tt.wantInMsg)
				}
			})
		}

		t.Run("undecodable without id or response topic is an event", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
			defer cancel()
			if _, err := rec.SendRaw(ctx, s.Command(tenant, gw, topic.Rebirth), []byte("not json"), codec.ContentTypeJSON, ""); err != nil {
				t.Fatal(err)
			}
			e := rec.Await(t, "rejection event", 1, mqttclienttest.Kind(topic.Events, gw)).Message.(*fleetv1.Event)
			if e.GetKind() != "command.rejected" || e.GetCode() != fleetv1.Reply_INVALID_ARGUMENT {
				t.Errorf("event = %v", e)
			}
		})

		// After all of that the agent still serves.
		barrier(t, rec, gw)
	})
}

func TestQueuedCommandsAcrossBrokerRestart(t *testing.T) {
	eachBroker(t, func(t *testing.T, b testenv.Broker) {
		gw := "gw-queue-" + b.Name()
		rec := mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		agent := testenv.StartAgent(t, b.URL(), tenant, gw)
		s1 := birthOf(rec.Await(t, "birth", 1, mqttclienttest.Kind(topic.Birth, gw))).GetSession()

		// The broker restarts under a running agent: it reconnects by itself.
		b.Restart(t)
		rec = mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		sBefore := birthOf(rec.Await(t, "birth after broker restart", 1, func(m mqttclient.Received) bool {
			return mqttclienttest.Kind(topic.Birth, gw)(m) && birthOf(m).GetSession() > s1
		})).GetSession()

		// Commands sent while the agent is offline wait in its session, and
		// survive a broker restart.
		if code := agent.Term(t); code != 0 {
			t.Fatalf("agent exit code %d", code)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
		defer cancel()
		for _, id := range []string{"q-1", "q-2", "q-1"} {
			if _, err := rec.Send(ctx, tenant, gw, rebirth(id)); err != nil {
				t.Fatal(err)
			}
		}
		b.Restart(t)
		rec = mqttclienttest.NewRecorder(t, b.URL(), codec.Protobuf)
		agent.Start(t)

		reply := func(id string, result fleetv1.Reply_Result) func(mqttclient.Received) bool {
			return func(m mqttclient.Received) bool {
				r, ok := m.Message.(*fleetv1.Reply)
				return ok && m.Topic.Gateway == gw && r.GetCommandId() == id && (result == 0 || r.GetResult() == result)
			}
		}
		rec.Await(t, "final reply to q-1", 1, reply("q-1", fleetv1.Reply_SUCCEEDED))
		rec.Await(t, "reply to q-1 and to its duplicate", 2, reply("q-1", 0))
		rec.Await(t, "final reply to q-2", 1, reply("q-2", fleetv1.Reply_SUCCEEDED))
		barrier(t, rec, gw)

		var live []mqttclient.Received
		for _, m := range rec.All(mqttclienttest.Kind(topic.Birth, gw)) {
			if !m.Retained {
				live = append(live, m)
			}
		}
		if s2 := birthOf(live[0]).GetSession(); s2 <= sBefore {
			t.Errorf("session after the agent came back = %d, want > %d", s2, sBefore)
		}
		// Connect birth, q-1 once, q-2 once, barrier once.
		if len(live) != 4 {
			t.Errorf("births after reconnect = %d, want 4 (q-1 must run once)", len(live))
		}
	})
}
