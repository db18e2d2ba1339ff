package scenarios

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// pullLink makes a simulated pull take about a second: a 16 MiB image
// over a 16 MiB/s link.
var pullLink = simfleet.Config{ImageBytes: 16 << 20, LinkRate: 16 << 20}

// prefetchSent counts the gateways whose prefetch went out.
func prefetchSent(v *api.RolloutView) int {
	return v.Total - v.PrefetchCounts[api.PrefetchQueued]
}

// TestRolloutPrefetchPhase: a rollout with a prefetch phase stages the
// image on every gateway (the canary's too) before any deploy, shows the
// phase and its counts, and then deploys, each gateway in less than a
// pull: the image is already there.
func TestRolloutPrefetchPhase(t *testing.T) {
	const n = 12
	c := simCloud(t, n, pullLink)
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{Canary: &api.Canary{Count: 2}, MaxInFlight: 50, Prefetch: &api.Prefetch{}}})
	// The scheduler may send prefetches before the view is read back
	// (make test: all 12 IN_PROGRESS in the create's reply): every gateway
	// is counted in the prefetch, and none is deploying.
	prefetching := 0
	for _, k := range v.PrefetchCounts {
		prefetching += k
	}
	if v.Phase != api.PhasePrefetch || prefetching != n || v.Counts[api.GwQueued] != n || v.PrefetchUntil.IsZero() {
		t.Fatalf("created: phase %s, prefetch %v, gateways %v, until %s", v.Phase, v.PrefetchCounts, v.Counts, v.PrefetchUntil)
	}
	testenv.Eventually(t, "every prefetch sent, no deploy", func() bool {
		st := rolloutStatus(t, c, v.ID)
		if st.Phase == api.PhasePrefetch && st.Counts[api.GwQueued] != n {
			t.Fatalf("a deploy during the prefetch phase: %v", st.Counts)
		}
		return st.PrefetchCounts[api.PrefetchQueued] == 0
	})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != n || v.PrefetchCounts[api.PrefetchSucceeded] != n {
		t.Fatalf("rollout %s %v, prefetch %v (%s)", v.State, v.Counts, v.PrefetchCounts, v.Reason)
	}
	for _, g := range v.Gateways {
		if g.Prefetch == nil || g.Prefetch.FinishedAt.After(g.DispatchedAt) {
			t.Errorf("%s: deployed at %s before its prefetch finished: %+v", g.Gateway, g.DispatchedAt, g.Prefetch)
		}
	}
	// Counted, not timed: under make test's load a deploy without a pull
	// once took longer than a pull (1.1 s).
	if pulls := c.Fleet.Pulls(); pulls != n {
		t.Errorf("%d pulls on %d gateways, want one each (the prefetch's): the prefetched image was pulled again", pulls, n)
	}
}

// TestRolloutPrefetchPauseRestart: pausing during the prefetch phase
// sends no more prefetches; a controller restarted in the middle of the
// phase resumes it from the store, and no gateway's prefetch is sent
// under another id.
func TestRolloutPrefetchPauseRestart(t *testing.T) {
	const n = 20
	c := simCloud(t, n, pullLink)
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 300, Prefetch: &api.Prefetch{}}})
	testenv.Eventually(t, "a few prefetches sent", func() bool { return prefetchSent(rolloutStatus(t, c, v.ID)) >= 3 })
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/pause", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	settled := prefetchSent(rolloutStatus(t, c, v.ID))
	ticks := c.Controller.RolloutTicks()
	testenv.Eventually(t, "three scheduler ticks", func() bool { return c.Controller.RolloutTicks() >= ticks+3 })
	if now := rolloutStatus(t, c, v.ID); prefetchSent(now) != settled || now.State != api.RolloutPaused || now.Phase != api.PhasePrefetch {
		t.Fatalf("paused with %d prefetches sent, then %d (%s %s)", settled, prefetchSent(now), now.State, now.Phase)
	}
	c.restart(t)
	waitOnline(t, c, "sim", n)
	if st := rolloutStatus(t, c, v.ID); st.State != api.RolloutPaused || st.Phase != api.PhasePrefetch || prefetchSent(st) != settled {
		t.Fatalf("after restart: %s %s, %d prefetches sent; want PAUSED PREFETCHING, %d", st.State, st.Phase, prefetchSent(st), settled)
	}
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/resume", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	v = waitRollout(t, c, v.ID, 2*time.Minute)
	if v.State != api.RolloutSucceeded || v.PrefetchCounts[api.PrefetchSucceeded] != n {
		t.Fatalf("rollout %s %v, prefetch %v (%s)", v.State, v.Counts, v.PrefetchCounts, v.Reason)
	}
	var batches struct {
		Commands []api.Command `json:"commands"`
	}
	c.get(t, "/v1/commands?verb=prefetch&limit=1000", &batches)
	seen := map[string]string{}
	for _, cmd := range batches.Commands {
		if prev, ok := seen[cmd.Gateway]; ok && prev != cmd.ID {
			t.Errorf("%s: prefetch sent as %s and %s", cmd.Gateway, prev, cmd.ID)
		}
		seen[cmd.Gateway] = cmd.ID
	}
	if len(seen) != n {
		t.Errorf("prefetch commands to %d gateways, want %d", len(seen), n)
	}
}

