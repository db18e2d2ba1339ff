package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// CreateRollout validates spec, checks the image and its credential
// against the registry (refusing to start when that fails), supersedes an
// active rollout of the same deployment, and starts.
//
// Any replica takes it; a follower hands it to the scheduling replica
// once its own checks passed.
func (c *Controller) CreateRollout(ctx context.Context, spec rollout.Spec) (*rollout.Summary, error) {
	dep, err := spec.Validate()
	if err != nil {
		return nil, err
	}
	ci, err := c.checkImages(ctx, spec.Tenant, specImages(dep, "deployment"), spec.SkipRegistryCheck)
	if err != nil {
		return nil, err
	}
	targets, err := c.rolloutTargets(spec)
	if err != nil {
		return nil, err
	}
	return c.sched.Create(ctx, spec, dep, targets, ci.warnings)
}

// DryRunRollout checks spec as CreateRollout does (on any replica), and
// starts nothing: the gateways it would target and the registry check.
func (c *Controller) DryRunRollout(ctx context.Context, spec rollout.Spec) (*DryRun, error) {
	dep, err := spec.Validate()
	if err != nil {
		return nil, err
	}
	ci, err := c.checkImages(ctx, spec.Tenant, specImages(dep, "deployment"), spec.SkipRegistryCheck)
	if err != nil {
		return nil, err
	}
	targets, err := c.rolloutTargets(spec)
	if err != nil {
		return nil, err
	}
	out := &DryRun{Tenant: spec.Tenant, Gateways: make([]string, len(targets)), Check: ci.firstCheck(), Checks: ci.checks, Warnings: ci.warnings}
	for i, t := range targets {
		out.Gateways[i] = t.ID
	}
	return out, nil
}

// rolloutTargets lists the gateways a spec targets, in a stable order.
func (c *Controller) rolloutTargets(spec rollout.Spec) ([]rollout.Target, error) {
	t := spec.Targets
	var gws []*inventory.Gateway
	if len(t.Gateways) > 0 {
		var err error
		if gws, err = c.listed(spec.Tenant, t.Gateways); err != nil {
			return nil, err
		}
	} else {
		sel, _ := inventory.ParseSelector(t.Selector)
		gws = c.inv.List(inventory.Filter{Tenant: spec.Tenant, Selector: sel, AnyGroup: t.Groups})
	}
	if len(gws) == 0 && !t.IncludeNew {
		return nil, &errdefs.FieldError{Field: "targets", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("select no gateway of tenant %s (set includeNew to wait for some)", spec.Tenant)}
	}
	out := make([]rollout.Target, len(gws))
	for i, g := range gws {
		out[i] = rollout.Target{ID: g.ID, Online: g.Online}
	}
	return out, nil
}

// PauseRollout, ResumeRollout and CancelRollout are the operator's controls.
func (c *Controller) PauseRollout(ctx context.Context, id string) error {
	return c.sched.Pause(ctx, id)
}
func (c *Controller) ResumeRollout(ctx context.Context, id string) error {
	return c.sched.Resume(ctx, id)
}
func (c *Controller) CancelRollout(ctx context.Context, id string) error {
	return c.sched.Cancel(ctx, id)
}

// Rollouts lists rollouts, newest first.
func (c *Controller) Rollouts() []*rollout.Summary { return c.sched.List() }

// RolloutStatus is a rollout's summary; withGateways adds every gateway's
// record.
func (c *Controller) RolloutStatus(id string, withGateways bool) (*rollout.Summary, bool) {
	return c.sched.Status(id, withGateways)
}

// Leader reports whether this replica schedules rollouts.
func (c *Controller) Leader() bool { return c.sched.Leader() }

// Worked is how many rollout work items this replica sent.
func (c *Controller) Worked() uint64 { return c.worked.Load() }

// RolloutTicks is how many times this replica's scheduler stepped the
// rollouts: a test waits for it to grow instead of sleeping.
func (c *Controller) RolloutTicks() uint64 { return c.sched.Ticks() }

