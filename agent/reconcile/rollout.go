package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// unit is one service's part in a rollout.
type unit struct {
	svc *service
	st  *fleetv1.ServiceStatus // its entry in the rollout's status
	// keep is the container of a service that did not change, kept as it is.
	keep *engine.Container
	// old is the previous revision's container, replaced; oldRunning: it
	// ran when the rollout began (and is not named as the new one).
	old        *engine.Container
	oldRunning bool
	imageID    string // the image the new container is created from
	pulled     bool   // the agent pulled that image
	id         string // the new container, once created
}

// rollout brings the deployment to spec. Every service's image is pulled
// before any container is touched. Then, in dependency order, each service
// whose container differs from its spec is replaced (the old container
// stopped first unless the strategy is START_FIRST) and must become ready
// (running, and healthy if it has a health check, for minReadySeconds; a
// job another service waits for: exited 0) within progressDeadlineSeconds.
// If one does not, the whole deployment is rolled back: every new container
// is removed and the previous ones started again (ROLLED_BACK). A service
// that did not change keeps its container.
func (r *Reconciler) rollout(ctx context.Context, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	name := spec.GetName()
	st := newStatus(spec, fleetv1.DeploymentStatus_PENDING)
	units := unitsOf(spec, st)
	r.publish(ctx, st)
	fail := func(phase fleetv1.DeploymentStatus_Phase, err error) (*fleetv1.DeploymentStatus, error) {
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errSuperseded) {
			return st, err // shutdown: the command resumes on the next start
		}
		st.Phase, st.Code, st.Message = phase, errdefs.Code(err), err.Error()
		r.publish(context.WithoutCancel(ctx), st)
		return st, err
	}

	existing, err := r.containersOf(ctx, name)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	if r.plan(ctx, units, existing) {
		// Already there (a resumed command, or the same revision again).
		return r.adopt(ctx, spec, units, existing), nil
	}

	st.Phase = fleetv1.DeploymentStatus_PULLING
	r.publish(ctx, st)
	r.imageUse.RLock() // until the images are recorded (see imageUse)
	using := true
	defer func() {
		if using {
			r.imageUse.RUnlock()
		}
	}()
	for _, u := range units {
		if err := r.prepare(ctx, u, st); err != nil {
			return fail(fleetv1.DeploymentStatus_FAILED, u.svc.wrap(u.svc.under(err)))
		}
	}
	st.PullProgress = nil
	if err := r.ensureNetworks(ctx, spec); err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	if phase, err := r.replaceAll(ctx, st, units, existing); err != nil {
		return fail(phase, err)
	}
	for _, c := range existing {
		if !slices.ContainsFunc(units, func(u *unit) bool { return u.containerID() == c.ID }) {
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				r.log.Warn("remove previous container", "deployment", name, "container", c.Name, "err", err)
			}
		}
	}
	svcs := make([]*service, len(units))
	for i, u := range units {
		svcs[i] = u.svc
	}
	// RUNNING, or EXITED for a single container that completed its work.
	st.Phase, st.Code, st.Message = appPhase(st, svcs), fleetv1.Reply_OK, ""
	r.publish(ctx, st)
	r.recordImages(ctx, spec, units)
	r.imageUse.RUnlock()
	using = false
	r.gc(ctx)
	return st, nil
}

// unitsOf is spec's services in dependency order, each with its entry in st.
func unitsOf(spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus) []*unit {
	var units []*unit
	for _, s := range services(spec) {
		units = append(units, &unit{svc: s, st: serviceStatus(st, s.name)})
	}
	return units
}

func (u *unit) containerID() string {
	if u.keep != nil {
		return u.keep.ID
	}
	return u.id
}

// plan finds each service's container to keep or to replace among the
// deployment's existing ones; it reports whether every service is kept.
func (r *Reconciler) plan(ctx context.Context, units []*unit, existing []engine.Container) bool {
	all := true
	for _, u := range units {
		for i := range existing {
			c := &existing[i]
			if serviceOf(*c) != u.svc.name {
				continue
			}
			if c.SpecHash == u.svc.hash {
				if u.keep == nil && r.up(ctx, u.svc, *c) {
					u.keep = c
				}
				continue
			}
			if u.old == nil || c.Running && !u.old.Running || c.Running == u.old.Running && c.Revision > u.old.Revision {
				u.old = c
			}
		}
		u.oldRunning = u.old != nil && u.old.Running && u.old.Name != r.resourceName(u.svc.containerName(u.svc.spec.GetRevision()))
		all = all && u.keep != nil
	}
	return all
}

