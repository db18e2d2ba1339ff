package rollout

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Inventory is what Step reads of the fleet.
type Inventory interface {
	// Observe reads a gateway, by state.Key(tenant, id), and one of its
	// deployments.
	Observe(key, deployment string) inventory.Observation
	// IDs lists the gateways f selects (for targets' IncludeNew).
	IDs(f inventory.Filter) []string
	// LastSpec is the spec last deployed to a gateway's deployment
	// (protojson), nil when none.
	LastSpec(tenant, gateway, deployment string) json.RawMessage
}

// Commands is what Step reads of the commands it dispatched.
type Commands interface {
	Outcome(id string) (st dispatch.State, code, msg string, ok bool)
}

// Dispatch is one deploy (or rollback) Step decided to send: queued in the
// work queue by the scheduler, resolved against the store (Resolve) and
// sent by a worker under CommandID. It carries no tenant and no spec: a
// worker takes both from the stored rollout.
type Dispatch struct {
	Rollout   string `json:"rollout"`
	Gateway   string `json:"gateway"`
	CommandID string `json:"commandId"`
}

// Step observes the run's gateways, applies the abort criteria and the
// phases, and returns what to dispatch now. It does no I/O and takes no
// lock: the scheduler holds its own while it steps a run; what changed is
// in run.TakeChanges.
func Step(run *Run, inv Inventory, cmds Commands, now time.Time) []Dispatch {
	s := &stepper{run: run, inv: inv, cmds: cmds, now: now}
	if run.R.State == Running && run.R.Spec.Targets.IncludeNew {
		s.includeNew()
	}
	s.observe()
	if !run.R.State.Active() {
		return nil
	}
	tally := s.tally()
	if reason := s.abortReason(tally); reason != "" {
		return s.abort(reason)
	}
	tally.queued -= s.expireQueued()
	if s.advance(tally) {
		return nil
	}
	if run.R.Phase == PhasePrefetch {
		return s.dispatchPrefetch(tally.prefetching)
	}
	return s.dispatch(tally.inflight)
}

// stepper is one Step of one run.
type stepper struct {
	run  *Run
	inv  Inventory
	cmds Commands
	now  time.Time
}

func (s *stepper) set(g *Gateway, st GatewayState, code, msg string) {
	g.State, g.Code, g.Message = st, code, msg
	if st.Final() {
		g.FinishedAt = s.now
	}
	s.run.dirty[g.Gateway] = struct{}{}
	s.run.note(changes.Change{Kind: "rollout.gateway", At: s.now, Tenant: s.run.R.Spec.Tenant, Gateway: g.Gateway, Batch: s.run.R.ID, State: string(st), Message: msg})
}

func (s *stepper) timeout() time.Duration {
	if t := time.Duration(s.run.R.Spec.Strategy.GatewayTimeout); t > 0 {
		return t
	}
	return 10 * time.Minute
}

// observe moves gateways in progress, rolling back, or soaking as canaries
// according to their commands' outcomes and deployments' statuses.
func (s *stepper) observe() {
	run := s.run
	for _, id := range run.order {
		g := run.gws[id]
		switch g.State {
		case GatewayInProgress:
			s.observeDeploy(g)
		case GatewayRollingBack:
			s.observeRollback(g)
		case GatewaySucceeded:
			s.observeSoak(g)
		}
		if g.Prefetch != nil && g.Prefetch.State == PrefetchInProgress {
			s.observePrefetch(g)
		}
	}
}

func (s *stepper) deployment(g *Gateway) (inventory.Deployment, bool) {
	o := s.inv.Observe(g.invKey(s.run.R.Spec.Tenant), s.run.Spec.GetName())
	return o.Deployment, o.Deployment.Name != ""
}

// wantHealthy: the spec has a health check, so RUNNING is not enough.
func wantHealthy(spec *fleetv1.DeploymentSpec) bool {
	test := spec.GetHealthCheck().GetTest()
	return len(test) > 0 && test[0] != "NONE"
}

