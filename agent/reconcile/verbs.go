package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"

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
	kept := store.Deployment{Spec: raw, ImageID: cur.ImageID, PreviousImageID: cur.PreviousImageID, ImageIDs: cur.ImageIDs, PreviousImageIDs: cur.PreviousImageIDs}
	if err := r.cfg.Store.PutDeployment(name, kept); err != nil {
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

// recorded explains an engine failure after the desired state was stored:
// the agent applies it when the engine is back.
func recorded(state string, err error) error {
	if errdefs.Code(err) == fleetv1.Reply_RUNTIME_UNAVAILABLE {
		return fmt.Errorf("%w; the deployment is recorded as %s and will be %s when the engine is back", err, state, state)
	}
	return err
}

// targets is the services a verb acts on: all of spec's (svc empty, or
// a single container's own name), or the one named; whole reports the
// former.
func targets(spec *fleetv1.DeploymentSpec, svc string) (list []*service, whole bool, err error) {
	all := services(spec)
	if svc == "" || len(spec.GetServices()) == 0 && svc == spec.GetName() {
		return all, true, nil
	}
	s, err := findService(spec, svc)
	if err != nil {
		return nil, false, err
	}
	return []*service{s}, false, nil
}

// setStopped records the services stopped by command: the whole
// deployment, or one service.
func (r *Reconciler) setStopped(spec *fleetv1.DeploymentSpec, svc string, whole, stopped bool) error {
	name := spec.GetName()
	d, _, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return err
	}
	switch {
	case whole:
		d.Stopped, d.StoppedServices = stopped, nil
	case stopped:
		if !stoppedIn(d, svc) {
			d.StoppedServices = append(d.StoppedServices, svc)
		}
	case d.Stopped:
		d.Stopped, d.StoppedServices = false, nil
		for _, s := range services(spec) {
			if s.name != svc {
				d.StoppedServices = append(d.StoppedServices, s.name)
			}
		}
	default:
		d.StoppedServices = slices.DeleteFunc(d.StoppedServices, func(n string) bool { return n == svc })
	}
	return r.cfg.Store.PutDeployment(name, d)
}

// Stop stops the deployment's containers; the deployment stays stopped,
// across agent and gateway restarts, until started.
func (r *Reconciler) Stop(ctx context.Context, name string) (*fleetv1.DeploymentStatus, error) {
	return r.StopService(ctx, name, "")
}

// StopService stops one service of the deployment (svc), or all of them
// in reverse dependency order (svc empty); what is stopped stays stopped,
// across agent and gateway restarts, until started. An unknown service is
// NOT_FOUND, naming the field "service".
func (r *Reconciler) StopService(ctx context.Context, name, svc string) (*fleetv1.DeploymentStatus, error) {
	spec, err := r.desired(name)
	if err != nil {
		return nil, err
	}
	list, whole, err := targets(spec, svc)
	if err != nil {
		return nil, err
	}
	var st *fleetv1.DeploymentStatus
	err = r.run(ctx, name, func(ctx context.Context) error {
		st, err = r.stop(ctx, spec, list, svc, whole)
		return err
	})
	return st, err
}

func (r *Reconciler) stop(ctx context.Context, spec *fleetv1.DeploymentSpec, list []*service, svc string, whole bool) (*fleetv1.DeploymentStatus, error) {
	if err := r.setStopped(spec, svc, whole, true); err != nil {
		return nil, err
	}
	cs, err := r.containersOf(ctx, spec.GetName())
	if err != nil {
		return nil, recorded("stopped", err)
	}
	for _, s := range slices.Backward(list) {
		if c := currentOf(cs, s); c != nil {
			if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
				return nil, recorded("stopped", s.wrap(err))
			}
		}
	}
	return r.observe(ctx, spec), nil
}

// Start starts the deployment's containers; when one is gone, the
// deployment is rolled out again, and accepted (if not nil) is called
// before that rollout begins (as by Apply).
func (r *Reconciler) Start(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, "", false, accepted)
}

// Restart restarts the deployment's containers, or starts stopped ones,
// as Start does.
func (r *Reconciler) Restart(ctx context.Context, name string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, "", true, accepted)
}

// StartService starts one service (svc), or all of them in dependency
// order, each waiting for the conditions of those that depend on it (svc
// empty), as Start does.
func (r *Reconciler) StartService(ctx context.Context, name, svc string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, svc, false, accepted)
}

// RestartService restarts one service (svc), or all of them (stopped in
// reverse dependency order, started in dependency order), as Restart does.
func (r *Reconciler) RestartService(ctx context.Context, name, svc string, accepted func()) (*fleetv1.DeploymentStatus, error) {
	return r.start(ctx, name, svc, true, accepted)
}

func (r *Reconciler) start(ctx context.Context, name, svc string, restart bool, accepted func()) (*fleetv1.DeploymentStatus, error) {
	spec, err := r.desired(name)
	if err != nil {
		return nil, err
	}
	list, whole, err := targets(spec, svc)
	if err != nil {
		return nil, err
	}
	var st *fleetv1.DeploymentStatus
	err = r.run(ctx, name, func(ctx context.Context) error {
		if err := r.setStopped(spec, svc, whole, false); err != nil {
			return err
		}
		cs, err := r.containersOf(ctx, name)
		if err != nil {
			return recorded("running", err)
		}
		if slices.ContainsFunc(list, func(s *service) bool { return currentOf(cs, s) == nil }) {
			// A container is gone: roll the deployment out again.
			notify(accepted)
			if st, err = r.rollout(ctx, spec); err != nil {
				return err
			}
			st, err = r.keepStopped(ctx, spec)
			return err
		}
		err = r.startAll(ctx, cs, list, restart, whole)
		st = r.observe(ctx, spec)
		return err
	})
	return st, err
}

