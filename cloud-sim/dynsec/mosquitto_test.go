package dynsec

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// ControllerACLs are the rules README.md tells operators to give the
// controller's own client: every fleet topic, through shared
// subscriptions too.
var controllerACLs = []ACL{
	{Type: PublishSend, Topic: "fleet/v1/#", Allow: true},
	{Type: PublishReceive, Topic: "fleet/v1/#", Allow: true},
	{Type: Subscribe, Topic: "fleet/v1/#", Allow: true},
	{Type: Subscribe, Topic: "$share/+/fleet/v1/#", Allow: true},
}

// mosquittoAdmin starts Mosquitto with the plugin and dials its admin.
func mosquittoAdmin(t *testing.T) (*testenv.DynsecMosquitto, *Client) {
	t.Helper()
	m := testenv.MosquittoDynsec(t)
	u, _ := url.Parse(m.URL())
	user, pw, err := ReadLogin(m.LoginFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	c, err := Dial(ctx, Config{BrokerURL: u, Username: user, Password: pw, Scheme: topic.Default(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return m, c
}

// mqttClient is a plain MQTT v5 connection to the broker.
type mqttClient struct {
	*paho.Client
	conn net.Conn
	got  chan *paho.Publish
	gone chan struct{}
}

func connect(t *testing.T, addr string, c *paho.Connect) (*mqttClient, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	m := &mqttClient{conn: conn, got: make(chan *paho.Publish, 16), gone: make(chan struct{})}
	m.Client = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			m.got <- pr.Packet
			return true, nil
		}},
		OnServerDisconnect: func(*paho.Disconnect) { m.closed() },
		OnClientError:      func(error) { m.closed() },
	})
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	c.KeepAlive, c.CleanStart = 30, true
	c.UsernameFlag, c.PasswordFlag = c.Username != "", c.Password != nil
	if _, err := m.Connect(ctx, c); err != nil {
		conn.Close()
		return nil, err
	}
	t.Cleanup(func() { m.Disconnect(&paho.Disconnect{}) })
	return m, nil
}

func (m *mqttClient) closed() {
	select {
	case <-m.gone:
	default:
		close(m.gone)
	}
}

func gatewayConnect(user, pw string) *paho.Connect {
	return &paho.Connect{ClientID: user, Username: user, Password: []byte(pw)}
}

// subscribe reports whether the broker granted filter.
func (m *mqttClient) subscribe(t *testing.T, filter string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	ack, err := m.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if err != nil && ack == nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return ack.Reasons[0] < 0x80
}

// publish reports whether the broker accepted a QoS 1 publication.
func (m *mqttClient) publish(t *testing.T, name, payload string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	resp, err := m.Publish(ctx, &paho.Publish{Topic: name, QoS: 1, Payload: []byte(payload)})
	if err != nil && resp == nil {
		t.Fatalf("publish %s: %v", name, err)
	}
	return resp.ReasonCode < 0x80
}

// next is the next publication received.
func (m *mqttClient) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-m.got:
		return p
	case <-time.After(testenv.Timeout):
		t.Fatal("no publication received")
		return nil
	}
}

func (m *mqttClient) awaitGone(t *testing.T, what string) {
	t.Helper()
	select {
	case <-m.gone:
	case <-time.After(testenv.Timeout):
		t.Fatalf("%s: still connected", what)
	}
}

func addr(m testenv.Broker) string { u, _ := url.Parse(m.URL()); return u.Host }

// startController creates the controller's client as README.md documents
// and connects it.
func startController(t *testing.T, m testenv.Broker, c *Client) *mqttClient {
	t.Helper()
	ctx := t.Context()
	if _, err := c.Do(ctx, Command{Command: "createRole", RoleName: "fleet-controller", ACLs: controllerACLs},
		Command{Command: "createClient", Username: "controller", Password: "ctl-pw", Roles: []RoleRef{{RoleName: "fleet-controller"}}}); err != nil {
		t.Fatal(err)
	}
	ctl, err := connect(t, addr(m), &paho.Connect{ClientID: "controller-1", Username: "controller", Password: []byte("ctl-pw")})
	if err != nil {
		t.Fatal(err)
	}
	return ctl
}

