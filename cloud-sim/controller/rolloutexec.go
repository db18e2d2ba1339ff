package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/fleet-agent/fleet/internal/errdefs"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// workItem is one dispatch, queued in the JetStream work queue: the
// scheduler decides, a worker sends. A crash between the two leaves the
// item in the queue; a crash after sending leaves a command the gateway
// deduplicates by its deterministic id.
type workItem struct {
	Rollout   string          `json:"rollout"`
	Tenant    string          `json:"tenant"`
	Gateway   string          `json:"gateway"`
	CommandID string          `json:"commandId"`
	Spec      json.RawMessage `json:"spec"`
}

// leaseTTL is how long a scheduler lease lasts without renewal: a
// replica that dies hands the rollouts to another within this.
const leaseTTL = 3 * time.Second

// rolloutLoop steps every active rollout ten times a second while this
// replica holds the scheduler lease; the others keep a read-only view,
// refreshed from the store, and their workers still take dispatches from
// the shared work queue.
func (c *Controller) rolloutLoop() {
	defer c.done.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var lastLease, lastRefresh time.Time
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		now := c.cfg.Now()
		if now.Sub(lastLease) >= leaseTTL/6 {
			lastLease = now
			held, err := c.store.Acquire(ctx, "rollout-scheduler", c.cfg.ID, c.cfg.APIURL, now, leaseTTL)
			if err != nil {
				c.log.Warn("scheduler lease", "err", err)
			}
			if held && !c.leader.Load() {
				// Taking over: start from what the last leader wrote.
				if err := c.reloadRollouts(ctx); err != nil {
					c.log.Error("rollouts not reloaded; not scheduling", "err", err)
					held = false
				} else {
					c.log.Info("scheduling rollouts (lease taken)", "replica", c.cfg.ID)
				}
			}
			c.leader.Store(held)
		}
		if c.leader.Load() {
			c.stepRollouts(ctx)
		} else if now.Sub(lastRefresh) >= 2*time.Second {
			lastRefresh = now
			if err := c.reloadRollouts(ctx); err != nil {
				c.log.Warn("rollout view not refreshed", "err", err)
			}
		}
		cancel()
	}
}

