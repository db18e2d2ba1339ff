package rollout

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// fakeFleet is the inventory Step reads: gateways by id, all of tenant acme.
type fakeFleet struct {
	gws   map[string]inventory.Observation
	specs map[string]json.RawMessage // by gateway
}

func (f fakeFleet) Observe(key, deployment string) inventory.Observation {
	for id, o := range f.gws {
		if state.Key("acme", id) == key {
			if o.Deployment.Name != deployment {
				o.Deployment = inventory.Deployment{}
			}
			return o
		}
	}
	return inventory.Observation{}
}

func (f fakeFleet) IDs(inventory.Filter) []string {
	var ids []string
	for id := range f.gws {
		ids = append(ids, id)
	}
	return ids
}

func (f fakeFleet) LastSpec(_, gw, _ string) json.RawMessage { return f.specs[gw] }

// fakeCommands are the outcomes of the commands Step dispatched, by id.
type fakeCommands map[string]dispatch.State

func (c fakeCommands) Outcome(id string) (dispatch.State, string, string, bool) {
	st, ok := c[id]
	return st, "", "", ok
}

func online() inventory.Observation { return inventory.Observation{Known: true, Online: true} }

func running(rev int64, h inventory.Health) inventory.Observation {
	return inventory.Observation{Known: true, Online: true, Deployment: inventory.Deployment{Name: "web", Revision: rev, Phase: inventory.Running, Health: h}}
}

func phase(rev int64, p inventory.Phase) inventory.Observation {
	return inventory.Observation{Known: true, Online: true, Deployment: inventory.Deployment{Name: "web", Revision: rev, Phase: p}}
}

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// newRun plans a rollout of web revision 2 to gws (all online) with
// strategy st and abort criteria a; states sets gateways' states (those
// IN_PROGRESS were dispatched at t0 under their deploy command id).
func newRun(gws []string, st Strategy, a AbortCriteria, health bool, states map[string]GatewayState) *Run {
	dep := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.example.com/web:2"}
	if health {
		dep.HealthCheck = &fleetv1.HealthCheck{Test: []string{"CMD", "true"}}
	}
	r := &Rollout{ID: "r-1", Spec: Spec{Tenant: "acme", Targets: Targets{All: true}, Strategy: st, Abort: a,
		Deployment: json.RawMessage(`{"name":"web","revision":2,"image":"registry.example.com/web:2"}`)},
		State: Running, Phase: PhaseBatches, CreatedAt: t0, Batch: 1}
	var targets []Target
	for _, id := range gws {
		targets = append(targets, Target{ID: id, Online: true})
	}
	run := plan(r, dep, targets)
	for id, s := range states {
		g := run.gws[id]
		g.State = s
		if s != GatewayQueued {
			g.Attempt, g.DispatchedAt = 1, t0
			g.CommandID = CommandID("r-1", id, 1, "deploy")
		}
	}
	return run
}

