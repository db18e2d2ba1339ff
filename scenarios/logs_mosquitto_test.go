package scenarios

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient/mqttclienttest"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// TestLogsDynsec: on Mosquitto whose identities cloud-sim keeps (dynamic
// security), a gateway's role lets it publish its logs chunks and the
// controller's client receives them: GET …/logs streams the tail in
// order, then a follow, which the client's going away cancels.
func TestLogsDynsec(t *testing.T) {
	m, c := dynsecCloud(t)
	pw, err := c.Controller.Provision(context.Background(), "acme", "gw-1", identity.Assignment{})
	if err != nil {
		t.Fatal(err)
	}
	gw := mqttclienttest.StartLogsGateway(t, m.URL(), pw, &mqttclienttest.LogsGateway{Tenant: "acme", ID: "gw-1", Announce: true,
		Lines: map[string][]string{"web": {"a", "b", "c", "d", "e"}}})
	testenv.Eventually(t, "acme/gw-1 online", func() bool {
		g, ok := c.Controller.Gateway("acme", "gw-1")
		return ok && g.Online
	})
	var got []string
	tail, cancelTail := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancelTail()
	err = c.api.Events(tail, "/v1/gateways/acme/gw-1/deployments/web/logs?tail=4", func(name string, data []byte) error {
		switch name {
		case "line":
			var l api.LogLine
			json.Unmarshal(data, &l)
			got = append(got, l.Text)
		case "end":
			var e api.LogEnd
			json.Unmarshal(data, &e)
			got = append(got, "end "+e.Reason)
		}
		return nil
	})
	if want := []string{"b", "c", "d", "e", "end COMPLETE"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}

	ctx, cancel := context.WithTimeout(context.Background(), testenv.Timeout)
	defer cancel()
	err = c.api.Events(ctx, "/v1/gateways/acme/gw-1/deployments/web/logs?tail=1&follow=true", func(name string, data []byte) error {
		var l api.LogLine
		if name == "line" && json.Unmarshal(data, &l) == nil && l.Text == "follow 2" {
			cancel() // the client goes away
		}
		return nil
	})
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Fatalf("the follow did not reach its second line before the client left: %v", err)
	}
	testenv.Eventually(t, "cancel-logs at the gateway", func() bool { return gw.Following() == 0 })
}
