// Package rollout rolls a deployment revision out to many gateways: the
// operator's Spec (targets, a canary, batches, rates, abort criteria); a
// pure Step that observes a rollout's gateways and decides what to
// dispatch; and the Scheduler that steps every active rollout while its
// replica holds the scheduler lease, queuing dispatches for the workers.
package rollout

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Duration is a time.Duration of the spec.
type Duration time.Duration

// Spec is what an operator asks for: a deployment revision to a set
// of gateways, with a strategy and abort criteria.
type Spec struct {
	Name    string
	Tenant  string
	Targets Targets
	// Deployment is a protocol DeploymentSpec (protojson).
	Deployment        json.RawMessage
	SkipRegistryCheck bool
	Strategy          Strategy
	Abort             AbortCriteria
}

// Targets selects the gateways: explicit ids, a label selector,
// groups, or the whole tenant; IncludeNew adds gateways that come to match
// while the rollout runs.
type Targets struct {
	Gateways   []string
	Selector   string
	Groups     []string
	All        bool
	IncludeNew bool
}

// Strategy says how fast the rollout goes.
type Strategy struct {
	// Canary: Count gateways first; then, once all succeeded, Soak during
	// which they must stay RUNNING (and healthy).
	Canary *Canary
	// Batches of BatchSize gateways or BatchPercent of the targets; the
	// next batch starts when the current one is done. Without either, one
	// batch of everything.
	BatchSize    int
	BatchPercent float64
	// MaxInFlight bounds gateways IN_PROGRESS at once (no bound when 0).
	MaxInFlight int
	// RatePerMinute bounds dispatches per minute (no bound when 0).
	RatePerMinute float64
	// Exponential rate: BaseRate per minute, multiplied by IncrementFactor
	// each time StepEvery more gateways were notified (dispatched) or
	// succeeded (StepOn).
	Exponential *Exponential
	// GatewayTimeout: a gateway not RUNNING the new revision this long
	// after dispatch is TIMED_OUT (10 minutes when zero).
	GatewayTimeout Duration
	// Deadline: gateways still QUEUED (offline) this long after the start
	// are TIMED_OUT (7 days when zero).
	Deadline Duration
	// Prefetch, when set, stages the image on every target before the
	// first deploy (the canary's or the first batch's).
	Prefetch *Prefetch
}

// Prefetch is a rollout's first phase, before the canary: every target
// gateway is sent a prefetch of the deployment's image (at the rollout's
// rate, within maxInFlight) and the phase ends when no online gateway
// waits for one, or at Timeout. Gateways whose prefetch failed, timed out
// or was skipped (offline) still get the deploy in their batch, which
// pulls as usual.
type Prefetch struct {
	// MinPercent of the targets must hold the image when the phase ends,
	// or the rollout aborts before any deploy (no minimum when 0).
	MinPercent float64
	// Timeout ends the phase at the latest (DefaultPrefetchTimeout when 0).
	Timeout Duration
}

// DefaultPrefetchTimeout is how long a prefetch phase lasts at most when
// its spec does not say.
const DefaultPrefetchTimeout = time.Hour

func (p *Prefetch) timeout() time.Duration {
	if p.Timeout > 0 {
		return time.Duration(p.Timeout)
	}
	return DefaultPrefetchTimeout
}

// Canary is the first phase.
type Canary struct {
	Count int
	Soak  Duration
}

// Exponential is an accelerating rate.
type Exponential struct {
	BaseRate        float64
	IncrementFactor float64
	StepEvery       int
	StepOn          string // "succeeded" (default) or "notified"
}

// AbortCriteria stop a bad release.
type AbortCriteria struct {
	// FailureKinds counted: FAILED, REJECTED, TIMED_OUT, or ALL (default).
	FailureKinds []string
	// ThresholdPercent of executed gateways failing aborts (no abort when 0).
	ThresholdPercent float64
	// MinExecuted gateways must be done before the threshold applies.
	MinExecuted int
	// Rollback: on abort, gateways that updated go back to the revision
	// they ran before (deployed again under a higher revision).
	Rollback bool
}