func (s *stepper) observeDeploy(g *Gateway) {
	if st, code, msg, ok := s.cmds.Outcome(g.CommandID); ok && st.Final() && st != dispatch.Succeeded {
		gs := GatewayFailed
		if st == dispatch.Rejected {
			gs = GatewayRejected
		}
		s.set(g, gs, code, msg)
		return
	}
	rev := s.run.Spec.GetRevision()
	if dep, ok := s.deployment(g); ok && dep.Revision == rev {
		switch {
		case dep.Phase == inventory.Running && (!wantHealthy(s.run.Spec) || dep.Health == inventory.Healthy):
			s.set(g, GatewaySucceeded, "", "")
			return
		case dep.Phase == inventory.Failed || dep.Phase == inventory.RolledBack:
			s.set(g, GatewayFailed, dep.Code, dep.Message)
			return
		}
	}
	if s.now.Sub(g.DispatchedAt) > s.timeout() {
		s.set(g, GatewayTimedOut, "DEADLINE_EXCEEDED", fmt.Sprintf("not RUNNING revision %d within %s", rev, s.timeout()))
	}
}

func (s *stepper) observeRollback(g *Gateway) {
	id := CommandID(s.run.R.ID, g.Gateway, g.Attempt, "rollback")
	if st, code, msg, ok := s.cmds.Outcome(id); ok && st.Final() && st != dispatch.Succeeded {
		s.set(g, GatewayFailed, code, "rollback failed: "+msg)
	} else if dep, ok := s.deployment(g); ok && dep.Revision == g.RollbackRevision && dep.Phase == inventory.Running {
		s.set(g, GatewayRolledBack, "", fmt.Sprintf("back on the previous spec as revision %d", g.RollbackRevision))
	} else if s.now.Sub(g.DispatchedAt) > s.timeout() {
		s.set(g, GatewayFailed, "DEADLINE_EXCEEDED", "rollback did not finish within "+s.timeout().String())
	}
}

// observeSoak: a canary must stay up through the soak.
func (s *stepper) observeSoak(g *Gateway) {
	if s.run.R.Phase != PhaseSoak || g.Batch != 0 {
		return
	}
	dep, ok := s.deployment(g)
	if ok && (dep.Revision != s.run.Spec.GetRevision() || dep.Phase != inventory.Running || dep.Health == inventory.Unhealthy) {
		s.set(g, GatewayFailed, "UNHEALTHY", fmt.Sprintf("canary left RUNNING during the soak: %s %s", dep.Phase, dep.Health))
	}
}

// tally counts the run's gateways by what the abort criteria and the
// phases need.
type tally struct {
	executed, failures, canaryFailed, queued, inflight int
	prefetching                                        int // prefetches in flight
}

func (s *stepper) tally() tally {
	var t tally
	for _, g := range s.run.gws {
		switch g.State {
		case GatewaySucceeded, GatewayFailed, GatewayRejected, GatewayTimedOut:
			t.executed++
			if s.run.R.Spec.Abort.countsAsFailure(g.State) {
				t.failures++
			}
			if g.Batch == 0 && g.State != GatewaySucceeded {
				t.canaryFailed++
			}
		case GatewayQueued:
			t.queued++
		case GatewayInProgress:
			t.inflight++
		}
		if g.Prefetch != nil && g.Prefetch.State == PrefetchInProgress {
			t.prefetching++
		}
	}
	return t
}

// abortReason says why the rollout must abort, "" when it need not.
func (s *stepper) abortReason(t tally) string {
	a := s.run.R.Spec.Abort
	switch {
	case t.canaryFailed > 0:
		return fmt.Sprintf("%d canary gateways failed", t.canaryFailed)
	case a.ThresholdPercent > 0 && t.executed > 0 && t.executed >= a.MinExecuted &&
		100*float64(t.failures)/float64(t.executed) >= a.ThresholdPercent:
		return fmt.Sprintf("%d of %d executed gateways failed (%.1f%%, threshold %.1f%%)", t.failures, t.executed,
			100*float64(t.failures)/float64(t.executed), a.ThresholdPercent)
	}
	return ""
}

