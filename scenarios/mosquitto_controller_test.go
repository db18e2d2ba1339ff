package scenarios

import (
	"context"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestControllerOnReferenceMosquitto: a controller on Mosquitto set up
// as the repository's mosquitto.conf says (its ACL, and each username as
// the client id) logs its two sessions in with the two users the file
// names, takes its share of what gateways publish through the shared
// subscription the ACL allows, and shows a gateway's birth and status.
func TestControllerOnReferenceMosquitto(t *testing.T) {
	br := mosquittoACL(t)
	s, err := serve.Start(context.Background(), serve.Config{DataDir: t.TempDir(), BrokerURL: "mqtt://" + br.addr,
		BrokerUsername: "controller-a", BrokerIngestUsername: "controller-a-ingest", BrokerPassword: br.adminPass,
		NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Scheme: topic.Default(), ControllerID: "controller-a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := &cloud{Server: s, api: &apiclient.Client{Base: s.APIURL, Token: s.APIToken}}
	m, _, err := dial(t, br.addr, "acme/gw-a", "acme/gw-a", br.passA, nil)
	if err != nil {
		t.Fatal(err)
	}
	sch := topic.Default()
	if err := publishAs(t, m, sch.Birth("acme", "gw-a"), &fleetv1.Birth{GatewayId: "gw-a", Tenant: "acme", Session: 1}); err != nil {
		t.Fatal(err)
	}
	st := &fleetv1.DeploymentStatus{Name: "web", Revision: 3, Phase: fleetv1.DeploymentStatus_RUNNING}
	if err := publishAs(t, m, sch.Status("acme", "gw-a", "web"), st); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "gw-a online with web at revision 3", func() bool {
		var g api.Gateway
		if c.api.Do(context.Background(), "GET", "/v1/gateways/acme/gw-a", nil, &g, nil) != nil {
			return false
		}
		d := g.Deployments["web"]
		return g.Online && d != nil && d.Revision == 3 && d.Phase == "RUNNING"
	})
	if got := s.Controller.Received(); got < 2 {
		t.Errorf("the controller received %d publications through its shared subscription, want 2", got)
	}
}
