package scenarios

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/dynsec"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// controllerClientCommands are the mosquitto_ctrl commands
// cloud-sim/README.md gives operators for the controller's own client
// (after -h/-p/-u/-P, before the password).
var controllerClientCommands = [][]string{
	{"dynsec", "createRole", "fleet-controller"},
	{"dynsec", "addRoleACL", "fleet-controller", "publishClientSend", "fleet/v1/#", "allow"},
	{"dynsec", "addRoleACL", "fleet-controller", "publishClientReceive", "fleet/v1/#", "allow"},
	{"dynsec", "addRoleACL", "fleet-controller", "subscribePattern", "fleet/v1/#", "allow"},
	{"dynsec", "addRoleACL", "fleet-controller", "subscribePattern", "$share/+/fleet/v1/#", "allow"},
	{"dynsec", "createClient", "controller", "-p", ""}, // the password is appended
	{"dynsec", "addClientRole", "controller", "fleet-controller"},
}

// dynsecCloud starts Mosquitto with dynamic security, creates the
// controller's client as cloud-sim/README.md says, and cloud-sim serve
// keeping the gateways' identities there (--broker-dynsec-login).
func dynsecCloud(t *testing.T) (*testenv.DynsecMosquitto, *cloud) {
	t.Helper()
	m := testenv.MosquittoDynsec(t)
	const ctlPass = "controller-pass"
	dynsecControllerClient(t, m, ctlPass)
	c := &cloud{dataDir: t.TempDir()}
	c.cfg = serve.Config{DataDir: c.dataDir, BrokerURL: m.URL(), BrokerUsername: "controller", BrokerPassword: ctlPass,
		BrokerDynsecLogin: m.LoginFile, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Scheme: topic.Default(), StaleAfter: time.Minute}
	c.start(t)
	t.Cleanup(func() {
		if c.Server != nil {
			c.Close()
		}
	})
	return m, c
}

// mosquittoDynsecACL is TestBrokerACL's broker for Mosquitto whose
// identities cloud-sim keeps through dynamic security.
func mosquittoDynsecACL(t *testing.T) aclBroker {
	m, c := dynsecCloud(t)
	ctx := context.Background()
	a, err := c.Controller.Provision(ctx, "acme", "gw-a", identity.Assignment{Groups: []string{"berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Controller.Provision(ctx, "acme", "gw-b", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(m.URL())
	return aclBroker{addr: u.Host, passA: a, passB: b, adminUser: "controller", adminPass: "controller-pass", refusesForeignClientID: true}
}

// TestDynsecAgent: a real agent provisioned through cloud-sim on Mosquitto
// with dynamic security comes online through it and is disconnected and
// shown offline at once when deprovisioned, and cannot log in again. At
// the next start, cloud-sim reconciles the broker with its identities.
func TestDynsecAgent(t *testing.T) {
	gw1 := testenv.UniqueID("gw")
	m, c := dynsecCloud(t)
	ctx := context.Background()
	pw, err := c.Controller.Provision(ctx, "acme", gw1, identity.Assignment{Groups: []string{"berlin"}})
	if err != nil {
		t.Fatal(err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pwFile, []byte(pw), 0o600)
	agent := testenv.StartAgent(t, m.URL(), "acme", gw1, "--broker-username", "acme/"+gw1, "--broker-password-file", pwFile, "--group", "berlin")
	testenv.Eventually(t, "gw-1 online through Mosquitto", func() bool {
		g, ok := c.Controller.Gateway("acme", gw1)
		return ok && g.Online
	})
	live, err := c.Controller.Deprovision(ctx, "acme", gw1)
	if err != nil || !live {
		t.Fatalf("Deprovision = %v, %v; want the online gateway disconnected", live, err)
	}
	if g, _ := c.Controller.Gateway("acme", gw1); g.Online {
		t.Error("a deprovisioned gateway is still online in the inventory")
	}
	// 152 (0x98): administrative action; 135 (0x87): not authorized.
	testenv.Eventually(t, "the agent disconnected and then refused by Mosquitto", func() bool {
		l := agent.Logs()
		return strings.Contains(l, "reason=152") && strings.Contains(l, "server denied connect (reason: 135)")
	})
	if g, _ := c.Controller.Gateway("acme", gw1); g.Online {
		t.Error("a deprovisioned gateway came back online")
	}

	// Drift while cloud-sim is down: gw-2 deleted from the broker, and a
	// gateway cloud-sim no longer has left on it.
	if _, err := c.Controller.Provision(ctx, "acme", "gw-2", identity.Assignment{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	c.Server = nil
	u, _ := url.Parse(m.URL())
	admin, err := dynsec.Dial(ctx, dynsec.Config{BrokerURL: u, Username: m.AdminUser, Password: []byte(m.AdminPassword), Scheme: topic.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.Delete(ctx, "acme", "gw-2"); err != nil {
		t.Fatal(err)
	}
	if err := admin.Put(ctx, "acme", "stale", nil, "pw"); err != nil {
		t.Fatal(err)
	}
	c.start(t)
	if _, err := admin.Do(ctx, dynsec.Command{Command: "getClient", Username: "acme/stale"}); err == nil {
		t.Error("a gateway cloud-sim does not have is still on the broker after its start")
	}
	if _, err := admin.Do(ctx, dynsec.Command{Command: "getClient", Username: "acme/gw-2"}); err != nil {
		t.Errorf("gw-2, provisioned, is not on the broker after cloud-sim's start: %v", err)
	}
	pw2, err := c.Controller.Provision(ctx, "acme", "gw-2", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pwFile, []byte(pw2), 0o600)
	testenv.StartAgent(t, m.URL(), "acme", "gw-2", "--broker-username", "acme/gw-2", "--broker-password-file", pwFile)
	testenv.Eventually(t, "gw-2 online with its new password", func() bool {
		g, ok := c.Controller.Gateway("acme", "gw-2")
		return ok && g.Online
	})
}