// work sends one queued dispatch; the scheduler of any replica queued it.
// The item only points at a stored rollout's gateway (rollout.Resolve),
// which gives the tenant and the spec: an item that points at nothing the
// store holds is dropped (acknowledged, never sent), logged and reported
// as a rollout.work.refused change. An item the store could not be asked
// about is not dropped: the error hands it out again shortly (Consume),
// where it was once acknowledged and left to the scheduler's requeue of
// what stayed unsent for 75 s. A command the broker did not acknowledge
// (a loaded broker's PUBACK later than paho's 10 s, a connection down) is
// sent again the same way, under the same command id, which a gateway
// that had it answers from its journal: it is recorded undelivered, and
// its gateway failed in the rollout, only on the item's last try. (Before,
// at once: a rollout of 300 gateways through a broker slowed by make
// test's load failed 22 of them and aborted, TestDeployNotAcknowledged.)
func (c *Controller) work(ctx context.Context, data []byte, lastTry bool) error {
	var d rollout.Dispatch
	if err := json.Unmarshal(data, &d); err != nil {
		c.refuseWork(d, fmt.Errorf("not a work item: %w", err))
		return nil
	}
	w, err := c.resolver.Resolve(ctx, d)
	if errors.Is(err, errdefs.ErrPermissionDenied) {
		c.refuseWork(d, err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("rollout %s, gateway %s: work not checked against the store, not sent yet: %w", d.Rollout, d.Gateway, err)
	}
	if c.delivered(w) {
		// Queued again (by a new scheduling replica, or handed out again
		// when a worker died), but the gateway has it already.
		return nil
	}
	c.worked.Add(1)
	if err := c.dispatchDeploy(ctx, w); err != nil {
		verb := topic.Deploy
		if w.Prefetch {
			verb = topic.Prefetch
		}
		if errors.Is(err, errNotPublished) && !lastTry {
			return fmt.Errorf("rollout %s, gateway %s: %s sent again shortly: %w", w.Rollout, w.Gateway, verb, err)
		}
		c.log.Warn("rollout dispatch failed", "rollout", w.Rollout, "gateway", w.Gateway, "verb", verb, "err", err)
		c.disp.Undelivered(w.CommandID, w.Rollout, w.Tenant, w.Gateway, string(verb), err)
	}
	return nil
}

// errNotPublished marks a command the broker did not acknowledge: it may
// or may not have reached the gateway.
var errNotPublished = errors.New("not acknowledged by the broker")

// refuseWork reports a work item no stored rollout accounts for: forged
// by a NATS client, or queued by a replica on another store.
func (c *Controller) refuseWork(d rollout.Dispatch, why error) {
	d.Rollout, d.Gateway, d.CommandID = clip(d.Rollout), clip(d.Gateway), clip(d.CommandID)
	c.log.Warn("rollout work item refused, not sent: it is not what a stored rollout dispatched (forged on the work queue?)",
		"rollout", d.Rollout, "gateway", d.Gateway, "command", d.CommandID, "reason", clip(why.Error()))
	c.hub.Publish(changes.Change{Kind: "rollout.work.refused", Severity: changes.Warning, At: c.cfg.Now(), Gateway: d.Gateway, Batch: d.Rollout,
		Command: d.CommandID, Message: clip(why.Error())})
}

// clip bounds what a work item's sender chose before it is logged.
func clip(s string) string {
	const maxLen = 256
	if len(s) <= maxLen {
		return s
	}
	return strings.ToValidUTF8(s[:maxLen], "") + "…"
}

// delivered reports whether w's command reached its gateway already: it
// answered (its record is past PENDING), or, for a deploy, the gateway
// reports the deployment at the spec's revision or later (its ACCEPTED
// went to the replica that sent it, which may be dead). A command
// recorded but still PENDING may never have been published (its worker
// died in between): it is sent again, and a gateway that had it answers
// from its journal without running it twice.
func (c *Controller) delivered(w rollout.Work) bool {
	cmd, ok := c.disp.Command(w.CommandID)
	if !ok {
		return false
	}
	if cmd.State != dispatch.Pending {
		return true
	}
	if w.Prefetch {
		return false
	}
	g, ok := c.inv.Get(w.Tenant, w.Gateway)
	if !ok {
		return false
	}
	d := g.Deployments[w.Spec.GetName()]
	return d != nil && d.Revision >= w.Spec.GetRevision()
}

// gatewayOf is a gateway a rollout dispatches to. With replicas, its
// birth may have been applied by another one within the last flush
// interval and not be written yet: the store is read again for up to two
// flush intervals before the gateway counts as unknown.
func (c *Controller) gatewayOf(ctx context.Context, tenant, id string) (*inventory.Gateway, bool) {
	deadline := time.Now().Add(2 * c.cfg.FlushInterval)
	for {
		if g, ok := c.inv.Fetch(ctx, c.store, tenant, id); ok || c.cfg.Share == "" || time.Now().After(deadline) {
			return g, ok
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dispatchDeploy sends w's spec to one gateway (a deploy, or a prefetch
// of its image), its credential first when it lacks it, under
// deterministic command ids.
func (c *Controller) dispatchDeploy(ctx context.Context, w rollout.Work) error {
	g, ok := c.gatewayOf(ctx, w.Tenant, w.Gateway)
	if !ok {
		return fmt.Errorf("gateway %s/%s is not in the inventory", w.Tenant, w.Gateway)
	}
	ci, err := c.checkImages(ctx, w.Tenant, specImages(w.Spec, "deployment"), true)
	if err != nil {
		return err
	}
	now := timestamppb.New(c.cfg.Now())
	var cmds []*fleetv1.Command
	if need := missing(g.Registries, ci.ahead); len(need) > 0 {
		set, err := tenantcred.Seal(g.PublicKey, need)
		if err != nil {
			return err
		}
		set.Id = w.CommandID + "c"
		cmds = append(cmds, set)
	}
	if w.Prefetch {
		cmds = append(cmds, &fleetv1.Command{Id: w.CommandID, Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: w.Spec}}})
	} else {
		cmds = append(cmds, &fleetv1.Command{Id: w.CommandID, Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: w.Spec}}})
	}
	for _, cmd := range cmds {
		cmd.IssuedAt = now
		if err := c.disp.Send(ctx, w.Rollout, w.Tenant, w.Gateway, g.Online, cmd); err != nil {
			return fmt.Errorf("%w: %w", errNotPublished, err)
		}
	}
	if !w.Prefetch {
		c.sched.Specs().Remember(w.Tenant, w.Gateway, w.Spec)
	}
	return nil
}