// expireQueued times out the gateways still queued (offline) past the
// rollout's deadline, and returns how many.
func (s *stepper) expireQueued() int {
	deadline := time.Duration(s.run.R.Spec.Strategy.Deadline)
	if deadline <= 0 {
		deadline = 7 * 24 * time.Hour
	}
	if s.now.Sub(s.run.R.CreatedAt) <= deadline {
		return 0
	}
	n := 0
	for _, g := range s.run.gws {
		if g.State == GatewayQueued {
			s.set(g, GatewayTimedOut, "DEADLINE_EXCEEDED", "offline until the rollout's deadline")
			n++
		}
	}
	return n
}

func (s *stepper) online(g *Gateway) bool {
	return s.inv.Observe(g.invKey(s.run.R.Spec.Tenant), "").Online
}

// advance moves the rollout through its phases and batches; it reports
// true when the rollout ended.
func (s *stepper) advance(t tally) bool {
	run, r := s.run, s.run.R
	switch r.Phase {
	case PhasePrefetch:
		if !s.prefetchDone() {
			return false
		}
		if reason := s.endPrefetch(); reason != "" {
			run.end(Aborted, reason, s.now)
			return true
		}
	case PhaseCanary:
		for _, g := range run.gws {
			if g.Batch == 0 && !g.State.Final() {
				return false
			}
		}
		r.Phase, run.dirtyRun = PhaseBatches, true
		if c := r.Spec.Strategy.Canary; c != nil && c.Soak > 0 {
			r.Phase, r.SoakUntil = PhaseSoak, s.now.Add(time.Duration(c.Soak))
		}
	case PhaseSoak:
		if !s.now.Before(r.SoakUntil) {
			r.Phase, run.dirtyRun = PhaseBatches, true
		}
	}
	if r.Phase != PhaseBatches {
		return false
	}
	maxBatch := 0
	for _, g := range run.gws {
		maxBatch = max(maxBatch, g.Batch)
	}
	for r.Batch <= maxBatch && s.batchDone(r.Batch) {
		r.Batch++
		run.dirtyRun = true
	}
	if t.queued != 0 || t.inflight != 0 || r.Batch <= maxBatch {
		return false
	}
	st := Succeeded
	if t.executed > 0 && t.failures+t.canaryFailed > 0 || run.count(GatewayFailed, GatewayRejected, GatewayTimedOut) > 0 {
		st = Failed
	}
	run.end(st, fmt.Sprintf("%d of %d gateways succeeded", run.count(GatewaySucceeded), len(run.gws)), s.now)
	return true
}

// batchDone: no gateway of batch is in progress or queued and online.
func (s *stepper) batchDone(batch int) bool {
	for _, g := range s.run.gws {
		if g.Batch == batch && (g.State == GatewayInProgress || (g.State == GatewayQueued && s.online(g))) {
			return false
		}
	}
	return true
}

// limit is how many gateways may be dispatched now: within the in-flight
// bound and the rate.
func (s *stepper) limit(inflight int) int {
	r, st := s.run.R, s.run.R.Spec.Strategy
	limit := math.MaxInt
	if st.MaxInFlight > 0 {
		limit = st.MaxInFlight - inflight
	}
	rate := st.RatePerMinute
	if e := st.Exponential; e != nil {
		steps := s.run.count(GatewaySucceeded)
		if e.StepOn == "notified" {
			steps = r.Notified
		}
		if r.Phase == PhasePrefetch {
			steps = s.run.countPrefetch(PrefetchSucceeded)
		}
		rate = e.BaseRate * math.Pow(e.IncrementFactor, float64(steps/e.StepEvery))
	}
	if rate > 0 {
		if r.lastTick.IsZero() {
			r.tokens = 1
		} else {
			r.tokens = min(r.tokens+rate/60*s.now.Sub(r.lastTick).Seconds(), maxTokens(rate))
		}
		limit = min(limit, int(r.tokens))
	}
	r.lastTick = s.now
	return limit
}

