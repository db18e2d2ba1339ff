package reconcile

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Apply makes spec the deployment's desired state and rolls it out (see
// rollout), returning the resulting status. It first checks spec, the
// policy and the stored revision: errors until then reject the spec, name
// their field under "spec" and store nothing. The same revision again,
// already running, returns its status without a rollout. Otherwise the spec
// is stored and accepted, if not nil, is called before the rollout begins,
// so that a caller can answer at once and let the rollout run.
func (r *Reconciler) Apply(ctx context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error) {
	st, err := r.admit(spec)
	if err != nil || st != nil {
		return st, err
	}
	notify(accepted)
	err = r.run(ctx, spec.GetName(), func(ctx context.Context) error {
		st, err = r.rollout(ctx, spec)
		return err
	})
	return st, err
}

// admit checks spec and stores it as the desired state. It returns the
// current status, and stores nothing, when that revision already runs.
func (r *Reconciler) admit(spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	if err := r.cfg.Policy.check(spec); err != nil {
		return nil, err
	}
	name := spec.GetName()
	cur, exists, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return nil, err
	}
	if exists {
		old := new(fleetv1.DeploymentSpec)
		if err := proto.Unmarshal(cur.Spec, old); err != nil {
			return nil, fmt.Errorf("stored spec of %s: %w", name, err)
		}
		switch {
		case spec.GetRevision() < old.GetRevision():
			return nil, &errdefs.FieldError{Field: specField + ".revision", Kind: errdefs.ErrStaleRevision,
				Msg: sprintf("revision %d is lower than revision %d deployed; send a revision above %d", spec.GetRevision(), old.GetRevision(), old.GetRevision())}
		case spec.GetRevision() == old.GetRevision() && engine.SpecHash(spec) != engine.SpecHash(old):
			return nil, errdefs.Invalid(specField+".revision", "revision %d is already deployed with a different spec; increase the revision", spec.GetRevision())
		case spec.GetRevision() == old.GetRevision():
			if st := r.current(name); st != nil && st.GetPhase() == fleetv1.DeploymentStatus_RUNNING && r.opIdle(name) {
				return st, nil // the same revision again: nothing to do
			}
		}
	}
	raw, err := proto.Marshal(spec)
	if err != nil {
		return nil, err
	}
	if err := r.cfg.Store.PutDeployment(name, store.Deployment{Spec: raw, ImageID: cur.ImageID, PreviousImageID: cur.PreviousImageID}); err != nil {
		return nil, fmt.Errorf("store desired state: %w", err)
	}
	return nil, nil
}

func notify(f func()) {
	if f != nil {
		f()
	}
}

// desired returns the stored spec of the deployment name; errors about
// the name name the field "name".
func (r *Reconciler) desired(name string) (*fleetv1.DeploymentSpec, error) {
	if err := topic.CheckDeploymentName(name); err != nil {
		return nil, errdefs.Invalid("name", "%v", err)
	}
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &errdefs.FieldError{Field: "name", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("no deployment %q on this gateway", name)}
	}
	spec := new(fleetv1.DeploymentSpec)
	if err := proto.Unmarshal(d.Spec, spec); err != nil {
		return nil, err
	}
	return spec, nil
}

func (r *Reconciler) setStopped(name string, stopped bool) error {
	d, _, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return err
	}
	d.Stopped = stopped
	return r.cfg.Store.PutDeployment(name, d)
}

// matching returns the deployment's container matching spec, if any.
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

// Stop stops the deployment's container; the deployment stays stopped,
// across agent and gateway restarts, until started.
func (r *Reconciler) Stop(ctx context.Context, name string) (*fleetv1.DeploymentStatus, error) {
	spec, err := r.desired(name)
	if err != nil {
		return nil, err
	}
	var st *fleetv1.DeploymentStatus
	err = r.run(ctx, name, func(ctx context.Context) error {
		st, err = r.stop(ctx, spec)
		return err
	})
	return st, err
}

func (r *Reconciler) stop(ctx context.Context, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	if err := r.setStopped(spec.GetName(), true); err != nil {
		return nil, err
	}
	c, err := r.matching(ctx, spec)
	if err != nil {
		return nil, recorded("stopped", err)
	}
	if c == nil {
		st := newStatus(spec, fleetv1.DeploymentStatus_STOPPED, "")
		r.publish(ctx, st)
		return st, nil
	}
	if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
		return nil, recorded("stopped", err)
	}
	return r.observe(ctx, spec, c.ID, true), nil
}

// Start starts the deployment's container; when it is gone, the
// deployment is rolled out again, and accepted (if not nil) is called
// before that rollout begins (as by Apply).
func (r *Reconciler) Start(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, false, accepted)
}

// Restart restarts the deployment's container, or starts a stopped one,
// as Start does.
func (r *Reconciler) Restart(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, true, accepted)
}

func (r *Reconciler) start(ctx context.Context, name string, restart bool, accepted func()) (*fleetv1.DeploymentStatus, error) {
	spec, err := r.desired(name)
	if err != nil {
		return nil, err
	}
	var st *fleetv1.DeploymentStatus
	err = r.run(ctx, name, func(ctx context.Context) error {
		if err := r.setStopped(name, false); err != nil {
			return err
		}
		c, err := r.matching(ctx, spec)
		if err != nil {
			return recorded("running", err)
		}
		if c == nil {
			// The container is gone: roll it out again.
			notify(accepted)
			st, err = r.rollout(ctx, spec)
			return err
		}
		if restart && c.Running {
			if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
				return err
			}
		}
		if err := r.cfg.Engine.Start(ctx, c.ID); err != nil {
			return err
		}
		st = r.observe(ctx, spec, c.ID, false)
		return nil
	})
	return st, err
}

// recorded explains an engine failure after the desired state was stored:
// the agent applies it when the engine is back.
func recorded(state string, err error) error {
	if errdefs.Code(err) == fleetv1.Reply_RUNTIME_UNAVAILABLE {
		return fmt.Errorf("%w; the deployment is recorded as %s and will be %s when the engine is back", err, state, state)
	}
	return err
}

// Remove removes the deployment: its containers go, its status is cleared
// and, with removeImage, its images are removed when no other deployment
// keeps them.
func (r *Reconciler) Remove(ctx context.Context, name string, removeImage bool) error {
	spec, err := r.desired(name)
	if err != nil {
		return err
	}
	return r.run(ctx, name, func(ctx context.Context) error { return r.remove(ctx, spec, removeImage) })
}

func (r *Reconciler) remove(ctx context.Context, spec *fleetv1.DeploymentSpec, removeImage bool) error {
	name := spec.GetName()
	r.publish(ctx, newStatus(spec, fleetv1.DeploymentStatus_REMOVING, ""))
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
	if err := r.cfg.Store.UnstageImage(name); err != nil {
		r.log.Warn("forget prefetched image", "deployment", name, "err", err)
	}
	if removeImage {
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
		r.goIfIdle(name, func(ctx context.Context) error { return r.reconcileOne(ctx, name) }, func(err error) {
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
	r.observe(ctx, spec, match.ID, d.Stopped)
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
	r.observe(ctx, spec, c.ID, true)
	return nil
}
