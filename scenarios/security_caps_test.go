package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// capsCloud starts serve with no simulated gateway and the changes edit
// makes to its configuration, and provisions gateway acme/gw-1.
func capsCloud(t *testing.T, edit func(*serve.Config)) (*cloud, string) {
	t.Helper()
	c := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute}
	if edit != nil {
		edit(&c.cfg)
	}
	c.start(t)
	t.Cleanup(func() { c.Close() })
	pass, err := c.Controller.Provision(context.Background(), "acme", "gw-1", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	return c, pass
}

func capsBirth(deployments int) *fleetv1.Birth {
	b := &fleetv1.Birth{GatewayId: "gw-1", Tenant: "acme", Session: 1}
	for i := range deployments {
		b.Deployments = append(b.Deployments, &fleetv1.DeploymentSummary{Name: fmt.Sprintf("app-%d", i), Revision: 1,
			Phase: fleetv1.DeploymentStatus_RUNNING, Image: "registry.example/app:1"})
	}
	return b
}

// publishAs publishes msg, retained at QoS 1, as gateway acme/gw-1.
func publishAs(t *testing.T, m *mqttClient, name string, msg proto.Message) error {
	t.Helper()
	payload, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	_, err = m.c.Publish(ctx, &paho.Publish{Topic: name, QoS: 1, Retain: true, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/x-protobuf"}})
	return err
}

func recordSize(t *testing.T, g *api.Gateway) int {
	raw, err := json.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	return len(raw)
}

// TestCapsOversizedBirthRefusedByBroker: a gateway's 2 MiB retained birth
// (80,000 deployments) is refused by the broker from its fixed header: the
// broker closes the connection rather than acknowledging it, and the
// controller's record of the gateway holds only what came after.
func TestCapsOversizedBirthRefusedByBroker(t *testing.T) {
	c, pass := capsCloud(t, nil)
	huge, err := proto.Marshal(capsBirth(80_000))
	if err != nil {
		t.Fatal(err)
	}
	if len(huge) < 2<<20 {
		t.Fatalf("birth of %d bytes, want over 2 MiB", len(huge))
	}
	refusedWhole(t, c.mqtt, "acme/gw-1", pass, topic.Default().Birth("acme", "gw-1"), huge)
	// The gateway reconnects and announces itself within the limits: its
	// record holds that birth, small.
	m, _, err := dial(t, c.mqtt, "acme/gw-1", "acme/gw-1", pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := publishAs(t, m, topic.Default().Birth("acme", "gw-1"), capsBirth(3)); err != nil {
		t.Fatal(err)
	}
	var g *api.Gateway
	testenv.Eventually(t, "the gateway online with its 3 deployments", func() bool {
		g = c.gateway(t, "acme", "gw-1")
		return g != nil && g.Online && len(g.Deployments) == 3
	})
	if n := recordSize(t, g); n > 16<<10 {
		t.Errorf("gateway record of %d bytes, want a few KiB", n)
	}
}

// refusedWhole connects to the broker at addr as user and publishes
// payload, retained at QoS 1, on name from a raw client (paho would refuse
// to send over the broker's advertised maximum itself); it fails unless
// the broker closes the connection without acknowledging it.
func refusedWhole(t *testing.T, addr, user, pass, name string, payload []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	connect := packets.NewControlPacket(packets.CONNECT)
	cp := connect.Content.(*packets.Connect)
	cp.ProtocolName, cp.ProtocolVersion, cp.ClientID, cp.KeepAlive, cp.CleanStart = "MQTT", 5, user, 30, true
	cp.UsernameFlag, cp.Username, cp.PasswordFlag, cp.Password = true, user, true, []byte(pass)
	if _, err := connect.WriteTo(conn); err != nil {
		t.Fatal(err)
	}
	ack, err := packets.ReadPacket(conn)
	if err != nil || ack.Type != packets.CONNACK || ack.Content.(*packets.Connack).ReasonCode != 0 {
		t.Fatalf("connect: %v %v", ack, err)
	}
	pub := packets.NewControlPacket(packets.PUBLISH)
	pp := pub.Content.(*packets.Publish)
	pp.Topic, pp.QoS, pp.Retain, pp.PacketID, pp.Payload = name, 1, true, 1, payload
	go pub.WriteTo(conn) // the broker may close the connection before it is all written
	conn.SetReadDeadline(time.Now().Add(testenv.Timeout))
	for {
		p, err := packets.ReadPacket(conn)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the broker neither acknowledged nor refused a publication of %d bytes", len(payload))
			}
			return // closed: refused
		}
		if p.Type == packets.PUBACK && p.Content.(*packets.Puback).ReasonCode < 0x80 {
			t.Fatalf("the broker accepted a publication of %d bytes", len(payload))
		}
		if p.Type == packets.DISCONNECT {
			return
		}
	}
}

// TestCapsOversizedPublishBothBrokers: the embedded broker and Mosquitto
// with mosquitto.conf's max_packet_size refuse a gateway's 2 MiB
// publication.
func TestCapsOversizedPublishBothBrokers(t *testing.T) {
	for name, start := range map[string]func(*testing.T) aclBroker{"embedded": embeddedACL, "mosquitto": mosquittoACL} {
		t.Run(name, func(t *testing.T) {
			br := start(t)
			refusedWhole(t, br.addr, "acme/gw-a", br.passA, topic.Default().Birth("acme", "gw-a"), make([]byte, 2<<20))
			// Within the limit, the same gateway publishes.
			m, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", br.passA, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := publishAs(t, m, topic.Default().Birth("acme", "gw-a"), capsBirth(100)); err != nil {
				t.Fatalf("a birth of 100 deployments: %v", err)
			}
		})
	}
}

