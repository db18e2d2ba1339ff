package reconcile

import (
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Watch keeps statuses live from the engine's event stream (a crash, an
// OOM kill, a health change or a restart updates the status at once) and
// handles the engine's absence: while it is unreachable every status says
// so (RUNTIME_UNAVAILABLE) and the watch retries with back-off; when it is
// back, everything is reconciled. Watch returns when ctx ends.
func (r *Reconciler) Watch(ctx context.Context) {
	retry := backoff.Policy{Base: time.Second, Max: 30 * time.Second}
	for attempt := 0; ctx.Err() == nil; attempt++ {
		evs, errs := r.cfg.Engine.Events(ctx)
		// Reconcile after subscribing, so that no change falls in between.
		err := r.ReconcileAll(ctx)
		if err == nil {
			if attempt > 0 {
				r.log.Info("container engine is back; reconciled")
				r.cfg.Event(&fleetv1.Event{Severity: fleetv1.Event_INFO, Kind: "engine.available", Message: "the container engine is reachable again; deployments reconciled"})
			}
			attempt = 0
			err = r.follow(ctx, evs, errs)
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("container engine unreachable; retrying", "err", err)
		r.engineDown(ctx, err)
		select {
		case <-time.After(retry.Delay(attempt + 1)):
		case <-ctx.Done():
			return
		}
	}
}

// follow applies events until the stream fails.
func (r *Reconciler) follow(ctx context.Context, evs <-chan engine.Event, errs <-chan error) error {
	for {
		select {
		case ev, ok := <-evs:
			if !ok {
				select {
				case err := <-errs:
					return err
				default:
					return ctx.Err()
				}
			}
			r.refresh(ctx, ev.Deployment, ev.ContainerID, ev.Action)
		case err := <-errs:
			return err
		case <-ctx.Done():
			return nil
		}
	}
}

// refresh updates a deployment's status from the engine after an event on
// one of its services' current containers. Deployments with an operation
// in progress are left to the operation.
func (r *Reconciler) refresh(ctx context.Context, name, id, action string) {
	if name == "" || !r.opIdle(name) {
		return
	}
	st := r.current(name)
	if st == nil {
		return
	}
	i := slices.IndexFunc(st.GetServices(), func(ss *fleetv1.ServiceStatus) bool { return ss.GetContainerId() == id })
	if i < 0 {
		return
	}
	ss := st.Services[i]
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil || !ok {
		return
	}
	spec := new(fleetv1.DeploymentSpec)
	if err := proto.Unmarshal(d.Spec, spec); err != nil {
		return
	}
	before := proto.Clone(st).(*fleetv1.DeploymentStatus)
	r.fillService(ctx, ss, id, stoppedIn(d, ss.GetName()))
	explain(ss)
	st.Phase = appPhase(st, services(spec))
	rollup(st)
	summarize(st)
	before.UpdatedAt, st.UpdatedAt = nil, nil
	if proto.Equal(before, st) {
		return
	}
	r.log.Info("container changed", "deployment", name, "service", ss.GetName(), "action", action, "phase", ss.GetPhase(), "exit_code", ss.GetExitCode(), "oom", ss.GetOomKilled())
	r.publish(ctx, st)
}

// engineDown marks every status with the engine's absence.
func (r *Reconciler) engineDown(ctx context.Context, err error) {
	for _, st := range r.Statuses() {
		if st.GetCode() == fleetv1.Reply_RUNTIME_UNAVAILABLE {
			continue
		}
		st.Code = fleetv1.Reply_RUNTIME_UNAVAILABLE
		st.Message = sprintf("%v: the container engine is unreachable; the agent retries and reconciles when it is back", errdefs.ErrRuntimeUnavailable)
		r.publish(ctx, st)
	}
}
