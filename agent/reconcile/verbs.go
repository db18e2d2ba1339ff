package reconcile

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// ref returns the deployment a remove/start/stop/restart names, its desired
// state and spec.
func (r *Reconciler) ref(x *command.Exec) (name string, spec *fleetv1.DeploymentSpec, stopped bool, err error) {
	verb := topic.VerbOf(x.Command)
	var dr *fleetv1.DeploymentRef
	switch b := x.Command.GetBody().(type) {
	case *fleetv1.Command_Remove:
		dr = b.Remove
	case *fleetv1.Command_Start:
		dr = b.Start
	case *fleetv1.Command_Stop:
		dr = b.Stop
	case *fleetv1.Command_Restart:
		dr = b.Restart
	}
	field := verb.BodyField() + ".name"
	name = dr.GetName()
	if err := topic.CheckDeploymentName(name); err != nil {
		return "", nil, false, errdefs.Invalid(field, "%v", err)
	}
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return "", nil, false, err
	}
	if !ok {
		return name, nil, false, &errdefs.FieldError{Field: field, Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("no deployment %q on this gateway", name)}
	}
	spec = new(fleetv1.DeploymentSpec)
	if err := proto.Unmarshal(d.Spec, spec); err != nil {
		return "", nil, false, err
	}
	return name, spec, d.Stopped, nil
}

func (r *Reconciler) setStopped(name string, stopped bool) error {
	d, _, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return err
	}
	d.Stopped = stopped
	return r.cfg.Store.PutDeployment(name, d)
}

// running returns the deployment's container matching spec, if any.
func (r *Reconciler) matching(ctx context.Context, spec *fleetv1.DeploymentSpec) (*engine.Container, error) {
	cs, err := r.containersOf(ctx, spec.GetName())
	if err != nil {
		return nil, err
	}
	hash := engine.SpecHash(spec)
	for i := range cs {
		if cs[i].SpecHash == hash {
			return &cs[i], nil
		}
	}
	return nil, nil
}

// Stop handles the stop verb: the deployment stays stopped, across agent
// and gateway restarts, until started.
func (r *Reconciler) Stop(ctx context.Context, x *command.Exec) error {
	name, spec, _, err := r.ref(x)
	if err != nil {
		return err
	}
	return r.run(ctx, name, func(ctx context.Context) error { return r.stop(ctx, x, name, spec) })
}

func (r *Reconciler) stop(ctx context.Context, x *command.Exec, name string, spec *fleetv1.DeploymentSpec) error {
	if err := r.setStopped(name, true); err != nil {
		return err
	}
	st := &fleetv1.DeploymentStatus{Name: name, Revision: spec.GetRevision(), Image: spec.GetImage(), Phase: fleetv1.DeploymentStatus_STOPPED}
	c, err := r.matching(ctx, spec)
	if err != nil {
		return recorded("stopped", err)
	}
	if c != nil {
		st.ContainerId = c.ID
		if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
			return recorded("stopped", err)
		}
		r.fillFromEngine(ctx, st, c.ID, true)
	}
	r.publish(ctx, st)
	x.Reply.Status = st
	return nil
}

// Start handles the start verb.
func (r *Reconciler) Start(ctx context.Context, x *command.Exec) error {
	return r.startOrRestart(ctx, x, false)
}

// Restart handles the restart verb; a stopped deployment is started.
func (r *Reconciler) Restart(ctx context.Context, x *command.Exec) error {
	return r.startOrRestart(ctx, x, true)
}

func (r *Reconciler) startOrRestart(ctx context.Context, x *command.Exec, restart bool) error {
	name, spec, _, err := r.ref(x)
	if err != nil {
		return err
	}
	err = r.run(ctx, name, func(ctx context.Context) error { return r.startExisting(ctx, x, name, spec, restart) })
	if errors.Is(err, errGone) {
		// The container is gone: roll it out again.
		r.rolloutFor(x, spec)
		return nil
	}
	return err
}

var errGone = errors.New("container gone")

func (r *Reconciler) startExisting(ctx context.Context, x *command.Exec, name string, spec *fleetv1.DeploymentSpec, restart bool) error {
	if err := r.setStopped(name, false); err != nil {
		return err
	}
	c, err := r.matching(ctx, spec)
	if err != nil {
		return recorded("running", err)
	}
	if c == nil {
		return errGone
	}
	if restart && c.Running {
		if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
			return err
		}
	}
	if err := r.cfg.Engine.Start(ctx, c.ID); err != nil {
		return err
	}
	st := &fleetv1.DeploymentStatus{Name: name, Revision: spec.GetRevision(), Image: spec.GetImage(), ContainerId: c.ID}
	r.fillFromEngine(ctx, st, c.ID, false)
	r.publish(ctx, st)
	x.Reply.Status = st
	return nil
}

// recorded explains an engine failure after the desired state was stored:
// the agent applies it when the engine is back.
func recorded(state string, err error) error {
	if errdefs.Code(err) == fleetv1.Reply_RUNTIME_UNAVAILABLE {
		return fmt.Errorf("%w; the deployment is recorded as %s and will be %s when the engine is back", err, state, state)
	}
	return err
}

