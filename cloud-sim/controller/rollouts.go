package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Per-gateway rollout states.
const (
	GwQueued      = "QUEUED"
	GwInProgress  = "IN_PROGRESS"
	GwSucceeded   = "SUCCEEDED"
	GwFailed      = "FAILED"
	GwTimedOut    = "TIMED_OUT"
	GwRejected    = "REJECTED"
	GwCanceled    = "CANCELED"
	GwRollingBack = "ROLLING_BACK"
	GwRolledBack  = "ROLLED_BACK"
)

// Rollout states.
const (
	RolloutRunning    = "RUNNING"
	RolloutPaused     = "PAUSED"
	RolloutSucceeded  = "SUCCEEDED"
	RolloutFailed     = "FAILED" // done, some gateways failed (under the abort threshold)
	RolloutAborted    = "ABORTED"
	RolloutCanceled   = "CANCELED"
	RolloutSuperseded = "SUPERSEDED"
)

// Rollout phases.
const (
	PhaseCanary  = "CANARY"
	PhaseSoak    = "SOAK"
	PhaseBatches = "BATCHES"
	PhaseDone    = "DONE"
)

// Rollout is one rollout's state.
type Rollout struct {
	ID         string      `json:"id"`
	Spec       RolloutSpec `json:"spec"`
	State      string      `json:"state"`
	Phase      string      `json:"phase"`
	Reason     string      `json:"reason,omitempty"`
	CreatedAt  time.Time   `json:"createdAt"`
	FinishedAt time.Time   `json:"finishedAt,omitzero"`
	SoakUntil  time.Time   `json:"soakUntil,omitzero"`
	Batch      int         `json:"batch"`     // current batch, from 1
	BatchSize  int         `json:"batchSize"` // gateways per batch after the canary
	Notified   int         `json:"notified"`  // gateways dispatched
	Warnings   []string    `json:"warnings,omitempty"`
	// tokens is the rate limiter's allowance; not persisted.
	tokens   float64
	lastTick time.Time
}