// TestPrefetchCommand: POST /v1/commands with a prefetch stages the image
// on the targets; a deploy of it afterwards does not pull again.
func TestPrefetchCommand(t *testing.T) {
	c := simCloud(t, 3, pullLink)
	spec := &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.example.com/web:1"}
	b := sendSkip(t, c, api.Target{Tenant: "sim", All: true}, &fleetv1.Command{Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: spec}}})
	if b.Verb != "prefetch" || b.Counts[api.StateSucceeded] != 3 {
		t.Fatalf("prefetch batch %s: %v", b.Verb, b.Counts)
	}
	if pulls := c.Fleet.Pulls(); pulls != 3 {
		t.Fatalf("%d pulls after the prefetch on 3 gateways, want 3", pulls)
	}
	b = sendSkip(t, c, api.Target{Tenant: "sim", All: true}, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}})
	if b.Counts[api.StateSucceeded] != 3 {
		t.Fatalf("deploy batch: %v", b.Counts)
	}
	if pulls := c.Fleet.Pulls(); pulls != 3 {
		t.Errorf("%d pulls after the deploy, want still 3: the prefetched image was pulled again", pulls)
	}
	for _, g := range []string{"sim-1", "sim-2", "sim-3"} {
		if d := c.gateway(t, "sim", g).Deployments["web"]; d == nil || d.Phase != "RUNNING" {
			t.Errorf("%s: web %+v", g, d)
		}
	}
}

// sendSkip sends cmd to target without the cloud's registry check (the
// simulated gateways' images are in no registry) and waits for it.
func sendSkip(t *testing.T, c *cloud, target api.Target, cmd *fleetv1.Command) *api.BatchView {
	t.Helper()
	body, _ := protojson.Marshal(cmd)
	var b api.BatchView
	req := api.CommandRequest{Target: target, Command: body, Wait: "30s", SkipRegistryCheck: true}
	if err := c.api.Do(context.Background(), "POST", "/v1/commands", req, &b, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	return &b
}

// TestRolloutPrefetchTwoReplicas: with two replicas taking work, the
// scheduling one learns the outcome of every prefetch, also of those the
// other replica's workers sent (no status carries it), so the phase ends
// when the prefetches do, not at its timeout.
func TestRolloutPrefetchTwoReplicas(t *testing.T) {
	const n = 40
	a := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	a.cfg = serve.Config{DataDir: a.dataDir, MQTTListen: a.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), ControllerID: "replica-a", ControllerPassword: "replica-password",
		Sim: simfleet.Config{Count: n, Tenant: "sim", PullTime: 10 * time.Millisecond}}
	a.start(t)
	t.Cleanup(func() { a.Close() })
	waitOnline(t, a, "sim", n)
	bs, err := serve.Start(context.Background(), serve.Config{DataDir: t.TempDir(), BrokerURL: a.BrokerURL.String(),
		BrokerUsername: "controller", BrokerPassword: "replica-password", NATSURL: a.NATSURL, NATSCreds: a.NATSCreds, HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), ControllerID: "replica-b", SecretsKey: filepath.Join(a.dataDir, "controller.key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	v := createRollout(t, a, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 1200, Prefetch: &api.Prefetch{Timeout: api.Duration(10 * time.Minute)}}})
	v = waitRollout(t, a, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.PrefetchCounts[api.PrefetchSucceeded] != n {
		t.Fatalf("rollout %s %v, prefetch %v (%s)", v.State, v.Counts, v.PrefetchCounts, v.Reason)
	}
	// Every replica knows every command (through the store): the work
	// items each sent tell who took what.
	if byA, byB := a.Controller.Worked(), bs.Controller.Worked(); byA == 0 || byB == 0 || byA+byB < 2*n {
		t.Errorf("work items (prefetches and deploys) sent by replica a: %d, by replica b: %d, of %d; both replicas should have taken work", byA, byB, 2*n)
	}
}