// up reports whether c is what its service should be now: running, or,
// for a service that may end (a job), exited 0.
func (r *Reconciler) up(ctx context.Context, s *service, c engine.Container) bool {
	if c.Running || !s.mayEnd {
		return c.Running
	}
	st, err := r.cfg.Engine.Inspect(ctx, c.ID)
	return err == nil && completed(st)
}

func completed(s engine.State) bool {
	return !s.Running && (s.Status == "exited" || s.Status == "dead") && s.ExitCode == 0 && !s.OOMKilled
}

// prepare checks and pulls the image of a service to replace (trust
// policy, pull policy, the image the engine then holds).
func (r *Reconciler) prepare(ctx context.Context, u *unit, st *fleetv1.DeploymentStatus) error {
	spec := u.svc.spec
	if u.keep != nil {
		if _, digests, _, err := r.localImage(ctx, spec); err == nil {
			u.st.ImageDigest = first(digests)
		}
		return nil
	}
	vouched, err := r.trusted(ctx, spec)
	if err != nil {
		return err
	}
	digest, pulled, err := r.ensureImage(ctx, spec, st)
	if err != nil {
		return err
	}
	imageID, digests, _, err := r.localImage(ctx, spec)
	if err != nil {
		return err
	}
	if vouched != "" {
		if !slices.Contains(digests, vouched) {
			return changedErr(spec, vouched, digests)
		}
		digest = vouched
	}
	u.st.ImageDigest, u.imageID, u.pulled = digest, imageID, pulled
	return nil
}

// ensureNetworks creates the application's networks the engine lacks.
func (r *Reconciler) ensureNetworks(ctx context.Context, spec *fleetv1.DeploymentSpec) error {
	for i, n := range spec.GetNetworks() {
		if err := r.cfg.Engine.EnsureNetwork(ctx, r.resourceName(appResource(spec.GetName(), n.GetName())), n.GetInternal()); err != nil {
			return fmt.Errorf("%s.networks[%d]: %w", specField, i, err)
		}
	}
	return nil
}

// replaceAll replaces, in dependency order, the services not kept. When one
// fails, the whole deployment is rolled back; the phase returned with the
// error is then ROLLED_BACK, else FAILED.
func (r *Reconciler) replaceAll(ctx context.Context, st *fleetv1.DeploymentStatus, units []*unit, existing []engine.Container) (fleetv1.DeploymentStatus_Phase, error) {
	started := false
	for _, u := range units {
		if u.keep != nil {
			u.st.ContainerId = u.keep.ID
			r.fillService(ctx, u.st, u.keep.ID, false)
			continue
		}
		err := r.awaitKept(ctx, u, units)
		if err == nil {
			err = r.replace(ctx, st, u, existing, &started)
		}
		if err != nil {
			u.st.Phase, u.st.Code, u.st.Message = fleetv1.DeploymentStatus_FAILED, errdefs.Code(err), capMessage(err.Error())
			return r.rollback(ctx, units, u.svc.wrap(err), started)
		}
	}
	return fleetv1.DeploymentStatus_RUNNING, nil
}

// awaitKept waits, within u's progress deadline, until the kept services u
// depends on meet their condition (a replaced one was waited for when it
// started): running, healthy, or completed.
func (r *Reconciler) awaitKept(ctx context.Context, u *unit, units []*unit) error {
	for _, d := range u.svc.dependsOn {
		i := slices.IndexFunc(units, func(o *unit) bool { return o.svc.name == d.GetService() })
		if i < 0 || units[i].keep == nil {
			continue
		}
		if err := r.waitCondition(ctx, u.svc.spec, units[i].keep.ID, d.GetCondition()); err != nil {
			return fmt.Errorf("service %s (%v): %w", d.GetService(), d.GetCondition(), err)
		}
	}
	return nil
}

