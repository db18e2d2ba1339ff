package scenarios

import (
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/faultproxy"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestDeployNotAcknowledged: a rollout's deploy the broker does not
// acknowledge in time (its PUBACK later than paho's 10 s: a loaded broker,
// as make test's) is sent again under the same command id, and the
// gateway ends SUCCEEDED, dispatched once. Before, the command was
// recorded undelivered at once and its gateway failed: a rollout of 300
// gateways through a broker slowed by make test's load failed 22 of them
// and aborted (TestReplicasShareIngest).
//
// The controller and the simulated gateway reach Mosquitto through a
// proxy that stops forwarding what Mosquitto sends, from before the
// rollout until the controller has given up on the deploy's PUBACK.
func TestDeployNotAcknowledged(t *testing.T) {
	m := testenv.MosquittoDynsec(t)
	const ctlPass = "controller-pass"
	dynsecControllerClient(t, m, ctlPass)
	u, err := url.Parse(m.URL())
	if err != nil {
		t.Fatal(err)
	}
	p, err := faultproxy.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	logs := &testenv.LogBuffer{}
	c := &cloud{dataDir: t.TempDir(), logs: logs}
	c.cfg = serve.Config{DataDir: c.dataDir, BrokerURL: "mqtt://" + p.Addr(), BrokerUsername: "controller", BrokerPassword: ctlPass,
		BrokerDynsecLogin: m.LoginFile, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Scheme: topic.Default(), StaleAfter: time.Minute,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
		Sim:    simfleet.Config{Count: 1, Tenant: "sim", PullTime: 10 * time.Millisecond}}
	c.start(t)
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			t.Logf("cloud-sim serve logged:\n%s", logs.String())
		}
	})
	waitOnline(t, c, "sim", 1)

	p.Stall()
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true})
	// paho gives up on a PUBACK after 10 s; the old code then logged
	// "rollout dispatch failed", the new one hands the item out again.
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(logs.String(), "rollout dispatch failed") && !strings.Contains(logs.String(), "work item not done") {
		if time.Now().After(deadline) {
			p.Resume()
			t.Fatal("the controller did not give up on the deploy's PUBACK within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Resume()

	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 1 {
		t.Fatalf("rollout %s: %v (%s); want SUCCEEDED, the deploy sent again", v.State, v.Counts, v.Reason)
	}
	if g := v.Gateways[0]; g.Attempt != 1 {
		t.Errorf("%s dispatched %d times; want once, its command sent again", g.Gateway, g.Attempt)
	}
	var g api.Gateway
	c.get(t, "/v1/gateways/sim/sim-1", &g)
	if d := g.Deployments["web"]; d == nil || d.Revision != 1 || d.Phase != "RUNNING" {
		t.Fatalf("sim-1 after the rollout: %+v", d)
	}
}