// maxTokens bounds the rate limiter's allowance at ratePerMinute: what one
// scheduler tick spends, plus one dispatch, so that the fraction left by a
// tick that came early carries over to the next. What a longer gap would
// earn (a stalled scheduler; a wait for a batch, for room in flight, for
// gateways to come online) is dropped, not spent at once in a burst above
// the rate.
func maxTokens(ratePerMinute float64) float64 { return 1 + ratePerMinute/60*tick.Seconds() }

// dispatch takes the queued online gateways of the current phase, within
// the limit.
func (s *stepper) dispatch(inflight int) []Dispatch {
	run, r := s.run, s.run.R
	if r.State != Running || r.Phase == PhaseSoak {
		r.lastTick = s.now
		return nil
	}
	limit := s.limit(inflight)
	var out []Dispatch
	for _, id := range run.order {
		if len(out) >= limit {
			break
		}
		g := run.gws[id]
		eligible := g.State == GatewayQueued && ((r.Phase == PhaseCanary && g.Batch == 0) || (r.Phase == PhaseBatches && g.Batch <= r.Batch))
		if !eligible || !s.online(g) {
			continue
		}
		g.Attempt++
		g.CommandID = CommandID(r.ID, id, g.Attempt, "deploy")
		g.DispatchedAt = s.now
		if g.PrevSpec == nil {
			g.PrevSpec = s.inv.LastSpec(r.Spec.Tenant, id, run.Spec.GetName())
		}
		s.set(g, GatewayInProgress, "", "")
		r.Notified++
		run.dirtyRun = true
		out = append(out, Dispatch{Rollout: r.ID, Gateway: id, CommandID: g.CommandID})
	}
	if r.Spec.Strategy.RatePerMinute > 0 || r.Spec.Strategy.Exponential != nil {
		r.tokens -= float64(len(out))
	}
	return out
}

// abort ends the rollout and, when the spec says so, rolls back the
// gateways that updated.
func (s *stepper) abort(reason string) []Dispatch {
	run := s.run
	run.end(Aborted, reason, s.now)
	if !run.R.Spec.Abort.Rollback {
		return nil
	}
	var out []Dispatch
	for _, id := range run.order {
		g := run.gws[id]
		if g.State != GatewaySucceeded && g.State != GatewayInProgress {
			continue
		}
		if g.PrevSpec == nil {
			g.Message = "no previous spec known to roll back to (the controller never deployed this deployment there before)"
			run.dirty[id] = struct{}{}
			continue
		}
		prev := new(fleetv1.DeploymentSpec)
		if err := protojson.Unmarshal(g.PrevSpec, prev); err != nil {
			continue
		}
		// The worker deploys PrevSpec under this revision.
		g.RollbackRevision, g.State, g.DispatchedAt, g.Message = run.Spec.GetRevision()+1, GatewayRollingBack, s.now, reason
		run.dirty[id] = struct{}{}
		out = append(out, Dispatch{Rollout: run.R.ID, Gateway: id, CommandID: CommandID(run.R.ID, id, g.Attempt, "rollback")})
	}
	return out
}

// includeNew adds gateways that came to match the targets, in the last
// batch.
func (s *stepper) includeNew() {
	run := s.run
	t := run.R.Spec.Targets
	if len(t.Gateways) > 0 {
		return
	}
	sel, _ := inventory.ParseSelector(t.Selector)
	last := 1
	for _, g := range run.gws {
		last = max(last, g.Batch)
	}
	for _, id := range s.inv.IDs(inventory.Filter{Tenant: run.R.Spec.Tenant, Selector: sel, AnyGroup: t.Groups}) {
		if _, in := run.gws[id]; !in {
			run.Add(id, last)
		}
	}
}

func lower(s string) string { return strings.ToLower(s) }