// waitCondition waits until container id meets cond, within spec's
// progress deadline.
func (r *Reconciler) waitCondition(ctx context.Context, spec *fleetv1.DeploymentSpec, id string, cond fleetv1.Dependency_Condition) error {
	ctx, cancel, deadline := progressDeadline(ctx, spec, 0)
	defer cancel()
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		s, err := r.cfg.Engine.Inspect(ctx, id)
		if err != nil {
			return err
		}
		switch cond {
		case fleetv1.Dependency_COMPLETED_SUCCESSFULLY:
			if completed(s) {
				return nil
			}
		case fleetv1.Dependency_HEALTHY:
			if s.Running && s.Health == fleetv1.HealthCheck_HEALTHY {
				return nil
			}
		default:
			if s.Running {
				return nil
			}
		}
		if err := r.tick(ctx, tick, deadline); err != nil {
			return err
		}
	}
}

// replace creates the service's new container, stops the old one unless
// the strategy is START_FIRST, starts the new one and waits until it is
// ready; started is set once a container of this revision was started.
func (r *Reconciler) replace(ctx context.Context, st *fleetv1.DeploymentStatus, u *unit, existing []engine.Container, started *bool) error {
	st.Phase, u.st.Phase = fleetv1.DeploymentStatus_CREATING, fleetv1.DeploymentStatus_CREATING
	r.publish(ctx, st)
	id, err := r.create(ctx, u, existing)
	if err != nil {
		return err
	}
	u.id, u.st.ContainerId = id, id
	if u.oldRunning && u.svc.spec.GetUpdate().GetStrategy() != fleetv1.Update_START_FIRST {
		if err := r.cfg.Engine.Stop(ctx, u.old.ID, nil); err != nil {
			return err
		}
	}
	st.Phase, u.st.Phase = fleetv1.DeploymentStatus_STARTING, fleetv1.DeploymentStatus_STARTING
	r.publish(ctx, st)
	*started = true
	if err := r.cfg.Engine.Start(ctx, id); err != nil {
		return err
	}
	if u.svc.job {
		if err := r.waitCompleted(ctx, u.svc.spec, id, u.st); err != nil {
			return err
		}
		u.st.Phase = fleetv1.DeploymentStatus_EXITED
		return nil
	}
	err = r.waitReady(ctx, u.svc.spec, id, u.st)
	if errors.Is(err, errEnded) {
		u.st.Phase = fleetv1.DeploymentStatus_EXITED
		return nil
	}
	if err != nil {
		return err
	}
	u.st.Phase = fleetv1.DeploymentStatus_RUNNING
	return nil
}

// create creates the service's container of this revision (CREATING),
// replacing one left over from an interrupted attempt.
func (r *Reconciler) create(ctx context.Context, u *unit, existing []engine.Container) (string, error) {
	spec := u.svc.spec
	newName := r.resourceName(u.svc.containerName(spec.GetRevision()))
	for _, c := range existing {
		if c.Name == newName {
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				return "", err
			}
		}
	}
	// The policy again, just before creation: a host path may have become
	// a symlink since admission; the engine mounts what was checked here.
	host, err := r.cfg.Policy.place(spec)
	if err != nil {
		return "", u.svc.under(err)
	}
	spec, host = r.engineNames(u.svc, spec, u.svc.host(host))
	id, err := r.cfg.Engine.Create(ctx, newName, spec, host)
	if err != nil {
		return "", u.svc.under(err)
	}
	// The container must hold exactly the image checked above: a name
	// retagged meanwhile is refused, not run.
	if s, err := r.cfg.Engine.Inspect(ctx, id); err != nil || u.imageID != "" && s.ImageID != u.imageID {
		r.cfg.Engine.Remove(context.WithoutCancel(ctx), id)
		if err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: %s was retagged while the container was created (verified image %s, the container got %s); deploy again",
			errdefs.ErrUntrustedImage, spec.GetImage(), u.imageID, s.ImageID)
	}
	return id, nil
}