// TestMosquittoGatewayACL: a provisioned gateway connects with its client
// id and Will, publishes and subscribes on its own topics and its groups'
// command topics, and on no other gateway's; the controller, with the
// documented role, receives it through a shared subscription.
func TestMosquittoGatewayACL(t *testing.T) {
	m, c := mosquittoAdmin(t)
	ctx := t.Context()
	s := topic.Default()
	if err := c.Put(ctx, "acme", "gw-1", []string{"berlin"}, "pw-1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "acme", "gw-2", nil, "pw-2"); err != nil {
		t.Fatal(err)
	}
	ctl := startController(t, m, c)
	if !ctl.subscribe(t, "$share/ctl/"+s.Filter(topic.Birth)) {
		t.Fatal("the controller may not subscribe to gateways' births through a shared subscription")
	}

	if _, err := connect(t, addr(m), &paho.Connect{ClientID: "other", Username: "acme/gw-1", Password: []byte("pw-1")}); err == nil {
		t.Error("a gateway connected with a client id other than its username")
	}
	// Mosquitto 2.0 accepts a Will on any topic at CONNECT, and checks it
	// against the ACL when it would publish it: a Will on another
	// gateway's death is dropped, one on its own death delivered.
	if !ctl.subscribe(t, "$share/ctl/"+s.Filter(topic.Death)) {
		t.Fatal("the controller may not subscribe to gateways' deaths through a shared subscription")
	}
	for _, gateway := range []string{"gw-2", "gw-1"} {
		will := gatewayConnect("acme/gw-1", "pw-1")
		will.WillMessage = &paho.WillMessage{Topic: s.Death("acme", gateway), QoS: 1, Payload: []byte("will")}
		gw, err := connect(t, addr(m), will)
		if err != nil {
			t.Fatalf("gateway with a Will on %s's death: %v", gateway, err)
		}
		gw.conn.Close()
	}
	if p := ctl.next(t); p.Topic != s.Death("acme", "gw-1") {
		t.Errorf("the controller received the Will %s, want only gw-1's own death", p.Topic)
	}
	gw, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-1"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		filter string
		want   bool
	}{
		{s.CommandFilter("acme", "gw-1"), true},
		{s.Command("acme", "gw-1", topic.Deploy), true},
		{s.GroupCommandFilter("acme", "berlin"), true},
		{s.CommandFilter("acme", "gw-2"), false},
		{"fleet/v1/acme/gw-1/cmd/#", false},
		{s.GroupCommandFilter("acme", "paris"), false},
		{s.Filter(topic.Birth), false},
		{"#", false},
	} {
		if got := gw.subscribe(t, tt.filter); got != tt.want {
			t.Errorf("subscribe %s: granted = %v, want %v", tt.filter, got, tt.want)
		}
	}
	for _, tt := range []struct {
		name string
		want bool
	}{
		{s.Birth("acme", "gw-1"), true},
		{s.Status("acme", "gw-1", "web"), true},
		{s.ConsoleReply("acme", "gw-1", "console-1"), true},
		{s.Metrics("acme", "gw-1"), true},
		{s.Birth("acme", "gw-2"), false},
		{s.Command("acme", "gw-1", topic.Deploy), false},
		{s.GroupCommand("acme", "berlin", topic.Deploy), false},
		{"fleet/v1/acme/gw-1/status/web/x", false},
	} {
		if got := gw.publish(t, tt.name, tt.name); got != tt.want {
			t.Errorf("publish %s: accepted = %v, want %v", tt.name, got, tt.want)
		}
	}
	if p := ctl.next(t); p.Topic != s.Birth("acme", "gw-1") {
		t.Errorf("the controller received %s, want only gw-1's birth", p.Topic)
	}
}