func TestStep(t *testing.T) {
	three := []string{"gw-1", "gw-2", "gw-3"}
	tests := []struct {
		name      string
		run       *Run
		fleet     map[string]inventory.Observation
		cmds      fakeCommands
		now       time.Time
		paused    bool
		want      []string // gateways dispatched, sorted
		wantState map[string]GatewayState
		wantRun   State
	}{
		{"dispatches the online queued gateways", newRun(three, Strategy{}, AbortCriteria{}, false, nil),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": {Known: true}}, nil, t0, false,
			[]string{"gw-1", "gw-2"}, map[string]GatewayState{"gw-1": GatewayInProgress, "gw-3": GatewayQueued}, Running},
		{"within maxInFlight", newRun(three, Strategy{MaxInFlight: 2}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": online()}, nil, t0, false,
			[]string{"gw-2"}, map[string]GatewayState{"gw-3": GatewayQueued}, Running},
		{"the canary first", newRun(three, Strategy{Canary: &Canary{Count: 1}}, AbortCriteria{}, false, nil),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": online()}, nil, t0, false,
			[]string{"gw-1"}, map[string]GatewayState{"gw-2": GatewayQueued}, Running},
		{"paused dispatches nothing", newRun(three, Strategy{}, AbortCriteria{}, false, nil),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": online()}, nil, t0, true,
			nil, map[string]GatewayState{"gw-1": GatewayQueued}, Paused},
		{"RUNNING the revision succeeds; all done ends the rollout", newRun([]string{"gw-1"}, Strategy{}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(2, inventory.NoHealthCheck)}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewaySucceeded}, Succeeded},
		{"RUNNING an older revision is not success", newRun([]string{"gw-1"}, Strategy{}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(1, inventory.NoHealthCheck)}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewayInProgress}, Running},
		{"a health check must pass", newRun([]string{"gw-1"}, Strategy{}, AbortCriteria{}, true, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(2, inventory.Health(fleetv1.HealthCheck_STARTING))}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewayInProgress}, Running},
		{"healthy passes", newRun([]string{"gw-1"}, Strategy{}, AbortCriteria{}, true, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(2, inventory.Healthy)}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewaySucceeded}, Succeeded},
		{"a FAILED deployment fails the gateway", newRun([]string{"gw-1", "gw-2"}, Strategy{}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": phase(2, inventory.Failed), "gw-2": {Known: true}}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewayFailed, "gw-2": GatewayQueued}, Running},
		{"a rejected command rejects the gateway", newRun([]string{"gw-1", "gw-2"}, Strategy{}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": {Known: true}}, fakeCommands{CommandID("r-1", "gw-1", 1, "deploy"): dispatch.Rejected}, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewayRejected}, Running},
		{"no RUNNING within the timeout", newRun([]string{"gw-1", "gw-2"}, Strategy{GatewayTimeout: Duration(time.Minute)}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": online(), "gw-2": {Known: true}}, nil, t0.Add(2 * time.Minute), false,
			nil, map[string]GatewayState{"gw-1": GatewayTimedOut}, Running},
		{"the last one failing ends the rollout FAILED", newRun([]string{"gw-1", "gw-2"}, Strategy{}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewaySucceeded, "gw-2": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(2, 0), "gw-2": phase(2, inventory.Failed)}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-2": GatewayFailed}, Failed},
		{"a failed canary aborts and cancels the queued", newRun(three, Strategy{Canary: &Canary{Count: 1}}, AbortCriteria{}, false, map[string]GatewayState{"gw-1": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": phase(2, inventory.Failed), "gw-2": online(), "gw-3": online()}, nil, t0.Add(time.Second), false,
			nil, map[string]GatewayState{"gw-1": GatewayFailed, "gw-2": GatewayCanceled}, Aborted},
		{"the threshold aborts and rolls back", newRun(three, Strategy{}, AbortCriteria{ThresholdPercent: 50, Rollback: true}, false,
			map[string]GatewayState{"gw-1": GatewaySucceeded, "gw-2": GatewayInProgress, "gw-3": GatewayInProgress}),
			map[string]inventory.Observation{"gw-1": running(2, 0), "gw-2": phase(2, inventory.Failed), "gw-3": phase(2, inventory.Failed)}, nil, t0.Add(time.Second), false,
			[]string{"gw-1"}, map[string]GatewayState{"gw-1": GatewayRollingBack, "gw-2": GatewayFailed}, Aborted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.paused {
				tt.run.R.State = Paused
			}
			for id := range tt.run.gws {
				tt.run.gws[id].PrevSpec = json.RawMessage(`{"name":"web","revision":1,"image":"registry.example.com/web:1"}`)
			}
			out := Step(tt.run, fakeFleet{gws: tt.fleet}, tt.cmds, tt.now)
			var got []string
			for _, d := range out {
				got = append(got, d.Gateway)
			}
			sort.Strings(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("dispatched %v, want %v", got, tt.want)
			}
			for id, want := range tt.wantState {
				if g, _ := tt.run.Gateway(id); g.State != want {
					t.Errorf("%s: got %s, want %s", id, g.State, want)
				}
			}
			if tt.run.R.State != tt.wantRun {
				t.Errorf("rollout: got %s, want %s", tt.run.R.State, tt.wantRun)
			}
		})
	}
}

// TestStepRate: a rate of 60 a minute dispatches one gateway a second,
// with no burst after a pause in ticks (the allowance is capped at one
// tick's worth plus one).
func TestStepRate(t *testing.T) {
	gws := []string{"gw-1", "gw-2", "gw-3", "gw-4"}
	run := newRun(gws, Strategy{RatePerMinute: 60}, AbortCriteria{}, false, nil)
	fleet := fakeFleet{gws: map[string]inventory.Observation{}}
	for _, id := range gws {
		fleet.gws[id] = online()
	}
	for i, want := range []int{1, 0, 1, 1} {
		now := t0.Add([]time.Duration{0, 500 * time.Millisecond, time.Second, 3 * time.Second}[i])
		if got := len(Step(run, fleet, fakeCommands{}, now)); got != want {
			t.Errorf("step %d at %s: dispatched %d, want %d", i, now.Sub(t0), got, want)
		}
	}
}

// TestStepRateNoBurst: at 600 a minute, no span of dispatch times (as
// recorded in DispatchedAt) holds more than one dispatch above what the
// rate allows over it, whether the scheduler ticks on time, early and late,
// stalls, or waits for gateways to come online; and ticks that come early
// and late lose no rate. Before maxTokens the allowance grew to a second's
// worth (10) in any gap and was spent at once: 10 dispatches at one instant.
func TestStepRateNoBurst(t *testing.T) {
	const perMinute = 600.0
	every := func(from, to, step time.Duration) []time.Duration {
		var at []time.Duration
		for d := from; d <= to; d += step {
			at = append(at, d)
		}
		return at
	}
	jitter := func(to time.Duration) []time.Duration {
		at := []time.Duration{0}
		for i := 1; at[len(at)-1] < to; i++ {
			at = append(at, at[len(at)-1]+[]time.Duration{95 * time.Millisecond, 105 * time.Millisecond}[i%2])
		}
		return at
	}
	tests := []struct {
		name          string
		at            []time.Duration // when the scheduler steps
		offlineBefore time.Duration   // the gateways come online then
		wantTotal     int
	}{
		{"ticks on time", every(0, 2*time.Second, tick), 0, 21},
		{"ticks early and late keep the rate", jitter(2 * time.Second), 0, 21},
		{"a stalled scheduler", []time.Duration{0, 100 * time.Millisecond, 1600 * time.Millisecond, 1700 * time.Millisecond, 1800 * time.Millisecond}, 0, 6},
		{"gateways online after a while", every(0, 3*time.Second, tick), 2 * time.Second, 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gws []string
			for i := range 40 {
				gws = append(gws, fmt.Sprintf("gw-%02d", i))
			}
			run := newRun(gws, Strategy{RatePerMinute: perMinute}, AbortCriteria{}, false, nil)
			var dispatched []time.Time
			for _, d := range tt.at {
				fleet := fakeFleet{gws: map[string]inventory.Observation{}}
				for _, id := range gws {
					fleet.gws[id] = inventory.Observation{Known: true, Online: d >= tt.offlineBefore}
				}
				for _, out := range Step(run, fleet, fakeCommands{}, t0.Add(d)) {
					dispatched = append(dispatched, run.gws[out.Gateway].DispatchedAt)
				}
			}
			if len(dispatched) != tt.wantTotal {
				t.Errorf("dispatched %d, want %d", len(dispatched), tt.wantTotal)
			}
			for i := range dispatched {
				for j := i + 1; j < len(dispatched); j++ {
					span := dispatched[j].Sub(dispatched[i])
					if n, allowed := j-i+1, 1+int(span.Seconds()*perMinute/60); n > allowed+1 {
						t.Fatalf("%d dispatches within %s; the rate allows %d", n, span, allowed)
					}
				}
			}
		})
	}
}