// reloadRollouts replaces the rollouts in memory with the stored ones.
func (c *Controller) reloadRollouts(ctx context.Context) error {
	runs, specs, err := c.readRollouts(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.rollouts, c.lastSpecs, c.dirtySpecs = runs, specs, map[string]struct{}{}
	c.mu.Unlock()
	return nil
}

// Leader reports whether this replica schedules rollouts.
func (c *Controller) Leader() bool { return c.leader.Load() }

// notLeader refuses a rollout change on a replica that does not schedule.
func (c *Controller) notLeader() error {
	if c.leader.Load() {
		return nil
	}
	var l state.Lease
	_ = c.store.Get(context.Background(), state.Meta, state.Key("lease", "rollout-scheduler"), &l)
	return &errdefs.FieldError{Field: "replica", Kind: errdefs.ErrUnsupported,
		Msg: fmt.Sprintf("this replica (%s) follows; rollouts are created and changed on the scheduling replica %s (%s)", c.cfg.ID, l.Owner, l.API)}
}

func (c *Controller) stepRollouts(ctx context.Context) {
	now := c.cfg.Now()
	var items []workItem
	c.mu.Lock()
	for _, run := range c.rollouts {
		if active(run.r.State) || run.rollingBack() {
			items = append(items, c.stepRollout(run, now)...)
		}
	}
	c.mu.Unlock()
	for _, it := range items {
		data, _ := json.Marshal(it)
		if err := c.store.Enqueue(ctx, rolloutWorkSubject, it.CommandID, data); err != nil {
			// Left IN_PROGRESS: it times out, and counts as a failure.
			c.log.Error("rollout work not queued", "rollout", it.Rollout, "gateway", it.Gateway, "err", err)
		}
	}
}

const rolloutWorkSubject = "fleet.rollout.work"

func (run *rolloutRun) rollingBack() bool {
	for _, g := range run.gws {
		if g.State == GwRollingBack {
			return true
		}
	}
	return false
}

// stepRollout observes the rollout's gateways, applies the abort criteria
// and the phases, and returns what to dispatch now. c.mu is held.
func (c *Controller) stepRollout(run *rolloutRun, now time.Time) []workItem {
	r, sp := run.r, run.r.Spec
	set := func(g *RolloutGateway, st, code, msg string) {
		g.State, g.Code, g.Message = st, code, msg
		if g.final() {
			g.FinishedAt = now
		}
		run.dirty[g.Gateway] = struct{}{}
		c.hub.publish(Change{Kind: "rollout.gateway", At: now, Tenant: sp.Tenant, Gateway: g.Gateway, Batch: r.ID, State: st, Message: msg})
	}
	if r.State == RolloutRunning && sp.Targets.IncludeNew {
		c.includeNew(run)
	}
	timeout := time.Duration(sp.Strategy.GatewayTimeout)
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	rev, name := run.spec.GetRevision(), run.spec.GetName()
	wantHealthy := len(run.spec.GetHealthCheck().GetTest()) > 0 && run.spec.GetHealthCheck().GetTest()[0] != "NONE"
	for _, id := range run.order {
		g := run.gws[id]
		inv := c.gateways[g.invKey(sp.Tenant)]
		var dep *Deployment
		if inv != nil {
			dep = inv.Deployments[name]
		}
		switch g.State {
		case GwInProgress:
			if cmd := c.commands[g.CommandID]; cmd != nil && cmd.Failed() {
				st := GwFailed
				if cmd.State == StateRejected {
					st = GwRejected
				}
				set(g, st, cmd.Code, cmd.Message)
				continue
			}
			if dep != nil && dep.Revision == rev {
				switch {
				case dep.Phase == "RUNNING" && (!wantHealthy || dep.Health == "healthy"):
					set(g, GwSucceeded, "", "")
					continue
				case dep.Phase == "FAILED" || dep.Phase == "ROLLED_BACK":
					set(g, GwFailed, dep.Code, dep.Message)
					continue
				}
			}
			if now.Sub(g.DispatchedAt) > timeout {
				set(g, GwTimedOut, "DEADLINE_EXCEEDED", fmt.Sprintf("not RUNNING revision %d within %s", rev, timeout))
			}
		case GwRollingBack:
			if cmd := c.commands[rolloutCommandID(r.ID, id, g.Attempt, "rollback")]; cmd != nil && cmd.Failed() {
				set(g, GwFailed, cmd.Code, "rollback failed: "+cmd.Message)
			} else if dep != nil && dep.Revision == g.RollbackRevision && dep.Phase == "RUNNING" {
				set(g, GwRolledBack, "", fmt.Sprintf("back on the previous spec as revision %d", g.RollbackRevision))
			} else if now.Sub(g.DispatchedAt) > timeout {
				set(g, GwFailed, "DEADLINE_EXCEEDED", "rollback did not finish within "+timeout.String())
			}
		case GwSucceeded:
			// A canary must stay up through the soak.
			if r.Phase == PhaseSoak && g.Batch == 0 && dep != nil && (dep.Revision != rev || dep.Phase != "RUNNING" || dep.Health == "unhealthy") {
				set(g, GwFailed, "UNHEALTHY", fmt.Sprintf("canary left RUNNING during the soak: %s %s", dep.Phase, dep.Health))
			}
		}
	}
	if !active(r.State) {
		return nil
	}

	// Abort criteria.
	var executed, failures, canaryFailed, queued, inflight int
	for _, g := range run.gws {
		switch g.State {
		case GwSucceeded, GwFailed, GwRejected, GwTimedOut:
			executed++
			if sp.Abort.countsAsFailure(g.State) {
				failures++
			}
			if g.Batch == 0 && g.State != GwSucceeded {
				canaryFailed++
			}
		case GwQueued:
			queued++
		case GwInProgress:
			inflight++
		}
	}
	switch {
	case canaryFailed > 0:
		return c.abort(run, fmt.Sprintf("%d canary gateways failed", canaryFailed), now)
	case sp.Abort.ThresholdPercent > 0 && executed > 0 && executed >= sp.Abort.MinExecuted &&
		100*float64(failures)/float64(executed) >= sp.Abort.ThresholdPercent:
		return c.abort(run, fmt.Sprintf("%d of %d executed gateways failed (%.1f%%, threshold %.1f%%)", failures, executed,
			100*float64(failures)/float64(executed), sp.Abort.ThresholdPercent), now)
	}
	deadline := time.Duration(sp.Strategy.Deadline)
	if deadline <= 0 {
		deadline = 7 * 24 * time.Hour
	}
	if now.Sub(r.CreatedAt) > deadline {
		for _, g := range run.gws {
			if g.State == GwQueued {
				set(g, GwTimedOut, "DEADLINE_EXCEEDED", "offline until the rollout's deadline")
				queued--
			}
		}
	}

	// Phases.
	online := func(g *RolloutGateway) bool {
		inv := c.gateways[g.invKey(sp.Tenant)]
		return inv != nil && inv.Online
	}
	maxBatch := 0
	for _, g := range run.gws {
		maxBatch = max(maxBatch, g.Batch)
	}
	switch r.Phase {
	case PhaseCanary:
		done := true
		for _, g := range run.gws {
			if g.Batch == 0 && !g.final() {
				done = false
			}
		}
		if done {
			r.Phase, run.dirtyRun = PhaseBatches, true
			if sp.Strategy.Canary != nil && sp.Strategy.Canary.Soak > 0 {
				r.Phase, r.SoakUntil = PhaseSoak, now.Add(time.Duration(sp.Strategy.Canary.Soak))
			}
		}
	case PhaseSoak:
		if !now.Before(r.SoakUntil) {
			r.Phase, run.dirtyRun = PhaseBatches, true
		}
	}
	if r.Phase == PhaseBatches {
		for r.Batch <= maxBatch {
			done := true
			for _, g := range run.gws {
				if g.Batch == r.Batch && (g.State == GwInProgress || (g.State == GwQueued && online(g))) {
					done = false
				}
			}
			if !done {
				break
			}
			r.Batch++
			run.dirtyRun = true
		}
		if queued == 0 && inflight == 0 && r.Batch > maxBatch {
			st := RolloutSucceeded
			if executed > 0 && failures+canaryFailed > 0 || countState(run, GwFailed, GwRejected, GwTimedOut) > 0 {
				st = RolloutFailed
			}
			c.endRollout(run, st, fmt.Sprintf("%d of %d gateways succeeded", countState(run, GwSucceeded), len(run.gws)), now)
			return nil
		}
	}
	if r.State != RolloutRunning || r.Phase == PhaseSoak {
		r.lastTick = now
		return nil
	}

	// Dispatch: queued online gateways of the current phase, within the
	// in-flight bound and the rate.
	limit := math.MaxInt
	if m := sp.Strategy.MaxInFlight; m > 0 {
		limit = m - inflight
	}
	rate := sp.Strategy.RatePerMinute
	if e := sp.Strategy.Exponential; e != nil {
		steps := countState(run, GwSucceeded)
		if e.StepOn == "notified" {
			steps = r.Notified
		}
		rate = e.BaseRate * math.Pow(e.IncrementFactor, float64(steps/e.StepEvery))
	}
	if rate > 0 {
		if r.lastTick.IsZero() {
			r.tokens = 1
		} else {
			r.tokens = min(r.tokens+rate/60*now.Sub(r.lastTick).Seconds(), max(1, rate/60))
		}
		limit = min(limit, int(r.tokens))
	}
	r.lastTick = now
	var items []workItem
	for _, id := range run.order {
		if len(items) >= limit {
			break
		}
		g := run.gws[id]
		eligible := g.State == GwQueued && online(g) && ((r.Phase == PhaseCanary && g.Batch == 0) || (r.Phase == PhaseBatches && g.Batch <= r.Batch))
		if !eligible {
			continue
		}
		g.Attempt++
		g.CommandID = rolloutCommandID(r.ID, id, g.Attempt, "deploy")
		g.DispatchedAt = now
		if g.PrevSpec == nil {
			g.PrevSpec = c.lastSpecs[specKey(sp.Tenant, id, run.spec.GetName())]
		}
		set(g, GwInProgress, "", "")
		r.Notified++
		run.dirtyRun = true
		items = append(items, workItem{Rollout: r.ID, Tenant: sp.Tenant, Gateway: id, CommandID: g.CommandID, Spec: r.Spec.Deployment})
	}
	if rate > 0 {
		r.tokens -= float64(len(items))
	}
	return items
}

func countState(run *rolloutRun, states ...string) int {
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

// abort ends the rollout and, when the spec says so, rolls back the
// gateways that updated. c.mu is held.
func (c *Controller) abort(run *rolloutRun, reason string, now time.Time) []workItem {
	c.endRollout(run, RolloutAborted, reason, now)
	if !run.r.Spec.Abort.Rollback {
		return nil
	}
	var items []workItem
	for _, id := range run.order {
		g := run.gws[id]
		if g.State != GwSucceeded && g.State != GwInProgress {
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
		prev.Revision = run.spec.GetRevision() + 1
		raw, _ := protojson.Marshal(prev)
		g.RollbackRevision, g.State, g.DispatchedAt, g.Message = prev.GetRevision(), GwRollingBack, now, reason
		run.dirty[id] = struct{}{}
		items = append(items, workItem{Rollout: run.r.ID, Tenant: run.r.Spec.Tenant, Gateway: id,
			CommandID: rolloutCommandID(run.r.ID, id, g.Attempt, "rollback"), Spec: raw})
	}
	return items
}

// includeNew adds gateways that came to match the targets. c.mu is held.
func (c *Controller) includeNew(run *rolloutRun) {
	t := run.r.Spec.Targets
	if len(t.Gateways) > 0 {
		return
	}
	sel, _ := ParseSelector(t.Selector)
	f := Filter{Tenant: run.r.Spec.Tenant, Selector: sel}
	last := 1
	for _, g := range run.gws {
		last = max(last, g.Batch)
	}
	for _, g := range c.gateways {
		if _, in := run.gws[g.ID]; in || !f.match(g) || !rolloutGroupsMatch(t, g) {
			continue
		}
		run.add(g.ID, last)
	}
}

// work sends one queued dispatch.
func (c *Controller) work(ctx context.Context, data []byte) {
	var it workItem
	if err := json.Unmarshal(data, &it); err != nil {
		c.log.Error("bad rollout work item", "err", err)
		return
	}
	spec := new(fleetv1.DeploymentSpec)
	err := protojson.Unmarshal(it.Spec, spec)
	if err == nil {
		err = c.dispatchDeploy(ctx, it.Tenant, it.Gateway, it.Rollout, spec, it.CommandID)
	}
	if err != nil {
		c.log.Warn("rollout dispatch failed", "rollout", it.Rollout, "gateway", it.Gateway, "err", err)
		c.mu.Lock()
		if rec := c.commands[it.CommandID]; rec != nil && !rec.Final() {
			rec.State, rec.Message, rec.FinishedAt = StateUndelivered, err.Error(), c.cfg.Now()
			c.dirtyCmd(it.CommandID)
		} else if rec == nil {
			c.commands[it.CommandID] = &commandRecord{Command: Command{ID: it.CommandID, Batch: it.Rollout, Tenant: it.Tenant, Gateway: it.Gateway,
				Verb: string(topic.Deploy), State: StateUndelivered, Message: err.Error(), SentAt: c.cfg.Now(), FinishedAt: c.cfg.Now()}}
			c.dirtyCmd(it.CommandID)
		}
		c.mu.Unlock()
	}
}

// flushRollouts writes changed rollouts, their gateways and the last specs.
func (c *Controller) flushRollouts(ctx context.Context) error {
	c.mu.Lock()
	batch := map[string]any{}
	specs := map[string]any{}
	for id, run := range c.rollouts {
		if run.dirtyRun {
			r := *run.r
			batch[state.Key("r", id)] = &r
			run.dirtyRun = false
		}
		for gw := range run.dirty {
			g := *run.gws[gw]
			batch[state.Key("g", id, gw)] = &g
		}
		run.dirty = map[string]struct{}{}
	}
	for k := range c.dirtySpecs {
		specs[k] = c.lastSpecs[k]
	}
	c.dirtySpecs = map[string]struct{}{}
	c.mu.Unlock()
	return errors.Join(c.store.PutMany(ctx, state.Rollouts, batch), c.store.PutMany(ctx, state.Specs, specs))
}

// readRollouts reads the rollouts and the last specs from the store.
func (c *Controller) readRollouts(ctx context.Context) (map[string]*rolloutRun, map[string]json.RawMessage, error) {
	runs := map[string]*rolloutRun{}
	gws := map[string][]*RolloutGateway{}
	err := c.store.Each(ctx, state.Rollouts, func(_ string, raw []byte) error {
		var probe struct {
			Gateway string `json:"gateway"`
		}
		if err := json.Unmarshal(raw, &probe); err != nil {
			return err
		}
		if probe.Gateway != "" {
			var g RolloutGateway
			if err := json.Unmarshal(raw, &g); err != nil {
				return err
			}
			gws[g.Rollout] = append(gws[g.Rollout], &g)
			return nil
		}
		var r Rollout
		if err := json.Unmarshal(raw, &r); err != nil {
			return err
		}
		spec := new(fleetv1.DeploymentSpec)
		if err := protojson.Unmarshal(r.Spec.Deployment, spec); err != nil {
			return err
		}
		runs[r.ID] = &rolloutRun{r: &r, spec: spec, gws: map[string]*RolloutGateway{}, dirty: map[string]struct{}{}}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for id, list := range gws {
		run := runs[id]
		if run == nil {
			continue
		}
		sort.Slice(list, func(i, j int) bool {
			if list[i].Batch != list[j].Batch {
				return list[i].Batch < list[j].Batch
			}
			return list[i].Gateway < list[j].Gateway
		})
		for _, g := range list {
			run.gws[g.Gateway] = g
			run.order = append(run.order, g.Gateway)
		}
	}
	specs := map[string]json.RawMessage{}
	err = c.store.Each(ctx, state.Specs, func(k string, raw []byte) error {
		var spec json.RawMessage
		if err := json.Unmarshal(raw, &spec); err != nil {
			return err
		}
		specs[k] = spec
		return nil
	})
	return runs, specs, err
}