// TestMosquittoGroupChange: a gateway moved from one group to another is
// disconnected, and on its next login receives its new group's commands
// and no longer its old group's.
func TestMosquittoGroupChange(t *testing.T) {
	m, c := mosquittoAdmin(t)
	ctx := t.Context()
	s := topic.Default()
	if err := c.Put(ctx, "acme", "gw-1", []string{"berlin"}, "pw-1"); err != nil {
		t.Fatal(err)
	}
	ctl := startController(t, m, c)
	gw, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "acme", "gw-1", []string{"paris"}, ""); err != nil {
		t.Fatal(err)
	}
	gw.awaitGone(t, "a gateway whose groups changed")
	if gw, err = connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-1")); err != nil {
		t.Fatalf("the gateway's password no longer works after a group change: %v", err)
	}
	if gw.subscribe(t, s.GroupCommandFilter("acme", "berlin")) {
		t.Error("the gateway may still subscribe to its old group's commands")
	}
	if !gw.subscribe(t, s.GroupCommandFilter("acme", "paris")) {
		t.Fatal("the gateway may not subscribe to its new group's commands")
	}
	ctl.publish(t, s.GroupCommand("acme", "berlin", topic.Deploy), "old")
	ctl.publish(t, s.GroupCommand("acme", "paris", topic.Deploy), "new")
	if p := gw.next(t); p.Topic != s.GroupCommand("acme", "paris", topic.Deploy) {
		t.Errorf("the gateway received %s first, want its new group's command", p.Topic)
	}
}

// TestMosquittoPasswordAndDelete: a new password disconnects the gateway
// and replaces the old one; disabling a gateway disconnects it, and a new
// password leaves it disabled; deleting the gateway disconnects it at once
// (without its Will) and it cannot log in again.
func TestMosquittoPasswordAndDelete(t *testing.T) {
	m, c := mosquittoAdmin(t)
	ctx := t.Context()
	if err := c.Put(ctx, "acme", "gw-1", nil, "pw-1"); err != nil {
		t.Fatal(err)
	}
	gw, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "acme", "gw-1", nil, "pw-new"); err != nil {
		t.Fatal(err)
	}
	gw.awaitGone(t, "a gateway given a new password")
	if _, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-1")); err == nil {
		t.Error("the old password still works")
	}
	ctl := startController(t, m, c)
	if !ctl.subscribe(t, topic.Default().Filter(topic.Death)) {
		t.Fatal("the controller may not subscribe to deaths")
	}
	will := gatewayConnect("acme/gw-1", "pw-new")
	will.WillMessage = &paho.WillMessage{Topic: topic.Default().Death("acme", "gw-1"), QoS: 1, Payload: []byte("will")}
	if gw, err = connect(t, addr(m), will); err != nil {
		t.Fatalf("the new password: %v", err)
	}
	// One the operator disabled is disconnected, and stays disabled
	// through a new password.
	if _, err := c.Do(ctx, Command{Command: "disableClient", Username: "acme/gw-1"}); err != nil {
		t.Fatal(err)
	}
	gw.awaitGone(t, "a disabled gateway")
	if err := c.Put(ctx, "acme", "gw-1", nil, "pw-3"); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-3")); err == nil {
		t.Error("a disabled gateway logged in after a new password")
	}
	if _, err := c.Do(ctx, Command{Command: "enableClient", Username: "acme/gw-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, addr(m), will); err == nil {
		t.Fatal("the password before the last still works")
	}
	will.Password = []byte("pw-3")
	if gw, err = connect(t, addr(m), will); err != nil {
		t.Fatalf("enabled again, with its new password: %v", err)
	}
	start := time.Now()
	if err := c.Delete(ctx, "acme", "gw-1"); err != nil {
		t.Fatal(err)
	}
	gw.awaitGone(t, "a deleted gateway")
	t.Logf("disconnected %v after Delete was called", time.Since(start))
	// Mosquitto disconnects a deleted client without publishing its Will
	// (the controller records the death itself): the first death the
	// controller receives is the one it publishes after.
	ctl.publish(t, topic.Default().Death("acme", "gw-1"), "after")
	if p := ctl.next(t); string(p.Payload) != "after" {
		t.Errorf("the controller received %q on %s first; Mosquitto now publishes a deleted client's Will: the controller need not record its death", p.Payload, p.Topic)
	}
	if _, err := connect(t, addr(m), gatewayConnect("acme/gw-1", "pw-3")); err == nil {
		t.Error("a deleted gateway logged in again")
	}
	if err := c.Delete(ctx, "acme", "gw-1"); err != nil {
		t.Errorf("deleting a deleted gateway again: %v", err)
	}
}