// TestCapsTooManyDeployments: a birth listing more deployments than the
// limit is refused and the refusal shown on the gateway; so is each
// status of a deployment beyond the limit. Within the limit, births and
// statuses are taken.
func TestCapsTooManyDeployments(t *testing.T) {
	c, pass := capsCloud(t, nil)
	m, _, err := dial(t, c.mqtt, "acme/gw-1", "acme/gw-1", pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := topic.Default()
	if err := publishAs(t, m, s.Birth("acme", "gw-1"), capsBirth(1000)); err != nil {
		t.Fatal(err)
	}
	var g *api.Gateway
	testenv.Eventually(t, "the gateway's birth refused, or taken", func() bool {
		g = c.gateway(t, "acme", "gw-1")
		return g != nil && (len(g.Refused) > 0 || len(g.Deployments) > 0)
	})
	if g.Online || len(g.Deployments) != 0 || len(g.Refused) != 1 || g.Refused[0].Limit != "deployments" {
		t.Fatalf("after a birth of 1000 deployments: online %v, %d deployments, refused %+v; want the birth refused", g.Online, len(g.Deployments), g.Refused)
	}
	t.Logf("refusal: %s", g.Refused[0].Message)

	// A birth within the limit, then statuses of 300 deployments.
	b := capsBirth(0)
	b.Session = 2
	if err := publishAs(t, m, s.Birth("acme", "gw-1"), b); err != nil {
		t.Fatal(err)
	}
	const sent = 300
	for i := range sent {
		st := &fleetv1.DeploymentStatus{Name: fmt.Sprintf("app-%d", i), Revision: 1, Phase: fleetv1.DeploymentStatus_RUNNING}
		if err := publishAs(t, m, s.Status("acme", "gw-1", st.Name), st); err != nil {
			t.Fatal(err)
		}
	}
	refusedStatuses := func(g *api.Gateway) uint64 {
		for _, r := range g.Refused {
			if r.Limit == "deployments" {
				return r.Count - 1 // the birth's
			}
		}
		return 0
	}
	testenv.Eventually(t, "every status taken or refused", func() bool {
		g = c.gateway(t, "acme", "gw-1")
		return g != nil && g.Online && uint64(len(g.Deployments))+refusedStatuses(g) == sent
	})
	if len(g.Deployments) != 256 || refusedStatuses(g) != sent-256 {
		t.Errorf("%d deployments and %d statuses refused, want 256 and %d", len(g.Deployments), refusedStatuses(g), sent-256)
	}
}

// TestCapsEventFlood: a gateway publishing events far faster than the
// limit has the excess dropped and the refusal shown on its record.
func TestCapsEventFlood(t *testing.T) {
	c, pass := capsCloud(t, nil)
	m, _, err := dial(t, c.mqtt, "acme/gw-1", "acme/gw-1", pass, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := topic.Default()
	if err := publishAs(t, m, s.Birth("acme", "gw-1"), capsBirth(0)); err != nil {
		t.Fatal(err)
	}
	// 500 events: at the default 5 a second after a burst of 50, taking
	// them all would need them spread over 90 seconds.
	for range 500 {
		payload, _ := proto.Marshal(&fleetv1.Event{Kind: "flood", Message: "x"})
		ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
		_, err := m.c.Publish(ctx, &paho.Publish{Topic: s.Events("acme", "gw-1"), QoS: 1, Payload: payload,
			Properties: &paho.PublishProperties{ContentType: "application/x-protobuf"}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, "events refused on the gateway's record", func() bool {
		g := c.gateway(t, "acme", "gw-1")
		return g != nil && len(g.Refused) == 1 && g.Refused[0].Limit == "events" && g.Refused[0].Count > 0
	})
}

// TestCapsSilentConnectionClosed: a TCP client that never sends CONNECT
// is closed by the broker (after --mqtt-connect-timeout, 10 s by default),
// rather than held open forever.
func TestCapsSilentConnectionClosed(t *testing.T) {
	c, _ := capsCloud(t, nil)
	conn, err := net.Dial("tcp", c.mqtt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testenv.Eventually(t, "the broker closes a connection that sends nothing", func() bool {
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := io.ReadAll(conn)
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	})
}

// TestCapsMaxClients: with --mqtt-max-clients 3 (the controller's two
// sessions, its own and its share of ingest, and one gateway), a second
// gateway is refused with "server busy".
func TestCapsMaxClients(t *testing.T) {
	c, pass := capsCloud(t, func(cfg *serve.Config) { cfg.BrokerLimits.MaxClients = 3 })
	pass2, err := c.Controller.Provision(context.Background(), "acme", "gw-2", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := dial(t, c.mqtt, "acme/gw-1", "acme/gw-1", pass, nil); err != nil {
		t.Fatalf("first gateway: %v", err)
	}
	_, ca, err := dial(t, c.mqtt, "acme/gw-2", "acme/gw-2", pass2, nil)
	if err == nil || ca == nil || ca.ReasonCode != 0x89 {
		t.Fatalf("second gateway: connack %+v, err %v; want refused with 0x89 (server busy)", ca, err)
	}
}
