package scenarios

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// aclBroker is a broker with authentication and the fleet ACL: gateways
// acme/gw-a (in group berlin) and acme/gw-b, and a user that reads and
// writes everything.
type aclBroker struct {
	addr                 string
	passA, passB         string
	adminUser, adminPass string
	// sessionTakeover: the broker refuses a client id other than the
	// username (embedded) rather than replacing it (Mosquitto).
	refusesForeignClientID bool
}

func embeddedACL(t *testing.T) aclBroker {
	c := startCloud(t, 0)
	ctx := context.Background()
	a, err := c.Controller.Provision(ctx, "acme", "gw-a", identity.Assignment{Groups: []string{"berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Controller.Provision(ctx, "acme", "gw-b", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	return aclBroker{addr: c.mqtt, passA: a, passB: b, adminUser: "controller", adminPass: c.ControllerPassword, refusesForeignClientID: true}
}

// mosquittoACL runs Mosquitto with the ACL patterns, the client-id
// setting and the packet size limit of the repository's mosquitto.conf.
func mosquittoACL(t *testing.T) aclBroker {
	_, err := exec.LookPath("mosquitto") // before mosquitto_passwd; MosquittoWith skips so too
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mosquitto not installed; .ci/run installs it: %v", err)
		}
		t.Skip("mosquitto not installed")
	}
	ref, err := os.ReadFile("../mosquitto.conf")
	if err != nil {
		t.Fatal(err)
	}
	var acl, settings []string
	controller := false // in the controller's lines
	for _, line := range strings.Split(string(ref), "\n") {
		if p, ok := strings.CutPrefix(line, "#   pattern "); ok {
			acl = append(acl, "pattern "+p)
		}
		if strings.HasPrefix(line, "#   user controller-a") {
			controller = true
		}
		if p, ok := strings.CutPrefix(line, "#   "); ok && controller && (strings.HasPrefix(p, "user ") || strings.HasPrefix(p, "topic ")) {
			acl = append(acl, p)
		}
		if strings.HasPrefix(line, "use_username_as_clientid") || strings.HasPrefix(line, "max_packet_size") {
			settings = append(settings, line)
		}
	}
	if len(acl) < 8 {
		t.Fatalf("found %d pattern lines in mosquitto.conf", len(acl))
	}
	if !slices.Contains(acl, "user controller-a-ingest") {
		t.Fatalf("mosquitto.conf's ACL has no controller-a-ingest user: %q", acl)
	}
	acl = append(acl, "user acme/gw-a", "topic read fleet/v1/acme/group/berlin/cmd/+")
	dir := t.TempDir()
	br := aclBroker{passA: "pass-a", passB: "pass-b", adminUser: "controller-a", adminPass: "pass-c"}
	pw := filepath.Join(dir, "passwd")
	for i, u := range [][2]string{{"acme/gw-a", br.passA}, {"acme/gw-b", br.passB}, {"controller-a", br.adminPass}, {"controller-a-ingest", br.adminPass}} {
		args := []string{"-b", pw, u[0], u[1]}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command("mosquitto_passwd", args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "acl"), []byte(strings.Join(acl, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := testenv.MosquittoWith(t, func(port string) string {
		return fmt.Sprintf("per_listener_settings false\nlistener %s 127.0.0.1\nallow_anonymous false\n%s\npassword_file %s\nacl_file %s\nuser root\nlog_dest stderr\n",
			port, strings.Join(settings, "\n"), pw, filepath.Join(dir, "acl"))
	})
	br.addr = strings.TrimPrefix(m.URL(), "mqtt://")
	return br
}

// mqttClient is a bare MQTT v5 client that records what it receives.
type mqttClient struct {
	c      *paho.Client
	conn   net.Conn
	mu     sync.Mutex
	topics []string
	// commands holds, for each of topics, the id of the command it
	// carried ("" for anything else).
	commands []string
	closed   chan struct{}
}

func dial(t *testing.T, addr, clientID, user, pass string, will *paho.WillMessage) (*mqttClient, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m := &mqttClient{conn: conn, closed: make(chan struct{})}
	var once sync.Once
	m.c = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			id := commandID(pr.Packet)
			m.mu.Lock()
			m.topics = append(m.topics, pr.Packet.Topic)
			m.commands = append(m.commands, id)
			m.mu.Unlock()
			return true, nil
		}},
		OnServerDisconnect: func(*paho.Disconnect) { once.Do(func() { close(m.closed) }) },
		OnClientError:      func(error) { once.Do(func() { close(m.closed) }) },
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ca, err := m.c.Connect(ctx, &paho.Connect{ClientID: clientID, Username: user, UsernameFlag: true, Password: []byte(pass), PasswordFlag: true,
		KeepAlive: 30, CleanStart: true, WillMessage: will})
	if err == nil {
		t.Cleanup(func() { m.c.Disconnect(&paho.Disconnect{}) })
	}
	return m, ca, err
}

// commandID is the id of the command p carries, "" when it is none.
func commandID(p *paho.Publish) string {
	ct := ""
	if p.Properties != nil {
		ct = p.Properties.ContentType
	}
	var c fleetv1.Command
	if codec.Unmarshal(codec.FromContentType(ct), p.Payload, &c) != nil {
		return ""
	}
	return c.GetId()
}

func (m *mqttClient) got(topic string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, tp := range m.topics {
		if tp == topic {
			return true
		}
	}
	return false
}

func (m *mqttClient) publish(t *testing.T, topic string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := m.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("x")})
	return err
}

func (m *mqttClient) subscribe(t *testing.T, filter string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := m.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	return err
}