// Remove handles the remove verb: the containers go, the retained status is
// cleared and, with removeImage, the image is removed when unused.
func (r *Reconciler) Remove(ctx context.Context, x *command.Exec) error {
	name, spec, _, err := r.ref(x)
	if err != nil {
		return err
	}
	return r.run(ctx, name, func(ctx context.Context) error { return r.remove(ctx, x, name, spec) })
}

func (r *Reconciler) remove(ctx context.Context, x *command.Exec, name string, spec *fleetv1.DeploymentSpec) error {
	r.publish(ctx, &fleetv1.DeploymentStatus{Name: name, Revision: spec.GetRevision(), Image: spec.GetImage(), Phase: fleetv1.DeploymentStatus_REMOVING})
	cs, err := r.containersOf(ctx, name)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
			return err
		}
	}
	d, _, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return err
	}
	if err := r.cfg.Store.DeleteDeployment(name); err != nil {
		return err
	}
	if x.Command.GetRemove().GetRemoveImage() {
		r.removeImages(ctx, []string{d.ImageID, d.PreviousImageID})
	}
	r.gc(ctx)
	r.clear(ctx, name)
	return nil
}

// ReconcileAll brings the engine to the desired state: containers of
// deployments no longer desired are removed, matching ones adopted (and
// started, or kept stopped), missing or outdated ones rolled out. It is run
// on every agent start and whenever the engine comes back. The work on each
// deployment is an operation of its own, begun only if none is in progress,
// that reads the deployment's desired state when it runs: a pass never rolls
// out a spec older than the one stored.
func (r *Reconciler) ReconcileAll(ctx context.Context) error {
	// The engine first, then the store: a deploy stores its spec before it
	// creates a container, so a listed container whose deployment is not
	// desired below is one no deployment owns.
	cs, err := r.cfg.Engine.List(ctx)
	if err != nil {
		return err
	}
	desired, err := r.cfg.Store.Deployments()
	if err != nil {
		return err
	}
	for _, c := range cs {
		if _, ok := desired[c.Deployment]; !ok {
			r.log.Info("removing a managed container no deployment owns", "container", c.Name, "deployment", c.Deployment)
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				r.log.Warn("remove orphan", "container", c.Name, "err", err)
			}
		}
	}
	for name := range desired {
		r.goRun(name, true, func(ctx context.Context) error { return r.reconcileOne(ctx, name) }, func(err error) {
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, errdefs.ErrSuperseded) {
				r.log.Warn("reconcile deployment", "deployment", name, "err", err)
			}
		})
	}
	return nil
}

// reconcileOne brings one deployment to its stored desired state.
func (r *Reconciler) reconcileOne(ctx context.Context, name string) error {
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil || !ok {
		return err
	}
	spec := new(fleetv1.DeploymentSpec)
	if err := proto.Unmarshal(d.Spec, spec); err != nil {
		r.log.Error("stored spec unreadable", "deployment", name, "err", err)
		return nil
	}
	cs, err := r.containersOf(ctx, name)
	if err != nil {
		return err
	}
	hash := engine.SpecHash(spec)
	var match *engine.Container
	for i := range cs {
		if cs[i].SpecHash == hash {
			match = &cs[i]
		}
	}
	if match == nil {
		r.log.Info("deployment's container missing or outdated; rolling it out", "deployment", name)
		if _, err := r.rollout(ctx, spec); err != nil || !d.Stopped {
			return err
		}
		return r.stopAfterRollout(ctx, spec)
	}
	for _, c := range cs {
		if c.ID != match.ID {
			r.cfg.Engine.Remove(ctx, c.ID)
		}
	}
	switch {
	case d.Stopped && match.Running:
		if err := r.cfg.Engine.Stop(ctx, match.ID, nil); err != nil {
			r.log.Warn("keep deployment stopped", "deployment", name, "err", err)
		}
	case !d.Stopped && !match.Running:
		if err := r.cfg.Engine.Start(ctx, match.ID); err != nil {
			r.log.Warn("start deployment", "deployment", name, "err", err)
		}
	}
	st := &fleetv1.DeploymentStatus{Name: name, Revision: spec.GetRevision(), Image: spec.GetImage(), ContainerId: match.ID}
	r.fillFromEngine(ctx, st, match.ID, d.Stopped)
	r.publish(ctx, st)
	return nil
}

func (r *Reconciler) stopAfterRollout(ctx context.Context, spec *fleetv1.DeploymentSpec) error {
	c, err := r.matching(ctx, spec)
	if err != nil || c == nil {
		return err
	}
	if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
		return err
	}
	st := &fleetv1.DeploymentStatus{Name: spec.GetName(), Revision: spec.GetRevision(), Image: spec.GetImage(), ContainerId: c.ID}
	r.fillFromEngine(ctx, st, c.ID, true)
	r.publish(ctx, st)
	return nil
}
