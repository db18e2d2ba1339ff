package rollout

import (
	"context"
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/state"
)

// prefetchRun plans a rollout with a prefetch phase; states sets
// gateways' prefetch states (those IN_PROGRESS were dispatched at t0).
func prefetchRun(gws []string, st Strategy, p Prefetch, states map[string]PrefetchState) *Run {
	st.Prefetch = &p
	run := newRun(gws, st, AbortCriteria{}, false, nil)
	for id, s := range states {
		pf := run.gws[id].Prefetch
		pf.State = s
		if s != PrefetchQueued {
			pf.CommandID, pf.DispatchedAt = CommandID("r-1", id, 0, "prefetch"), t0
		}
	}
	return run
}

func allOnline(ids ...string) map[string]inventory.Observation {
	out := map[string]inventory.Observation{}
	for _, id := range ids {
		out[id] = online()
	}
	return out
}

func pfID(gw string) string     { return CommandID("r-1", gw, 0, "prefetch") }
func deployID(gw string) string { return CommandID("r-1", gw, 1, "deploy") }

// TestStepPrefetch: the prefetch phase sends prefetch to every target
// (canaries too) within the rollout's bounds, records each outcome, and
// hands over to the canary or the batches when no online gateway waits
// for one, at its timeout, or aborts under its minimum.
func TestStepPrefetch(t *testing.T) {
	three := []string{"gw-1", "gw-2", "gw-3"}
	q, ip, ok, fail := PrefetchQueued, PrefetchInProgress, PrefetchSucceeded, PrefetchFailed
	tests := []struct {
		name      string
		run       *Run
		fleet     map[string]inventory.Observation
		cmds      fakeCommands
		now       time.Time
		paused    bool
		want      []string // command ids dispatched, sorted
		wantPf    map[string]PrefetchState
		wantState map[string]GatewayState
		wantPhase Phase
		wantRun   State
	}{
		{name: "prefetches the online gateways first, deploys nothing",
			run:   prefetchRun(three, Strategy{Canary: &Canary{Count: 1}}, Prefetch{}, nil),
			fleet: map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": {Known: true}}, now: t0,
			want:   sorted(pfID("gw-1"), pfID("gw-2")),
			wantPf: map[string]PrefetchState{"gw-1": ip, "gw-2": ip, "gw-3": q}, wantState: map[string]GatewayState{"gw-1": GatewayQueued, "gw-2": GatewayQueued},
			wantPhase: PhasePrefetch, wantRun: Running},
		{name: "within maxInFlight", run: prefetchRun(three, Strategy{MaxInFlight: 2}, Prefetch{}, map[string]PrefetchState{"gw-1": ip}),
			fleet: allOnline(three...), now: t0, want: []string{pfID("gw-2")},
			wantPf: map[string]PrefetchState{"gw-3": q}, wantPhase: PhasePrefetch, wantRun: Running},
		{name: "paused sends nothing", run: prefetchRun(three, Strategy{}, Prefetch{}, nil), fleet: allOnline(three...), now: t0, paused: true,
			wantPf: map[string]PrefetchState{"gw-1": q}, wantPhase: PhasePrefetch, wantRun: Paused},
		{name: "outcomes are recorded; the phase waits for the last",
			run:   prefetchRun(three, Strategy{}, Prefetch{}, map[string]PrefetchState{"gw-1": ip, "gw-2": ip, "gw-3": ip}),
			fleet: allOnline(three...), cmds: fakeCommands{pfID("gw-1"): dispatch.Succeeded, pfID("gw-2"): dispatch.Failed, pfID("gw-3"): dispatch.Accepted},
			now: t0.Add(time.Second), wantPf: map[string]PrefetchState{"gw-1": ok, "gw-2": fail, "gw-3": ip}, wantPhase: PhasePrefetch, wantRun: Running},
		{name: "all done: the batches start, a failed prefetch deploys too",
			run:   prefetchRun(three, Strategy{}, Prefetch{}, map[string]PrefetchState{"gw-1": ok, "gw-2": fail, "gw-3": ip}),
			fleet: allOnline(three...), cmds: fakeCommands{pfID("gw-3"): dispatch.Succeeded}, now: t0.Add(time.Second),
			want:   sorted(deployID("gw-1"), deployID("gw-2"), deployID("gw-3")),
			wantPf: map[string]PrefetchState{"gw-3": ok}, wantState: map[string]GatewayState{"gw-2": GatewayInProgress},
			wantPhase: PhaseBatches, wantRun: Running},
		{name: "all done: the canary starts",
			run:   prefetchRun(three, Strategy{Canary: &Canary{Count: 1}}, Prefetch{}, map[string]PrefetchState{"gw-1": ok, "gw-2": ok, "gw-3": ok}),
			fleet: allOnline(three...), now: t0.Add(time.Second), want: []string{deployID("gw-1")},
			wantState: map[string]GatewayState{"gw-2": GatewayQueued}, wantPhase: PhaseCanary, wantRun: Running},
		{name: "offline gateways do not hold the phase; they are skipped",
			run:   prefetchRun(three, Strategy{}, Prefetch{}, map[string]PrefetchState{"gw-1": ok, "gw-2": ok}),
			fleet: map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": {Known: true}}, now: t0.Add(time.Second),
			want:   sorted(deployID("gw-1"), deployID("gw-2")),
			wantPf: map[string]PrefetchState{"gw-3": PrefetchSkipped}, wantState: map[string]GatewayState{"gw-3": GatewayQueued},
			wantPhase: PhaseBatches, wantRun: Running},
		{name: "the timeout ends the phase; prefetches still running time out",
			run:   prefetchRun(three, Strategy{}, Prefetch{Timeout: Duration(time.Minute)}, map[string]PrefetchState{"gw-1": ok, "gw-2": ip}),
			fleet: allOnline(three...), now: t0.Add(2 * time.Minute),
			want:   sorted(deployID("gw-1"), deployID("gw-2"), deployID("gw-3")),
			wantPf: map[string]PrefetchState{"gw-2": PrefetchTimedOut, "gw-3": PrefetchSkipped}, wantPhase: PhaseBatches, wantRun: Running},
		{name: "past the rollout's deadline nothing is prefetched",
			run:   prefetchRun(three, Strategy{Deadline: Duration(time.Minute)}, Prefetch{Timeout: Duration(time.Hour)}, map[string]PrefetchState{"gw-1": ok}),
			fleet: map[string]inventory.Observation{"gw-1": online(), "gw-2": online(), "gw-3": {Known: true}}, now: t0.Add(2 * time.Minute),
			wantPf: map[string]PrefetchState{"gw-2": PrefetchSkipped}, wantState: map[string]GatewayState{"gw-1": GatewayTimedOut, "gw-2": GatewayTimedOut},
			wantPhase: PhaseDone, wantRun: Failed},
		{name: "under minPercent the rollout aborts, nothing deployed",
			run:   prefetchRun(three, Strategy{}, Prefetch{MinPercent: 90}, map[string]PrefetchState{"gw-1": ok, "gw-2": ok, "gw-3": ip}),
			fleet: allOnline(three...), cmds: fakeCommands{pfID("gw-3"): dispatch.Failed}, now: t0.Add(time.Second),
			wantPf: map[string]PrefetchState{"gw-3": fail}, wantState: map[string]GatewayState{"gw-1": GatewayCanceled, "gw-3": GatewayCanceled},
			wantPhase: PhaseDone, wantRun: Aborted},
		{name: "at minPercent it goes on",
			run:   prefetchRun(three, Strategy{}, Prefetch{MinPercent: 66}, map[string]PrefetchState{"gw-1": ok, "gw-2": ok, "gw-3": fail}),
			fleet: allOnline(three...), now: t0.Add(time.Second), want: sorted(deployID("gw-1"), deployID("gw-2"), deployID("gw-3")),
			wantPhase: PhaseBatches, wantRun: Running},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.paused {
				tt.run.R.State = Paused
			}
			out := Step(tt.run, fakeFleet{gws: tt.fleet}, tt.cmds, tt.now)
			var got []string
			for _, d := range out {
				got = append(got, d.CommandID)
			}
			sort.Strings(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("dispatched %v, want %v", got, tt.want)
			}
			for id, want := range tt.wantPf {
				if g, _ := tt.run.Gateway(id); g.Prefetch == nil || g.Prefetch.State != want {
					t.Errorf("%s: prefetch %+v, want %s", id, g.Prefetch, want)
				}
			}
			for id, want := range tt.wantState {
				if g, _ := tt.run.Gateway(id); g.State != want {
					t.Errorf("%s: got %s, want %s", id, g.State, want)
				}
			}
			if r := tt.run.R; r.State != tt.wantRun || r.Phase != tt.wantPhase {
				t.Errorf("rollout: got %s %s, want %s %s (%s)", r.State, r.Phase, tt.wantRun, tt.wantPhase, r.Reason)
			}
		})
	}
}

