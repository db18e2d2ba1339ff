package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// simCloud starts serve with n simulated gateways of tenant "sim" and
// waits until they are online.
func simCloud(t *testing.T, n int, sim simfleet.Config) *cloud {
	t.Helper()
	sim.Count, sim.Tenant = n, "sim"
	if sim.PullTime == 0 {
		sim.PullTime = 10 * time.Millisecond
	}
	c := newCloud(t, sim)
	waitOnline(t, c, "sim", n)
	return c
}

// waitOnline waits until n gateways of tenant are online, while their count
// moves: a simulated fleet comes up one gateway at a time, as fast as the
// machine's load lets it (300 took more than 20 s under make test's).
func waitOnline(t *testing.T, c *cloud, tenant string, n int) {
	t.Helper()
	testenv.AwaitCount(t, fmt.Sprintf("gateways of %s online", tenant), n, func() int {
		var l api.GatewayList
		c.get(t, "/v1/gateways?limit=1&online=true&tenant="+tenant, &l)
		return l.Count
	})
}

func deploymentJSON(rev int, image string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"name": "web", "revision": %d, "image": %q}`, rev, image))
}

func createRollout(t testing.TB, c *cloud, spec api.RolloutSpec) *api.RolloutView {
	t.Helper()
	var v api.RolloutView
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts", spec, &v, nil); err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	return &v
}

func rolloutStatus(t testing.TB, c *cloud, id string) *api.RolloutView {
	t.Helper()
	var v api.RolloutView
	c.get(t, "/v1/rollouts/"+id+"?gateways=true", &v)
	return &v
}

// waitRollout polls until the rollout is no longer active.
func waitRollout(t testing.TB, c *cloud, id string, within time.Duration) *api.RolloutView {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := rolloutStatus(t, c, id)
		if !v.Active && v.Counts[api.GwRollingBack] == 0 {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s still %s/%s after %s: %v", id, v.State, v.Phase, within, v.Counts)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRolloutCanaryThenBatches: the canary goes first, the soak holds the
// rest back, and each batch starts only after the previous one is done.
func TestRolloutCanaryThenBatches(t *testing.T) {
	c := simCloud(t, 100, simfleet.Config{})
	soak := 500 * time.Millisecond
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{Canary: &api.Canary{Count: 5, Soak: api.Duration(soak)}, BatchSize: 20, MaxInFlight: 15}})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 100 {
		t.Fatalf("rollout %s: %v (%s)", v.State, v.Counts, v.Reason)
	}
	batches := map[int][]api.RolloutGateway{}
	for _, g := range v.Gateways {
		batches[g.Batch] = append(batches[g.Batch], g)
		if g.Attempt != 1 {
			t.Errorf("%s dispatched %d times", g.Gateway, g.Attempt)
		}
	}
	if len(batches[0]) != 5 || len(batches) != 6 {
		t.Fatalf("batches: canary %d, %d batches", len(batches[0]), len(batches))
	}
	span := func(gs []api.RolloutGateway) (firstDispatch, lastFinish time.Time) {
		for i, g := range gs {
			if i == 0 || g.DispatchedAt.Before(firstDispatch) {
				firstDispatch = g.DispatchedAt
			}
			if g.FinishedAt.After(lastFinish) {
				lastFinish = g.FinishedAt
			}
		}
		return
	}
	_, canaryDone := span(batches[0])
	for b := 1; b <= 5; b++ {
		first, _ := span(batches[b])
		_, prevDone := span(batches[b-1])
		if first.Before(prevDone) {
			t.Errorf("batch %d dispatched at %s before batch %d finished at %s", b, first, b-1, prevDone)
		}
		if b == 1 && first.Sub(canaryDone) < soak {
			t.Errorf("batch 1 dispatched %s after the canary finished; the soak is %s", first.Sub(canaryDone), soak)
		}
	}
	var g api.Gateway
	c.get(t, "/v1/gateways/sim/sim-77", &g)
	if d := g.Deployments["web"]; d == nil || d.Revision != 1 || d.Phase != "RUNNING" {
		t.Fatalf("sim-77 after the rollout: %+v", d)
	}
}

// TestRolloutAbortAndRollback: a release that fails on half the gateways
// aborts at the threshold, cancels the queued gateways and rolls the
// updated ones back to the revision they ran.
func TestRolloutAbortAndRollback(t *testing.T) {
	c := simCloud(t, 60, simfleet.Config{BadImage: "flaky", BadRate: 0.5})
	b := c.send(t, api.Target{Tenant: "sim", All: true}, &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{
		Spec: &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.example.com/web:1"}}}}, "30s")
	if b.Counts[api.StateSucceeded] != 60 {
		for _, cmd := range b.Commands {
			if !cmd.Final() {
				g := c.gateway(t, "sim", cmd.Gateway)
				t.Logf("unanswered: %+v\ngateway: online=%v session=%d lastSeen=%s deployments=%+v", cmd, g.Online, g.Session, g.LastSeen, g.Deployments["web"])
			}
		}
		t.Fatalf("revision 1: %v", b.Counts)
	}
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(2, "registry.example.com/web:2-flaky"), SkipRegistryCheck: true,
		Strategy: api.Strategy{MaxInFlight: 5},
		Abort:    api.AbortCriteria{FailureKinds: []string{"FAILED"}, ThresholdPercent: 30, MinExecuted: 10, Rollback: true}})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutAborted {
		t.Fatalf("rollout %s, want ABORTED: %v", v.State, v.Counts)
	}
	if v.Counts[api.GwCanceled] == 0 || v.Counts[api.GwRolledBack] == 0 || v.Counts[api.GwSucceeded] != 0 {
		t.Fatalf("after the abort: %v", v.Counts)
	}
	for _, g := range v.Gateways {
		if g.State != api.GwRolledBack {
			continue
		}
		var inv api.Gateway
		c.get(t, "/v1/gateways/sim/"+g.Gateway, &inv)
		if d := inv.Deployments["web"]; d == nil || d.Image != "registry.example.com/web:1" || d.Revision != 3 || d.Phase != "RUNNING" {
			t.Errorf("%s rolled back but runs %+v", g.Gateway, d)
		}
	}
}

// TestRolloutRateLimit: no window of the dispatch times holds more
// gateways than the rate allows (plus the one-gateway burst).
func TestRolloutRateLimit(t *testing.T) {
	c := simCloud(t, 30, simfleet.Config{})
	const perMinute = 600.0
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: perMinute}})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded {
		t.Fatalf("rollout %s: %v", v.State, v.Counts)
	}
	var at []time.Time
	for _, g := range v.Gateways {
		at = append(at, g.DispatchedAt)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	for i := range at {
		for j := i + 1; j < len(at); j++ {
			allowed := 1 + int(at[j].Sub(at[i]).Seconds()*perMinute/60+0.2) // +0.2: the scheduler's 100 ms tick
			if j-i+1 > allowed+1 {
				t.Fatalf("%d dispatches within %s; the rate allows %d", j-i+1, at[j].Sub(at[i]), allowed)
			}
		}
	}
}

// TestRolloutPauseResumeAndOffline: a paused rollout dispatches nothing;
// an offline gateway stays QUEUED and is updated when it comes back.
func TestRolloutPauseResumeAndOffline(t *testing.T) {
	c := simCloud(t, 20, simfleet.Config{})
	lateDir := t.TempDir()
	late, err := serve.StartFleet(context.Background(), c.Controller, c.BrokerURL, lateDir, topic.Default(),
		simfleet.Config{Count: 1, Tenant: "sim", Prefix: "late-", PullTime: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitOnline(t, c, "sim", 21)
	late.Close()
	testenv.Eventually(t, "late-1 offline", func() bool { g := c.gateway(t, "sim", "late-1"); return g != nil && !g.Online })

	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 300}})
	testenv.Eventually(t, "a few dispatched", func() bool { return rolloutStatus(t, c, v.ID).Notified >= 3 })
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/pause", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	paused := rolloutStatus(t, c, v.ID)
	// Wait until what was in flight is done, then check nothing new goes out.
	testenv.Eventually(t, "in-flight gateways done while paused", func() bool {
		return rolloutStatus(t, c, v.ID).Counts[api.GwInProgress] == 0
	})
	settled := rolloutStatus(t, c, v.ID)
	ticks := c.Controller.RolloutTicks()
	testenv.Eventually(t, "three scheduler ticks", func() bool { return c.Controller.RolloutTicks() >= ticks+3 }) // nothing may be dispatched
	if now := rolloutStatus(t, c, v.ID); now.Notified != settled.Notified || now.State != api.RolloutPaused {
		t.Fatalf("paused at %d dispatched, then %d (%s)", paused.Notified, now.Notified, now.State)
	}
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/resume", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "every online gateway updated", func() bool { return rolloutStatus(t, c, v.ID).Counts[api.GwSucceeded] == 20 })
	if st := rolloutStatus(t, c, v.ID); st.State != api.RolloutRunning || st.Counts[api.GwQueued] != 1 {
		t.Fatalf("with late-1 offline: %s %v", st.State, st.Counts)
	}
	back, err := serve.StartFleet(context.Background(), c.Controller, c.BrokerURL, lateDir, topic.Default(),
		simfleet.Config{Count: 1, Tenant: "sim", Prefix: "late-", PullTime: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 21 {
		t.Fatalf("after late-1 came back: %s %v", v.State, v.Counts)
	}
}

// TestRolloutSurvivesRestart: cloud-sim stopped in the middle of a
// rate-limited rollout and started again completes it, dispatching no
// gateway twice.
func TestRolloutSurvivesRestart(t *testing.T) {
	c := simCloud(t, 30, simfleet.Config{})
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 600}})
	testenv.Eventually(t, "a third dispatched", func() bool { return rolloutStatus(t, c, v.ID).Notified >= 10 })
	c.restart(t)
	waitOnline(t, c, "sim", 30)
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 30 {
		t.Fatalf("after restart: %s %v (%s)", v.State, v.Counts, v.Reason)
	}
	for _, g := range v.Gateways {
		if g.Attempt != 1 {
			t.Errorf("%s dispatched %d times", g.Gateway, g.Attempt)
		}
	}
}

// TestRolloutTimeoutAndSupersede: a gateway that never reports the new
// revision times out; a new rollout of the same deployment supersedes
// the old one.
func TestRolloutTimeoutAndSupersede(t *testing.T) {
	c := simCloud(t, 10, simfleet.Config{})
	// Two more gateways whose pulls take 30 s: they cannot report the
	// new revision within a 1 s gateway timeout.
	slow, err := serve.StartFleet(context.Background(), c.Controller, c.BrokerURL, t.TempDir(), topic.Default(),
		simfleet.Config{Count: 2, Tenant: "sim", Prefix: "slow-", PullTime: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	waitOnline(t, c, "sim", 12)
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{Selector: "tier=main"},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{GatewayTimeout: api.Duration(time.Second)}})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutFailed || v.Counts[api.GwTimedOut] != 2 || v.Counts[api.GwSucceeded] != 10 {
		t.Fatalf("rollout %s: %v", v.State, v.Counts)
	}

	first := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(2, "registry.example.com/web:2"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 6}})
	var fast []string
	for i := 1; i <= 10; i++ {
		fast = append(fast, fmt.Sprintf("sim-%d", i))
	}
	second := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{Gateways: fast},
		Deployment: deploymentJSON(3, "registry.example.com/web:3"), SkipRegistryCheck: true})
	if st := rolloutStatus(t, c, first.ID); st.State != api.RolloutSuperseded || st.Counts[api.GwQueued] != 0 {
		t.Fatalf("first rollout after the second: %s %v", st.State, st.Counts)
	}
	if v := waitRollout(t, c, second.ID, time.Minute); v.State != api.RolloutSucceeded {
		t.Fatalf("second rollout: %s %v", v.State, v.Counts)
	}
}

// TestRolloutTwoReplicas: a second controller replica on the first one's
// broker and NATS takes dispatches from the shared work queue, takes a
// rollout while it follows (handing it to the scheduling replica), and
// finishes the rollout when the scheduling replica stops.
func TestRolloutTwoReplicas(t *testing.T) {
	a := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	a.cfg = serve.Config{DataDir: a.dataDir, MQTTListen: a.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), ControllerID: "replica-a", ControllerPassword: "replica-password",
		Sim: simfleet.Config{Count: 40, Tenant: "sim", PullTime: 10 * time.Millisecond}}
	a.start(t)
	t.Cleanup(func() { a.Close() })
	waitOnline(t, a, "sim", 40)
	bs, err := serve.Start(context.Background(), serve.Config{DataDir: t.TempDir(), BrokerURL: a.BrokerURL.String(),
		BrokerUsername: "controller", BrokerPassword: "replica-password", NATSURL: a.NATSURL, NATSCreds: a.NATSCreds, HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), ControllerID: "replica-b", SecretsKey: filepath.Join(a.dataDir, "controller.key")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bs.Close() })
	b := &cloud{Server: bs, api: &apiclient.Client{Base: bs.APIURL, Token: bs.APIToken}}
	waitOnline(t, b, "sim", 40)
	if !a.Controller.Leader() || b.Controller.Leader() {
		t.Fatalf("leaders: a %v, b %v", a.Controller.Leader(), b.Controller.Leader())
	}
	spec := api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 600}}
	v := createRollout(t, b, spec) // on the follower
	if _, ok := a.Controller.RolloutStatus(v.ID, false); !ok {
		t.Fatalf("rollout %s created on the follower is not on the scheduling replica", v.ID)
	}
	testenv.Eventually(t, "half dispatched", func() bool { return rolloutStatus(t, a, v.ID).Notified >= 20 })
	if err := a.Controller.Close(); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "replica b takes over", b.Controller.Leader)
	v = waitRollout(t, b, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 40 {
		t.Fatalf("rollout on replica b: %s %v", v.State, v.Counts)
	}
	for _, g := range v.Gateways {
		if g.Attempt != 1 {
			t.Errorf("%s dispatched %d times", g.Gateway, g.Attempt)
		}
	}
	if a.Controller.Worked() == 0 || b.Controller.Worked() == 0 {
		t.Errorf("work items sent by replica a: %d, by replica b: %d; both should have taken work", a.Controller.Worked(), b.Controller.Worked())
	}
}

// TestRolloutExponential: the rate holds the base rate until stepEvery
// gateways are notified, then speeds up.
func TestRolloutExponential(t *testing.T) {
	c := simCloud(t, 10, simfleet.Config{})
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{Exponential: &api.Exponential{BaseRate: 60, IncrementFactor: 100, StepEvery: 2, StepOn: "notified"}}})
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != 10 {
		t.Fatalf("rollout %s: %v", v.State, v.Counts)
	}
	var at []time.Time
	for _, g := range v.Gateways {
		at = append(at, g.DispatchedAt)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	// 60/min until 2 are notified: the second waits about a second.
	if gap := at[1].Sub(at[0]); gap < 800*time.Millisecond {
		t.Errorf("second dispatch %s after the first; the base rate is 1/s", gap)
	}
	// Then 6,000/min: the other eight go out far faster than the 7 s the
	// base rate would take.
	if rest := at[9].Sub(at[2]); rest > 4*time.Second {
		t.Errorf("dispatches 3-10 took %s; at the stepped-up rate they take well under a second", rest)
	}
}

// TestRolloutIncludeNew: a gateway that comes to match the targets while
// the rollout runs joins it.
func TestRolloutIncludeNew(t *testing.T) {
	c := simCloud(t, 10, simfleet.Config{})
	v := createRollout(t, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{Selector: "simulated=true", IncludeNew: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true,
		Strategy: api.Strategy{RatePerMinute: 300}})
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/pause", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	newcomer, err := serve.StartFleet(context.Background(), c.Controller, c.BrokerURL, t.TempDir(), topic.Default(),
		simfleet.Config{Count: 1, Tenant: "sim", Prefix: "new-", PullTime: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer newcomer.Close()
	waitOnline(t, c, "sim", 11)
	if err := c.api.Do(context.Background(), "POST", "/v1/rollouts/"+v.ID+"/resume", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	v = waitRollout(t, c, v.ID, time.Minute)
	if v.State != api.RolloutSucceeded || v.Total != 11 || v.Counts[api.GwSucceeded] != 11 {
		t.Fatalf("rollout %s: %d gateways %v", v.State, v.Total, v.Counts)
	}
}