// rollback removes every container this rollout created and starts the
// previous ones again, in dependency order. The phase is ROLLED_BACK when
// a container of the new revision had started and the previous revision
// runs again, else FAILED.
func (r *Reconciler) rollback(ctx context.Context, units []*unit, cause error, started bool) (fleetv1.DeploymentStatus_Phase, error) {
	bg := context.WithoutCancel(ctx)
	for _, u := range slices.Backward(units) {
		if u.id == "" {
			continue
		}
		if err := r.cfg.Engine.Remove(bg, u.id); err != nil {
			r.log.Error("remove failed container", "deployment", u.svc.spec.GetName(), "service", u.svc.name, "err", err)
		}
		u.id, u.st.ContainerId = "", ""
	}
	var prev int64
	restored, broken := false, false
	for _, u := range units {
		switch {
		case u.keep != nil:
			prev, restored = max(prev, u.keep.Revision), true
		case u.oldRunning:
			if err := r.cfg.Engine.Start(bg, u.old.ID); err != nil {
				r.log.Error("restart previous container", "deployment", u.svc.spec.GetName(), "service", u.svc.name, "err", err)
				broken = true
				continue
			}
			prev, restored = max(prev, u.old.Revision), true
			u.st.ContainerId = u.old.ID
			r.fillService(bg, u.st, u.old.ID, false)
		}
	}
	if !started || !restored || broken {
		return fleetv1.DeploymentStatus_FAILED, cause
	}
	spec := units[0].svc.spec
	r.cfg.Event(&fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "deployment.rolled-back", Deployment: spec.GetName(),
		Code: errdefs.Code(cause), Message: sprintf("revision %d did not become ready (%v); revision %d runs again", spec.GetRevision(), cause, prev)})
	return fleetv1.DeploymentStatus_ROLLED_BACK, fmt.Errorf("rolled back to revision %d: %w", prev, cause)
}

// adopt takes over the containers that already match spec, removing the
// deployment's others.
func (r *Reconciler) adopt(ctx context.Context, spec *fleetv1.DeploymentSpec, units []*unit, all []engine.Container) *fleetv1.DeploymentStatus {
	for _, c := range all {
		if !slices.ContainsFunc(units, func(u *unit) bool { return u.containerID() == c.ID }) {
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				r.log.Warn("remove stale container", "deployment", spec.GetName(), "container", c.Name, "err", err)
			}
		}
	}
	return r.observe(ctx, spec)
}

// errEnded is waitReady's answer for a container that exited 0 before
// it was ready, its restart policy letting it end (mayEnd): it has
// completed.
var errEnded = errors.New("the container completed")

// waitReady waits until the container has been running (and healthy, if it
// has a health check) without a restart for minReadySeconds.
func (r *Reconciler) waitReady(ctx context.Context, spec *fleetv1.DeploymentSpec, id string, ss *fleetv1.ServiceStatus) error {
	minReady := time.Duration(spec.GetUpdate().GetMinReadySeconds()) * time.Second
	ctx, cancel, deadline := progressDeadline(ctx, spec, minReady)
	defer cancel()
	var readySince time.Time
	restarts := -1
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		s, err := r.cfg.Engine.Inspect(ctx, id)
		if err != nil {
			return err
		}
		ss.Health, ss.RestartCount = s.Health, uint32(s.RestartCount)
		switch {
		case completed(s) && mayEnd(spec):
			ss.ExitCode, ss.OomKilled = 0, false
			return errEnded
		case !s.Running && (s.Status == "exited" || s.Status == "dead"):
			ss.ExitCode, ss.OomKilled = int32(s.ExitCode), s.OOMKilled
			why := sprintf("the container exited with code %d", s.ExitCode)
			if s.OOMKilled {
				why = "the container was killed for exceeding its memory limit (OOM)"
			}
			return fmt.Errorf("%w: %s before it was ready", errdefs.ErrUnhealthy, why)
		case s.Health == fleetv1.HealthCheck_UNHEALTHY:
			return fmt.Errorf("%w: the container's health check failed", errdefs.ErrUnhealthy)
		case s.Running && (s.Health == fleetv1.HealthCheck_NONE || s.Health == fleetv1.HealthCheck_HEALTHY):
			if readySince.IsZero() || s.RestartCount != restarts {
				readySince, restarts = r.cfg.Now(), s.RestartCount
			}
			if r.cfg.Now().Sub(readySince) >= minReady {
				return nil
			}
		default:
			readySince = time.Time{}
		}
		if err := r.tick(ctx, tick, deadline); err != nil {
			return err
		}
	}
}