func sorted(ids ...string) []string { sort.Strings(ids); return ids }

// TestStepPrefetchRate: prefetches are dispatched at the rollout's rate.
func TestStepPrefetchRate(t *testing.T) {
	gws := []string{"gw-1", "gw-2", "gw-3", "gw-4"}
	run := prefetchRun(gws, Strategy{RatePerMinute: 60}, Prefetch{}, nil)
	for i, want := range []int{1, 0, 1, 1} {
		now := t0.Add([]time.Duration{0, 500 * time.Millisecond, time.Second, 3 * time.Second}[i])
		if got := len(Step(run, fakeFleet{gws: allOnline(gws...)}, fakeCommands{}, now)); got != want {
			t.Errorf("step %d at %s: dispatched %d, want %d", i, now.Sub(t0), got, want)
		}
	}
}

// TestPrefetchCancel: canceling during the phase skips the prefetches not
// sent and cancels every gateway; the summary counts prefetch states.
func TestPrefetchCancel(t *testing.T) {
	run := prefetchRun([]string{"gw-1", "gw-2"}, Strategy{}, Prefetch{}, map[string]PrefetchState{"gw-1": PrefetchSucceeded})
	run.end(Canceled, "canceled by the operator", t0)
	v := run.summary(t0, false)
	if want := map[PrefetchState]int{PrefetchSucceeded: 1, PrefetchSkipped: 1}; !reflect.DeepEqual(v.PrefetchCounts, want) {
		t.Errorf("prefetch counts %v, want %v", v.PrefetchCounts, want)
	}
	if v.Counts[GatewayCanceled] != 2 {
		t.Errorf("counts %v, want 2 CANCELED", v.Counts)
	}
	if v := newRun([]string{"gw-1"}, Strategy{}, AbortCriteria{}, false, nil).summary(t0, false); v.PrefetchCounts != nil {
		t.Errorf("a rollout without prefetch counts %v", v.PrefetchCounts)
	}
}