// TestMosquittoReconcile: the broker's gateway clients become the
// cloud's: a missing one is created (without a password), one no longer
// provisioned is deleted and disconnected, groups are corrected, and
// clients that are not the product's (the admin, another application's,
// one named like a gateway) are left alone.
func TestMosquittoReconcile(t *testing.T) {
	m, c := mosquittoAdmin(t)
	ctx := t.Context()
	s := topic.Default()
	for _, id := range []string{"keep", "gone"} {
		if err := c.Put(ctx, "acme", id, []string{"berlin"}, "pw"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Do(ctx, Command{Command: "createClient", Username: "acme/foreign", Password: "pw"},
		Command{Command: "createClient", Username: "app", Password: "pw"}); err != nil {
		t.Fatal(err)
	}
	gone, err := connect(t, addr(m), gatewayConnect("acme/gone", "pw"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Gateway{{Tenant: "acme", ID: "keep", Groups: []string{"paris"}}, {Tenant: "acme", ID: "new"}, {Tenant: "acme", ID: "foreign"}}
	// acme/late was provisioned through another replica after this one
	// read want: the store has it now, so its client stays.
	if err := c.Put(ctx, "acme", "late", nil, "pw"); err != nil {
		t.Fatal(err)
	}
	provisioned := func(_ context.Context, g Gateway) bool { return g.Username() == "acme/late" }
	got, err := c.Reconcile(ctx, want, provisioned)
	var owned *Error
	if err == nil || errors.As(err, &owned) {
		t.Errorf("Reconcile with a foreign client named like a gateway: err = %v, want it named", err)
	}
	if !slices.Equal(got.Created, []string{"acme/new"}) || !slices.Equal(got.Changed, []string{"acme/keep"}) || !slices.Equal(got.Deleted, []string{"acme/gone"}) ||
		!slices.Equal(got.Kept, []string{"acme/late"}) {
		t.Errorf("Reconcile = %+v, want created acme/new, changed acme/keep, deleted acme/gone, kept acme/late", got)
	}
	gone.awaitGone(t, "a gateway no longer provisioned")
	for _, pw := range []string{"", "pw"} {
		if _, err := connect(t, addr(m), gatewayConnect("acme/new", pw)); err == nil {
			t.Errorf("a gateway created without a password logged in with %q", pw)
		}
	}
	clients, roles, err := c.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"admin", "app", "acme/foreign", "acme/keep", "acme/new", "acme/late"} {
		if clients[u] == nil {
			t.Errorf("client %s missing after Reconcile", u)
		}
	}
	if clients["acme/gone"] != nil || roles[roleName("acme/gone")] != nil {
		t.Error("the client or role of a gateway no longer provisioned is still there")
	}
	if r := roles[roleName("acme/keep")]; r == nil || !slices.Contains(r.ACLs, ACL{Type: Subscribe, Topic: s.GroupCommandFilter("acme", "paris"), Priority: 1, Allow: true}) {
		t.Errorf("acme/keep's role after Reconcile: %+v, want its new group paris", r)
	}
	if roles[roleName("acme/late")] == nil {
		t.Error("the role of a gateway provisioned meanwhile was deleted")
	}
	again, err := c.Reconcile(ctx, append(want[:2:2], Gateway{Tenant: "acme", ID: "late"}), nil)
	if err != nil || len(again.Created)+len(again.Changed)+len(again.Deleted) > 0 {
		t.Errorf("a second Reconcile = %+v, %v; want nothing to do", again, err)
	}
}
