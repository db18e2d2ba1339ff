package rollout

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// GatewayState is one gateway's progress in a rollout.
type GatewayState string

// The gateway states.
const (
	GatewayQueued      GatewayState = "QUEUED"
	GatewayInProgress  GatewayState = "IN_PROGRESS"
	GatewaySucceeded   GatewayState = "SUCCEEDED"
	GatewayFailed      GatewayState = "FAILED"
	GatewayTimedOut    GatewayState = "TIMED_OUT"
	GatewayRejected    GatewayState = "REJECTED"
	GatewayCanceled    GatewayState = "CANCELED"
	GatewayRollingBack GatewayState = "ROLLING_BACK"
	GatewayRolledBack  GatewayState = "ROLLED_BACK"
)

// Final reports whether the gateway is done with the rollout.
func (s GatewayState) Final() bool {
	return s != GatewayQueued && s != GatewayInProgress && s != GatewayRollingBack
}

// failed reports whether the gateway executed the rollout and failed.
func (s GatewayState) failed() bool {
	return s == GatewayFailed || s == GatewayRejected || s == GatewayTimedOut
}

// State is a rollout's state.
type State string

// The rollout states.
const (
	Running    State = "RUNNING"
	Paused     State = "PAUSED"
	Succeeded  State = "SUCCEEDED"
	Failed     State = "FAILED" // done, some gateways failed (under the abort threshold)
	Aborted    State = "ABORTED"
	Canceled   State = "CANCELED"
	Superseded State = "SUPERSEDED"
)

// Active reports whether the rollout still runs (or is paused).
func (s State) Active() bool { return s == Running || s == Paused }

// Phase is where a rollout is.
type Phase string

// The phases.
const (
	PhasePrefetch Phase = "PREFETCHING" // before the canary: the image staged on every target
	PhaseCanary   Phase = "CANARY"
	PhaseSoak     Phase = "SOAK"
	PhaseBatches  Phase = "BATCHES"
	PhaseDone     Phase = "DONE"
)

// PrefetchState is one gateway's prefetch in a rollout's prefetch phase.
type PrefetchState string

// The prefetch states.
const (
	PrefetchQueued     PrefetchState = "QUEUED"
	PrefetchInProgress PrefetchState = "IN_PROGRESS"
	PrefetchSucceeded  PrefetchState = "SUCCEEDED"
	PrefetchFailed     PrefetchState = "FAILED"    // the gateway answered FAILED or REJECTED, or it was not delivered
	PrefetchTimedOut   PrefetchState = "TIMED_OUT" // still running when the phase ended
	PrefetchSkipped    PrefetchState = "SKIPPED"   // not sent: offline until the phase ended, or the rollout ended first
)

// GatewayPrefetch is one gateway's prefetch: nil when the rollout has no
// prefetch phase (or the gateway joined it after the phase).
type GatewayPrefetch struct {
	State        PrefetchState
	CommandID    string
	DispatchedAt time.Time
	FinishedAt   time.Time
	Code         string
	Message      string
}

// Rollout is one rollout's state.
type Rollout struct {
	ID         string
	Spec       Spec
	State      State
	Phase      Phase
	Reason     string
	CreatedAt  time.Time
	FinishedAt time.Time
	SoakUntil  time.Time
	// PrefetchUntil ends the prefetch phase at the latest.
	PrefetchUntil time.Time
	Batch         int // current batch, from 1
	BatchSize     int // gateways per batch after the canary
	Notified      int // gateways dispatched
	Warnings      []string
	// tokens is the rate limiter's allowance; not persisted.
	tokens   float64
	lastTick time.Time
}

// Gateway is one gateway's progress in a rollout.
type Gateway struct {
	Rollout      string
	Gateway      string
	State        GatewayState
	Batch        int // 0: canary
	Attempt      int
	CommandID    string
	DispatchedAt time.Time
	FinishedAt   time.Time
	Code         string
	Message      string
	// PrevSpec is the spec the gateway ran before (the controller's last
	// deploy to it), what a rollback deploys again.
	PrevSpec         json.RawMessage
	RollbackRevision int64
	// Prefetch is the gateway's prefetch, nil without a prefetch phase.
	Prefetch *GatewayPrefetch

	key string // of the gateway in the inventory, computed once
}