// Validate checks the spec and returns the parsed deployment, naming the
// field of every error.
func (s *Spec) Validate() (*fleetv1.DeploymentSpec, error) {
	if err := topic.CheckID("tenant", s.Tenant); err != nil {
		return nil, errdefs.Invalid("tenant", "%v", err)
	}
	t := s.Targets
	if len(t.Gateways) == 0 && t.Selector == "" && len(t.Groups) == 0 && !t.All {
		return nil, errdefs.Invalid("targets", "names no gateway: give gateways, a selector, groups, or all: true")
	}
	if _, err := inventory.ParseSelector(t.Selector); err != nil {
		return nil, errdefs.Invalid("targets.selector", "%v", err)
	}
	if len(s.Deployment) == 0 {
		return nil, errdefs.Invalid("deployment", "is required: a DeploymentSpec with name, revision and image (or services), or a Compose file in compose")
	}
	spec := new(fleetv1.DeploymentSpec)
	if err := protojson.Unmarshal(s.Deployment, spec); err != nil {
		return nil, errdefs.Invalid("deployment", "is not a DeploymentSpec: %v", err)
	}
	switch {
	case topic.CheckDeploymentName(spec.GetName()) != nil:
		return nil, errdefs.Invalid("deployment.name", "%v", topic.CheckDeploymentName(spec.GetName()))
	case spec.GetRevision() <= 0:
		return nil, errdefs.Invalid("deployment.revision", "must be positive and higher than the revision the gateways run")
	case spec.GetImage() == "" && len(spec.GetServices()) == 0:
		return nil, errdefs.Invalid("deployment.image", "is required (or services, for an application)")
	case spec.GetImage() != "" && len(spec.GetServices()) > 0:
		return nil, errdefs.Invalid("deployment.image", "an application's services carry their images: leave image empty")
	}
	for _, name := range slices.Sorted(maps.Keys(spec.GetServices())) {
		if spec.GetServices()[name].GetImage() == "" {
			return nil, errdefs.Invalid("deployment.services."+name+".image", "is required")
		}
	}
	st := s.Strategy
	switch {
	case st.Canary != nil && st.Canary.Count <= 0:
		return nil, errdefs.Invalid("strategy.canary.count", "must be at least 1")
	case st.BatchSize < 0:
		return nil, errdefs.Invalid("strategy.batchSize", "must not be negative")
	case st.BatchPercent < 0 || st.BatchPercent > 100:
		return nil, errdefs.Invalid("strategy.batchPercent", "must be between 0 and 100")
	case st.BatchSize > 0 && st.BatchPercent > 0:
		return nil, errdefs.Invalid("strategy.batchPercent", "give batchSize or batchPercent, not both")
	case st.MaxInFlight < 0:
		return nil, errdefs.Invalid("strategy.maxInFlight", "must not be negative")
	case st.RatePerMinute < 0:
		return nil, errdefs.Invalid("strategy.ratePerMinute", "must not be negative")
	case st.RatePerMinute > 0 && st.Exponential != nil:
		return nil, errdefs.Invalid("strategy.exponential", "give ratePerMinute or exponential, not both")
	}
	if p := st.Prefetch; p != nil {
		switch {
		case p.MinPercent < 0 || p.MinPercent > 100:
			return nil, errdefs.Invalid("strategy.prefetch.minPercent", "must be between 0 and 100")
		case p.Timeout < 0:
			return nil, errdefs.Invalid("strategy.prefetch.timeout", "must not be negative")
		}
	}
	if e := st.Exponential; e != nil {
		switch {
		case e.BaseRate <= 0:
			return nil, errdefs.Invalid("strategy.exponential.baseRate", "must be positive (gateways per minute)")
		case e.IncrementFactor < 1:
			return nil, errdefs.Invalid("strategy.exponential.incrementFactor", "must be at least 1")
		case e.StepEvery <= 0:
			return nil, errdefs.Invalid("strategy.exponential.stepEvery", "must be at least 1")
		case e.StepOn != "" && e.StepOn != "succeeded" && e.StepOn != "notified":
			return nil, errdefs.Invalid("strategy.exponential.stepOn", "is succeeded or notified")
		}
	}
	a := s.Abort
	for i, k := range a.FailureKinds {
		if !slices.Contains([]string{string(GatewayFailed), string(GatewayRejected), string(GatewayTimedOut), "ALL"}, strings.ToUpper(k)) {
			return nil, errdefs.Invalid(fmt.Sprintf("abort.failureKinds[%d]", i), "%q: use FAILED, REJECTED, TIMED_OUT or ALL", k)
		}
	}
	if a.ThresholdPercent < 0 || a.ThresholdPercent > 100 {
		return nil, errdefs.Invalid("abort.thresholdPercent", "must be between 0 and 100")
	}
	return spec, nil
}

// countsAsFailure reports whether a gateway state counts toward the abort
// threshold.
func (a AbortCriteria) countsAsFailure(state GatewayState) bool {
	if !state.failed() {
		return false
	}
	if len(a.FailureKinds) == 0 {
		return true
	}
	for _, k := range a.FailureKinds {
		if k = strings.ToUpper(k); k == "ALL" || GatewayState(k) == state {
			return true
		}
	}
	return false
}