// RolloutGateway is one gateway's progress in a rollout.
type RolloutGateway struct {
	Rollout      string    `json:"rollout"`
	Gateway      string    `json:"gateway"`
	State        string    `json:"state"`
	Batch        int       `json:"batch"` // 0: canary
	Attempt      int       `json:"attempt"`
	CommandID    string    `json:"commandId,omitempty"`
	DispatchedAt time.Time `json:"dispatchedAt,omitzero"`
	FinishedAt   time.Time `json:"finishedAt,omitzero"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	// PrevSpec is the spec the gateway ran before (the controller's last
	// deploy to it), what a rollback deploys again.
	PrevSpec         json.RawMessage `json:"prevSpec,omitempty"`
	RollbackRevision int64           `json:"rollbackRevision,omitempty"`

	key string // of the gateway in the inventory, computed once
}

// invKey is the gateway's inventory key: the scheduler looks every
// gateway up ten times a second.
func (g *RolloutGateway) invKey(tenant string) string {
	if g.key == "" {
		g.key = state.Key(tenant, g.Gateway)
	}
	return g.key
}

func (g *RolloutGateway) final() bool {
	switch g.State {
	case GwQueued, GwInProgress, GwRollingBack:
		return false
	}
	return true
}

// rolloutRun is a rollout in memory with its gateways.
type rolloutRun struct {
	r        *Rollout
	spec     *fleetv1.DeploymentSpec
	gws      map[string]*RolloutGateway
	order    []string // dispatch order: canary first, then batches
	dirty    map[string]struct{}
	dirtyRun bool
}

// RolloutView is a rollout with its aggregate progress.
type RolloutView struct {
	Rollout
	Total        int              `json:"total"`
	Counts       map[string]int   `json:"counts"`
	SucceededPct float64          `json:"succeededPercent"`
	FailedPct    float64          `json:"failedPercent"`
	CurrentRate  float64          `json:"currentRatePerMinute"` // gateways finished in the last minute
	ETA          string           `json:"eta,omitempty"`
	Failing      []RolloutGateway `json:"failing,omitempty"`
	Gateways     []RolloutGateway `json:"gateways,omitempty"`
	Active       bool             `json:"active"`
}

// specKey is where the controller remembers the last spec it deployed to
// a gateway, for rollbacks.
func specKey(tenant, gw, name string) string { return state.Key("spec", tenant, gw, name) }

// CreateRollout validates spec, checks the image and its credential
// against the registry (refusing to start when that fails), supersedes an
// active rollout of the same deployment, and starts.
func (c *Controller) CreateRollout(ctx context.Context, spec RolloutSpec) (*RolloutView, error) {
	if err := c.notLeader(); err != nil {
		return nil, err
	}
	dep, err := spec.validate()
	if err != nil {
		return nil, err
	}
	_, warn, err := c.prepareImage(ctx, spec.Tenant, dep.GetImage(), spec.SkipRegistryCheck)
	if err != nil {
		return nil, err
	}
	targets, err := c.rolloutTargets(spec)
	if err != nil {
		return nil, err
	}
	// Online gateways first, so that canaries and early batches are ones
	// that can answer now; offline ones wait in the last places.
	sort.SliceStable(targets, func(i, j int) bool { return targets[i].Online && !targets[j].Online })
	now := c.cfg.Now()
	r := &Rollout{ID: newID("r"), Spec: spec, State: RolloutRunning, Phase: PhaseBatches, CreatedAt: now, Batch: 1}
	if warn != "" {
		r.Warnings = append(r.Warnings, warn)
	}
	run := &rolloutRun{r: r, spec: dep, gws: map[string]*RolloutGateway{}, dirty: map[string]struct{}{}, dirtyRun: true}
	canary := 0
	if spec.Strategy.Canary != nil {
		canary = min(spec.Strategy.Canary.Count, len(targets))
		r.Phase = PhaseCanary
	}
	rest := len(targets) - canary
	r.BatchSize = rest
	switch {
	case spec.Strategy.BatchSize > 0:
		r.BatchSize = spec.Strategy.BatchSize
	case spec.Strategy.BatchPercent > 0:
		r.BatchSize = max(1, int(math.Ceil(float64(len(targets))*spec.Strategy.BatchPercent/100)))
	}
	r.BatchSize = max(r.BatchSize, 1)
	for i, g := range targets {
		batch := 0
		if i >= canary {
			batch = 1 + (i-canary)/r.BatchSize
		}
		run.add(g.ID, batch)
	}
	c.mu.Lock()
	for _, other := range c.rollouts {
		o := other.r
		if o.Spec.Tenant == spec.Tenant && other.spec.GetName() == dep.GetName() && active(o.State) {
			c.endRollout(other, RolloutSuperseded, "superseded by rollout "+r.ID, now)
		}
	}
	c.rollouts[r.ID] = run
	c.mu.Unlock()
	if err := c.flushRollouts(ctx); err != nil {
		return nil, err
	}
	c.hub.publish(Change{Kind: "rollout.created", At: now, Tenant: spec.Tenant, Batch: r.ID, State: r.State,
		Message: fmt.Sprintf("%s revision %d to %d gateways", dep.GetName(), dep.GetRevision(), len(targets))})
	v, _ := c.RolloutStatus(r.ID, false)
	return v, nil
}

func (run *rolloutRun) add(gw string, batch int) {
	run.gws[gw] = &RolloutGateway{Rollout: run.r.ID, Gateway: gw, State: GwQueued, Batch: batch}
	run.order = append(run.order, gw)
	run.dirty[gw] = struct{}{}
}

func active(st string) bool { return st == RolloutRunning || st == RolloutPaused }

// rolloutTargets lists the gateways a spec targets, in a stable order.
func (c *Controller) rolloutTargets(spec RolloutSpec) ([]*Gateway, error) {
	t := spec.Targets
	if len(t.Gateways) > 0 {
		return c.resolve(Target{Tenant: spec.Tenant, Gateways: t.Gateways})
	}
	sel, _ := ParseSelector(t.Selector)
	var out []*Gateway
	for _, g := range c.Gateways(Filter{Tenant: spec.Tenant, Selector: sel}) {
		if rolloutGroupsMatch(t, g) {
			out = append(out, g)
		}
	}
	if len(out) == 0 && !t.IncludeNew {
		return nil, &errdefs.FieldError{Field: "targets", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("select no gateway of tenant %s (set includeNew to wait for some)", spec.Tenant)}
	}
	return out, nil
}

func rolloutGroupsMatch(t RolloutTargets, g *Gateway) bool {
	if len(t.Groups) == 0 {
		return true
	}
	for _, want := range t.Groups {
		for _, have := range g.Groups {
			if want == have {
				return true
			}
		}
	}
	return false
}

// endRollout finishes a rollout: queued gateways are canceled. c.mu is held.
func (c *Controller) endRollout(run *rolloutRun, st, reason string, now time.Time) {
	run.r.State, run.r.Reason, run.r.FinishedAt, run.r.Phase = st, reason, now, PhaseDone
	run.dirtyRun = true
	for id, g := range run.gws {
		if g.State == GwQueued {
			g.State, g.FinishedAt, g.Message = GwCanceled, now, reason
			run.dirty[id] = struct{}{}
		}
	}
	c.hub.publish(Change{Kind: "rollout." + strings.ToLower(st), At: now, Tenant: run.r.Spec.Tenant, Batch: run.r.ID, State: st, Message: reason})
}

// PauseRollout, ResumeRollout and CancelRollout are the operator's controls.
func (c *Controller) PauseRollout(id string) error  { return c.setRolloutState(id, RolloutPaused) }
func (c *Controller) ResumeRollout(id string) error { return c.setRolloutState(id, RolloutRunning) }
func (c *Controller) CancelRollout(id string) error { return c.setRolloutState(id, RolloutCanceled) }

func (c *Controller) setRolloutState(id, st string) error {
	if err := c.notLeader(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	run := c.rollouts[id]
	if run == nil {
		return &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: "no rollout " + id}
	}
	if !active(run.r.State) {
		return &errdefs.FieldError{Field: "id", Kind: errdefs.ErrInvalidArgument, Msg: fmt.Sprintf("rollout %s is %s already", id, run.r.State)}
	}
	now := c.cfg.Now()
	switch st {
	case RolloutCanceled:
		c.endRollout(run, RolloutCanceled, "canceled by the operator", now)
	default:
		run.r.State, run.dirtyRun = st, true
		run.r.lastTick = now
		c.hub.publish(Change{Kind: "rollout." + strings.ToLower(st), At: now, Tenant: run.r.Spec.Tenant, Batch: id, State: st})
	}
	return nil
}

// Rollouts lists rollouts, newest first.
func (c *Controller) Rollouts() []*RolloutView {
	c.mu.Lock()
	ids := make([]string, 0, len(c.rollouts))
	for id := range c.rollouts {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	var out []*RolloutView
	for _, id := range ids {
		if v, ok := c.RolloutStatus(id, false); ok {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.After(out[j].CreatedAt) })
	return out
}

// RolloutStatus is a rollout's aggregate view; withGateways adds every
// gateway's record.
func (c *Controller) RolloutStatus(id string, withGateways bool) (*RolloutView, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	run := c.rollouts[id]
	if run == nil {
		return nil, false
	}
	now := c.cfg.Now()
	v := &RolloutView{Rollout: *run.r, Total: len(run.gws), Counts: map[string]int{}, Active: active(run.r.State)}
	v.Warnings = append([]string(nil), run.r.Warnings...)
	finishedRecently := 0
	for _, id := range run.order {
		g := run.gws[id]
		v.Counts[g.State]++
		if g.final() && now.Sub(g.FinishedAt) <= time.Minute {
			finishedRecently++
		}
		if run.r.Spec.Abort.countsAsFailure(g.State) || g.State == GwFailed {
			if len(v.Failing) < 50 {
				v.Failing = append(v.Failing, *g)
			}
		}
		if withGateways {
			v.Gateways = append(v.Gateways, *g)
		}
	}
	if v.Total > 0 {
		v.SucceededPct = 100 * float64(v.Counts[GwSucceeded]) / float64(v.Total)
		v.FailedPct = 100 * float64(v.Counts[GwFailed]+v.Counts[GwRejected]+v.Counts[GwTimedOut]) / float64(v.Total)
	}
	v.CurrentRate = float64(finishedRecently)
	left := v.Counts[GwQueued] + v.Counts[GwInProgress]
	if v.Active && left > 0 && finishedRecently > 0 {
		v.ETA = (time.Duration(float64(left)/float64(finishedRecently)*60) * time.Second).String()
	}
	return v, true
}

// rolloutCommandID is the deterministic id of a rollout's deploy to a
// gateway: dispatched again after a crash, the gateway answers it with
// its recorded reply instead of deploying twice.
func rolloutCommandID(rollout, gw string, attempt int, what string) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "%s/%s/%d/%s", rollout, gw, attempt, what))
	return "ro-" + hex.EncodeToString(sum[:12])
}

// dispatchDeploy sends spec to one gateway, its credential first when it
// lacks it, under deterministic command ids. c.mu is not held.
func (c *Controller) dispatchDeploy(ctx context.Context, tenant, gw, rolloutID string, spec *fleetv1.DeploymentSpec, cmdID string) error {
	g, ok := c.Gateway(tenant, gw)
	if !ok {
		return fmt.Errorf("gateway %s/%s is not in the inventory", tenant, gw)
	}
	rec, cr, err := c.credentialFor(tenant, spec.GetImage())
	if err != nil {
		return err
	}
	now := c.cfg.Now()
	var cmds []*fleetv1.Command
	if rec != nil {
		if send := c.deliverable(rec, cr); !holds(g, send) {
			set, err := c.sealFor(g, []*fleetv1.Credential{send})
			if err != nil {
				return err
			}
			set.Id = cmdID + "c"
			cmds = append(cmds, set)
		}
	}
	cmds = append(cmds, &fleetv1.Command{Id: cmdID, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}})
	for _, cmd := range cmds {
		cmd.IssuedAt = timestamppb.New(now)
		payload, _ := proto.Marshal(cmd)
		c.mu.Lock()
		if _, known := c.commands[cmd.Id]; !known {
			rec := &commandRecord{Command: Command{ID: cmd.Id, Batch: rolloutID, Tenant: tenant, Gateway: gw, Verb: string(topic.VerbOf(cmd)),
				State: StatePending, OfflineWhenSent: !g.Online, SentAt: now}, Payload: c.cfg.Keys.Encrypt(payload)}
			c.commands[cmd.Id] = rec
			c.dirtyCmd(cmd.Id)
		}
		c.mu.Unlock()
		if err := c.con.Publish(ctx, tenant, gw, cmd); err != nil {
			return err
		}
	}
	c.rememberSpec(tenant, gw, spec)
	return nil
}