// invKey is the gateway's inventory key: the scheduler looks every
// gateway up ten times a second.
func (g *Gateway) invKey(tenant string) string {
	if g.key == "" {
		g.key = state.Key(tenant, g.Gateway)
	}
	return g.key
}

// Run is a rollout in memory with its gateways. The scheduler's lock
// guards it.
type Run struct {
	R    *Rollout
	Spec *fleetv1.DeploymentSpec
	gws  map[string]*Gateway
	// order is the dispatch order: canary first, then batches.
	order    []string
	dirty    map[string]struct{}
	dirtyRun bool
	// changes are what Step changed, for the event stream.
	changes []changes.Change
}

// NewRun returns a run of r, deploying spec.
func NewRun(r *Rollout, spec *fleetv1.DeploymentSpec) *Run {
	return &Run{R: r, Spec: spec, gws: map[string]*Gateway{}, dirty: map[string]struct{}{}, dirtyRun: true}
}

// Add queues a gateway in batch (0: the canary), and its prefetch during
// the prefetch phase.
func (run *Run) Add(gw string, batch int) {
	g := &Gateway{Rollout: run.R.ID, Gateway: gw, State: GatewayQueued, Batch: batch}
	if run.R.Phase == PhasePrefetch {
		g.Prefetch = &GatewayPrefetch{State: PrefetchQueued}
	}
	run.gws[gw] = g
	run.order = append(run.order, gw)
	run.dirty[gw] = struct{}{}
}

// Gateway returns one gateway's record.
func (run *Run) Gateway(id string) (Gateway, bool) {
	g := run.gws[id]
	if g == nil {
		return Gateway{}, false
	}
	return g.clone(), true
}

// TakeChanges returns and forgets what changed since the last call.
func (run *Run) TakeChanges() []changes.Change {
	ch := run.changes
	run.changes = nil
	return ch
}

func (run *Run) note(c changes.Change) { run.changes = append(run.changes, c) }

// active reports whether the scheduler must step the run.
func (run *Run) active() bool { return run.R.State.Active() || run.rollingBack() }

func (run *Run) rollingBack() bool {
	for _, g := range run.gws {
		if g.State == GatewayRollingBack {
			return true
		}
	}
	return false
}

func (run *Run) count(states ...GatewayState) int {
	n := 0
	for _, g := range run.gws {
		for _, s := range states {
			if g.State == s {
				n++
			}
		}
	}
	return n
}

// end finishes the rollout: queued gateways are canceled.
func (run *Run) end(st State, reason string, now time.Time) {
	r := run.R
	r.State, r.Reason, r.FinishedAt, r.Phase = st, reason, now, PhaseDone
	run.dirtyRun = true
	for id, g := range run.gws {
		if g.State == GatewayQueued {
			g.State, g.FinishedAt, g.Message = GatewayCanceled, now, reason
			run.dirty[id] = struct{}{}
		}
		if p := g.Prefetch; p != nil && p.State == PrefetchQueued {
			p.State, p.FinishedAt, p.Message = PrefetchSkipped, now, reason
			run.dirty[id] = struct{}{}
		}
	}
	sev := changes.Info
	if st == Failed || st == Aborted {
		sev = changes.Error
	}
	run.note(changes.Change{Kind: "rollout." + lower(string(st)), Severity: sev, At: now, Tenant: r.Spec.Tenant, Batch: r.ID, State: string(st), Message: reason})
}

// CommandID is the deterministic id of a rollout's deploy ("deploy"),
// rollback ("rollback") or prefetch ("prefetch", attempt 0) to a gateway:
// dispatched again after a crash, the gateway answers it with its recorded
// reply instead of running it twice.
// The credentials sent ahead of it have this id with "c" appended.
func CommandID(rollout, gw string, attempt int, what string) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%d/%s", rollout, gw, attempt, what))
	return "ro-" + hex.EncodeToString(sum[:12])
}

// commandIDs are the ids of every command the run may have sent.
func (run *Run) commandIDs() []string {
	var ids []string
	for gw, g := range run.gws {
		for _, what := range []string{"deploy", "rollback"} {
			id := CommandID(run.R.ID, gw, g.Attempt, what)
			ids = append(ids, id, id+"c")
		}
		if g.Prefetch != nil && g.Prefetch.CommandID != "" {
			ids = append(ids, g.Prefetch.CommandID, g.Prefetch.CommandID+"c")
		}
	}
	return ids
}