// TestBrokerACL: a gateway cannot publish on another gateway's topics,
// read its commands, leave a death on its topic, or take over its session;
// on the embedded broker, on Mosquitto with mosquitto.conf's ACL, and on
// Mosquitto whose identities cloud-sim keeps (dynamic security).
// Every "did not arrive" is checked after a later message on an allowed
// topic did arrive, so that the test cannot pass by being fast.
func TestBrokerACL(t *testing.T) {
	for name, start := range map[string]func(*testing.T) aclBroker{"embedded": embeddedACL, "mosquitto": mosquittoACL, "mosquitto-dynsec": mosquittoDynsecACL} {
		t.Run(name, func(t *testing.T) {
			br := start(t)
			admin, _, err := dial(t, br.addr, "observer", br.adminUser, br.adminPass, nil)
			if err != nil {
				t.Fatalf("admin connect: %v", err)
			}
			if err := admin.subscribe(t, "fleet/v1/#"); err != nil {
				t.Fatal(err)
			}
			if _, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", "wrong", nil); err == nil {
				t.Fatal("connected with a wrong password")
			}
			b, _, err := dial(t, br.addr, "acme/gw-b", "acme/gw-b", br.passB, nil)
			if err != nil {
				t.Fatalf("gw-b connect: %v", err)
			}
			a, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", br.passA, nil)
			if err != nil {
				t.Fatalf("gw-a connect: %v", err)
			}

			// Publishing on another gateway's topics (a logs stream
			// included: gw-a cannot forge gw-b's chunks).
			foreign := []string{"fleet/v1/acme/gw-b/birth", "fleet/v1/acme/gw-b/status/web", "fleet/v1/acme/gw-b/cmd/deploy", "fleet/v1/other/gw-a/birth",
				"fleet/v1/acme/gw-b/logs/c-0123", "fleet/v1/other/gw-a/logs/c-0123"}
			for _, tp := range foreign {
				if err := a.publish(t, tp); err == nil {
					t.Errorf("gw-a's PUBLISH on %s was acknowledged without an error", tp)
				}
			}
			if err := a.publish(t, "fleet/v1/acme/gw-a/events"); err != nil {
				t.Fatalf("gw-a on its own events topic: %v", err)
			}
			if err := a.publish(t, "fleet/v1/acme/gw-a/logs/c-0123"); err != nil {
				t.Fatalf("gw-a on its own logs topic: %v", err)
			}
			testenv.Eventually(t, "gw-a's own event and logs chunk at the observer", func() bool {
				return admin.got("fleet/v1/acme/gw-a/events") && admin.got("fleet/v1/acme/gw-a/logs/c-0123")
			})
			for _, tp := range foreign {
				if admin.got(tp) || b.got(tp) {
					t.Errorf("gw-a published on %s", tp)
				}
			}

			// Reading another gateway's commands.
			if err := a.subscribe(t, "fleet/v1/acme/gw-b/cmd/+"); err == nil && name == "embedded" {
				t.Error("embedded broker granted gw-a a subscription to gw-b's commands")
			}
			a.subscribe(t, "fleet/v1/acme/+/cmd/+")
			a.subscribe(t, "fleet/v1/#")
			for _, f := range []string{"fleet/v1/acme/gw-a/cmd/+", "fleet/v1/acme/group/berlin/cmd/+"} {
				if err := a.subscribe(t, f); err != nil {
					t.Fatalf("gw-a subscribe %s: %v", f, err)
				}
			}
			if err := b.subscribe(t, "fleet/v1/acme/gw-b/cmd/+"); err != nil {
				t.Fatal(err)
			}
			for _, tp := range []string{"fleet/v1/acme/gw-b/cmd/rebirth", "fleet/v1/acme/group/paris/cmd/rebirth", "fleet/v1/acme/group/berlin/cmd/rebirth", "fleet/v1/acme/gw-a/cmd/rebirth"} {
				if err := admin.publish(t, tp); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, "gw-a gets its own and its group's commands", func() bool {
				return a.got("fleet/v1/acme/gw-a/cmd/rebirth") && a.got("fleet/v1/acme/group/berlin/cmd/rebirth") && b.got("fleet/v1/acme/gw-b/cmd/rebirth")
			})
			for _, tp := range []string{"fleet/v1/acme/gw-b/cmd/rebirth", "fleet/v1/acme/group/paris/cmd/rebirth"} {
				if a.got(tp) {
					t.Errorf("gw-a read %s", tp)
				}
			}

			// Taking over gw-b's session by using its client id.
			_, _, err = dial(t, br.addr, "acme/gw-b", "acme/gw-a", br.passA, nil)
			if br.refusesForeignClientID && err == nil {
				t.Error("embedded broker accepted gw-a's credentials with gw-b's client id")
			}
			if err := b.publish(t, "fleet/v1/acme/gw-b/events"); err != nil {
				t.Errorf("gw-b lost its connection to a client using its client id: %v", err)
			}

			// A Will on another gateway's death topic.
			wa, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", br.passA,
				&paho.WillMessage{Topic: "fleet/v1/acme/gw-b/death", QoS: 1, Payload: []byte("forged")})
			if err == nil {
				wa.conn.Close() // dropped without DISCONNECT: the broker would publish the Will
			}
			a2, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", br.passA, nil)
			if err != nil {
				t.Fatalf("gw-a reconnect: %v", err)
			}
			a2.publish(t, "fleet/v1/acme/gw-a/metrics")
			testenv.Eventually(t, "gw-a's metrics at the observer", func() bool { return admin.got("fleet/v1/acme/gw-a/metrics") })
			if admin.got("fleet/v1/acme/gw-b/death") {
				t.Error("gw-a's Will was published on gw-b's death topic")
			}
		})
	}
}