// waitCompleted waits until a job's container has exited 0.
func (r *Reconciler) waitCompleted(ctx context.Context, spec *fleetv1.DeploymentSpec, id string, ss *fleetv1.ServiceStatus) error {
	ctx, cancel, deadline := progressDeadline(ctx, spec, 0)
	defer cancel()
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		s, err := r.cfg.Engine.Inspect(ctx, id)
		if err != nil {
			return err
		}
		ss.Health, ss.RestartCount, ss.ExitCode, ss.OomKilled = s.Health, uint32(s.RestartCount), int32(s.ExitCode), s.OOMKilled
		switch {
		case completed(s):
			return nil
		case !s.Running && (s.Status == "exited" || s.Status == "dead"):
			why := sprintf("the job exited with code %d", s.ExitCode)
			if s.OOMKilled {
				why = "the job was killed for exceeding its memory limit (OOM)"
			}
			return fmt.Errorf("%w: %s; the services that depend on it were not started", errdefs.ErrUnhealthy, why)
		}
		if err := r.tick(ctx, tick, deadline); err != nil {
			return err
		}
	}
}

// progressDeadline bounds a wait by spec's progressDeadlineSeconds
// (default 5 minutes past minReady).
func progressDeadline(ctx context.Context, spec *fleetv1.DeploymentSpec, minReady time.Duration) (context.Context, context.CancelFunc, time.Duration) {
	deadline := time.Duration(spec.GetUpdate().GetProgressDeadlineSeconds()) * time.Second
	if deadline == 0 {
		deadline = 5*time.Minute + minReady
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	return ctx, cancel, deadline
}

// tick waits for the next poll; the error says why the wait ended.
func (r *Reconciler) tick(ctx context.Context, tick *time.Ticker, deadline time.Duration) error {
	select {
	case <-tick.C:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && context.Cause(ctx) == context.DeadlineExceeded {
			return fmt.Errorf("%w: not ready within progressDeadlineSeconds (%v)", errdefs.ErrUnhealthy, deadline)
		}
		return ctx.Err()
	}
}

// recordImages notes the images the deployment now runs (see recordImage):
// a single container's as ever, an application's services' together.
func (r *Reconciler) recordImages(ctx context.Context, spec *fleetv1.DeploymentSpec, units []*unit) {
	name := spec.GetName()
	if len(units) == 1 && !units[0].svc.app {
		r.recordImage(name, units[0].imageID, spec.GetImage(), units[0].pulled)
		return
	}
	var ids []string
	for _, u := range units {
		if err := r.cfg.Store.UnstageImage(stagedKey(name, u.svc)); err != nil {
			r.log.Warn("forget prefetched image", "deployment", name, "service", u.svc.name, "err", err)
		}
		id := u.imageID
		if u.keep != nil {
			if s, err := r.cfg.Engine.Inspect(ctx, u.keep.ID); err == nil {
				id = s.ImageID
			}
		}
		if id == "" {
			continue
		}
		ids = append(ids, id)
		if u.pulled {
			if err := r.cfg.Store.TrackPulledImage(id, u.svc.spec.GetImage()); err != nil {
				r.log.Warn("track pulled image", "image", u.svc.spec.GetImage(), "err", err)
			}
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil || !ok || slices.Equal(d.ImageIDs, ids) {
		return
	}
	d.PreviousImageIDs, d.ImageIDs = d.ImageIDs, ids
	if err := r.cfg.Store.PutDeployment(name, d); err != nil {
		r.log.Warn("record images", "deployment", name, "err", err)
	}
}

// stagedKey is the key of a service's prefetched image: the deployment's
// name for a single container, name/service for an application's.
func stagedKey(deployment string, s *service) string {
	if !s.app {
		return deployment
	}
	return deployment + "/" + s.name
}