// startAll (re)starts the services' containers in dependency order (after
// stopping them in reverse for a restart); with whole, a service others
// depend on must be ready (or, a job, complete) before the next starts.
func (r *Reconciler) startAll(ctx context.Context, cs []engine.Container, list []*service, restart, whole bool) error {
	if restart {
		for _, s := range slices.Backward(list) {
			if c := currentOf(cs, s); c.Running {
				if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
					return s.wrap(err)
				}
			}
		}
	}
	for _, s := range list {
		c := currentOf(cs, s)
		if err := r.cfg.Engine.Start(ctx, c.ID); err != nil {
			return s.wrap(err)
		}
		if !whole || !s.dependents {
			continue
		}
		wait := r.waitReady
		if s.job {
			wait = r.waitCompleted
		}
		if err := wait(ctx, s.spec, c.ID, &fleetv1.ServiceStatus{}); err != nil && !errors.Is(err, errEnded) {
			return s.wrap(err)
		}
	}
	return nil
}

// Remove removes the deployment: its containers and networks go, its
// status is cleared and, with removeImage, its images are removed when no
// other deployment keeps them. Its volumes are kept.
func (r *Reconciler) Remove(ctx context.Context, name string, removeImage bool) error {
	return r.RemoveWith(ctx, name, removeImage, false)
}

// RemoveWith removes the deployment as Remove does and, with
// removeVolumes, the named volumes the application owns.
func (r *Reconciler) RemoveWith(ctx context.Context, name string, removeImage, removeVolumes bool) error {
	spec, err := r.desired(name)
	if err != nil {
		return err
	}
	return r.run(ctx, name, func(ctx context.Context) error { return r.remove(ctx, spec, removeImage, removeVolumes) })
}

func (r *Reconciler) remove(ctx context.Context, spec *fleetv1.DeploymentSpec, removeImage, removeVolumes bool) error {
	name := spec.GetName()
	r.publish(ctx, newStatus(spec, fleetv1.DeploymentStatus_REMOVING))
	cs, err := r.containersOf(ctx, name)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
			return err
		}
	}
	for i, n := range spec.GetNetworks() {
		if err := r.cfg.Engine.RemoveNetwork(ctx, r.resourceName(appResource(name, n.GetName()))); err != nil {
			return fmt.Errorf("%s.networks[%d]: %w", specField, i, err)
		}
	}
	for i, v := range spec.GetVolumes() {
		if removeVolumes {
			if err := r.cfg.Engine.RemoveVolume(ctx, r.resourceName(appResource(name, v.GetName()))); err != nil {
				return fmt.Errorf("%s.volumes[%d]: %w", specField, i, err)
			}
		}
	}
	d, _, err := r.cfg.Store.GetDeployment(name)
	if err != nil {
		return err
	}
	if err := r.cfg.Store.DeleteDeployment(name); err != nil {
		return err
	}
	for _, s := range services(spec) {
		if err := r.cfg.Store.UnstageImage(stagedKey(name, s)); err != nil {
			r.log.Warn("forget prefetched image", "deployment", name, "err", err)
		}
	}
	if removeImage {
		r.removeImages(ctx, slices.Concat([]string{d.ImageID, d.PreviousImageID}, d.ImageIDs, d.PreviousImageIDs))
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

// reconcileOne brings one deployment to its stored desired state: when
// every service has its container, they are adopted (started, or kept
// stopped, in dependency order); else the deployment is rolled out.
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
	svcs := services(spec)
	if slices.ContainsFunc(svcs, func(s *service) bool { return currentOf(cs, s) == nil }) {
		r.log.Info("deployment's container missing or outdated; rolling it out", "deployment", name)
		if _, err := r.rollout(ctx, spec); err != nil || !d.Stopped && len(d.StoppedServices) == 0 {
			return err
		}
		_, err := r.keepStopped(ctx, spec)
		return err
	}
	for _, c := range cs {
		if !slices.ContainsFunc(svcs, func(s *service) bool { return currentOf(cs, s).ID == c.ID }) {
			r.cfg.Engine.Remove(ctx, c.ID)
		}
	}
	for _, s := range svcs {
		c, stopped := currentOf(cs, s), stoppedIn(d, s.name)
		switch {
		case stopped && c.Running:
			if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
				r.log.Warn("keep deployment stopped", "deployment", name, "service", s.name, "err", err)
			}
		case !stopped && !r.up(ctx, s, *c):
			if err := r.cfg.Engine.Start(ctx, c.ID); err != nil {
				r.log.Warn("start deployment", "deployment", name, "service", s.name, "err", err)
			}
		}
	}
	r.observe(ctx, spec)
	return nil
}

// keepStopped stops, after a rollout, the services stopped by command.
func (r *Reconciler) keepStopped(ctx context.Context, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	d, _, err := r.cfg.Store.GetDeployment(spec.GetName())
	if err != nil {
		return nil, err
	}
	cs, err := r.containersOf(ctx, spec.GetName())
	if err != nil {
		return nil, err
	}
	for _, s := range slices.Backward(services(spec)) {
		if c := currentOf(cs, s); c != nil && c.Running && stoppedIn(d, s.name) {
			if err := r.cfg.Engine.Stop(ctx, c.ID, nil); err != nil {
				return nil, s.wrap(err)
			}
		}
	}
	return r.observe(ctx, spec), nil
}