// TestStoredPrefetch: the phase and each gateway's prefetch are stored
// and restored; a rollout without one is stored as before.
func TestStoredPrefetch(t *testing.T) {
	run := prefetchRun([]string{"gw-1"}, Strategy{}, Prefetch{MinPercent: 90, Timeout: Duration(time.Hour)}, map[string]PrefetchState{"gw-1": PrefetchFailed})
	run.gws["gw-1"].Prefetch.Code = "NO_SPACE"
	raw, _ := json.Marshal(run.R.stored())
	var s state.Rollout
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if back := restoreRollout(&s); !reflect.DeepEqual(back, run.R) {
		t.Errorf("restored %+v, want %+v", back, run.R)
	}
	if s.Phase != "PREFETCHING" || s.Spec.Strategy.Prefetch == nil || s.Spec.Strategy.Prefetch.MinPercent != 90 {
		t.Errorf("stored %s", raw)
	}
	raw, _ = json.Marshal(run.gws["gw-1"].stored())
	want := `{"rollout":"r-1","gateway":"gw-1","state":"QUEUED","batch":1,"attempt":0,"prefetch":{"state":"FAILED","commandId":"` + pfID("gw-1") +
		`","dispatchedAt":"2026-11-30T12:00:00Z","code":"NO_SPACE"}}`
	if string(raw) != want {
		t.Errorf("stored gateway\n got %s\nwant %s", raw, want)
	}
	var sg state.RolloutGateway
	if err := json.Unmarshal(raw, &sg); err != nil {
		t.Fatal(err)
	}
	if back := restoreGateway(&sg); !reflect.DeepEqual(back, run.gws["gw-1"]) {
		t.Errorf("restored %+v, want %+v", back, run.gws["gw-1"])
	}
}

// TestResolvePrefetch: a prefetch item resolves to the stored spec, as a
// prefetch, only under the command id the scheduler dispatched.
func TestResolvePrefetch(t *testing.T) {
	s := newScheduler(t)
	run := prefetchRun([]string{"gw-1", "gw-2"}, Strategy{}, Prefetch{}, map[string]PrefetchState{"gw-1": PrefetchInProgress})
	s.runs["r-1"] = run
	if err := s.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	rs := NewResolver(s.cfg.Store)
	w, err := rs.Resolve(context.Background(), Dispatch{"r-1", "gw-1", pfID("gw-1")})
	if err != nil || !w.Prefetch || w.Spec.GetImage() != "registry.example.com/web:2" || w.Tenant != "acme" {
		t.Errorf("Resolve = %+v, %v; want the prefetch of registry.example.com/web:2", w, err)
	}
	if w, err := rs.Resolve(context.Background(), Dispatch{"r-1", "gw-2", pfID("gw-2")}); err == nil {
		t.Errorf("a prefetch not dispatched resolved: %+v", w)
	}
}
