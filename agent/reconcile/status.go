package reconcile

import (
	"context"
	"slices"
	"strings"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// maxServiceMessage caps a service's message, so that the retained status
// of an application stays small.
const maxServiceMessage = 512

func capMessage(m string) string {
	if len(m) <= maxServiceMessage {
		return m
	}
	return strings.ToValidUTF8(m[:maxServiceMessage-3], "") + "..."
}

// newStatus is the status of spec's deployment in phase, with an entry a
// service (by name) in the same phase.
func newStatus(spec *fleetv1.DeploymentSpec, phase fleetv1.DeploymentStatus_Phase) *fleetv1.DeploymentStatus {
	st := &fleetv1.DeploymentStatus{Name: spec.GetName(), Revision: spec.GetRevision(), Image: spec.GetImage(), Phase: phase}
	for _, s := range services(spec) {
		st.Services = append(st.Services, &fleetv1.ServiceStatus{Name: s.name, Phase: phase, Image: s.spec.GetImage()})
	}
	slices.SortFunc(st.Services, func(a, b *fleetv1.ServiceStatus) int { return strings.Compare(a.GetName(), b.GetName()) })
	return st
}

// serviceStatus is st's entry of service name (nil if none).
func serviceStatus(st *fleetv1.DeploymentStatus, name string) *fleetv1.ServiceStatus {
	for _, ss := range st.GetServices() {
		if ss.GetName() == name {
			return ss
		}
	}
	return nil
}

// summarize sets the deployment's fields that follow from its services: a
// single service's container, image and runtime facts; for several, the
// worst health, the sum of restarts, and no container or image of its own.
func summarize(st *fleetv1.DeploymentStatus) {
	if len(st.GetServices()) == 1 {
		s := st.Services[0]
		st.Health, st.ContainerId, st.ImageDigest, st.Image = s.Health, s.ContainerId, s.ImageDigest, s.Image
		st.RestartCount, st.ExitCode, st.OomKilled = s.RestartCount, s.ExitCode, s.OomKilled
		return
	}
	st.Health, st.ContainerId, st.ImageDigest, st.RestartCount, st.ExitCode, st.OomKilled = fleetv1.HealthCheck_NONE, "", "", 0, 0, false
	for _, s := range st.GetServices() {
		st.Health = worse(st.Health, s.Health)
		st.RestartCount += s.RestartCount
		st.OomKilled = st.OomKilled || s.OomKilled
	}
}

// worse is the worse of two health states: UNHEALTHY, STARTING, HEALTHY,
// then none.
func worse(a, b fleetv1.HealthCheck_Status) fleetv1.HealthCheck_Status {
	rank := func(h fleetv1.HealthCheck_Status) int {
		switch h {
		case fleetv1.HealthCheck_UNHEALTHY:
			return 3
		case fleetv1.HealthCheck_STARTING:
			return 2
		case fleetv1.HealthCheck_HEALTHY:
			return 1
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// appPhase is the deployment's phase from its services': a single
// service's own; for several the least advanced (a service that may end
// and completed counts as running).
func appPhase(st *fleetv1.DeploymentStatus, svcs []*service) fleetv1.DeploymentStatus_Phase {
	if len(st.GetServices()) == 1 {
		return st.Services[0].Phase
	}
	has := map[fleetv1.DeploymentStatus_Phase]bool{}
	for _, s := range svcs {
		ss := serviceStatus(st, s.name)
		if ss == nil {
			continue
		}
		p := ss.GetPhase()
		if s.mayEnd && p == fleetv1.DeploymentStatus_EXITED && ss.GetExitCode() == 0 {
			p = fleetv1.DeploymentStatus_RUNNING
		}
		has[p] = true
	}
	for _, p := range []fleetv1.DeploymentStatus_Phase{fleetv1.DeploymentStatus_FAILED, fleetv1.DeploymentStatus_EXITED, fleetv1.DeploymentStatus_STOPPED,
		fleetv1.DeploymentStatus_PENDING, fleetv1.DeploymentStatus_PULLING, fleetv1.DeploymentStatus_CREATING, fleetv1.DeploymentStatus_STARTING} {
		if has[p] {
			return p
		}
	}
	return fleetv1.DeploymentStatus_RUNNING
}

// rollup sets the deployment's code and message from its services': a
// single service's own; for several the first service in trouble, named.
func rollup(st *fleetv1.DeploymentStatus) {
	if len(st.GetServices()) == 1 {
		st.Code, st.Message = st.Services[0].Code, st.Services[0].Message
		return
	}
	st.Code, st.Message = fleetv1.Reply_OK, ""
	for _, ss := range st.GetServices() {
		if ss.GetCode() != fleetv1.Reply_OK {
			st.Code, st.Message = ss.GetCode(), sprintf("service %s: %s", ss.GetName(), ss.GetMessage())
			return
		}
	}
}

// stoppedIn reports whether service name is stopped by command.
func stoppedIn(d store.Deployment, name string) bool {
	return d.Stopped || slices.Contains(d.StoppedServices, name)
}

// currentOf is the service's container to run: one matching its spec,
// running if one is.
func currentOf(cs []engine.Container, s *service) *engine.Container {
	var found *engine.Container
	for i := range cs {
		if serviceOf(cs[i]) == s.name && cs[i].SpecHash == s.hash && (found == nil || cs[i].Running && !found.Running) {
			found = &cs[i]
		}
	}
	return found
}

// observe publishes and returns the status of spec's deployment as the
// engine shows its services' containers.
func (r *Reconciler) observe(ctx context.Context, spec *fleetv1.DeploymentSpec) *fleetv1.DeploymentStatus {
	st := r.engineStatus(ctx, spec)
	r.publish(ctx, st)
	return st
}

// engineStatus is the deployment's status from the engine; the image digests
// are the last status's for the same containers.
func (r *Reconciler) engineStatus(ctx context.Context, spec *fleetv1.DeploymentSpec) *fleetv1.DeploymentStatus {
	name := spec.GetName()
	st := newStatus(spec, fleetv1.DeploymentStatus_PENDING)
	cs, err := r.containersOf(ctx, name)
	if err != nil {
		st.Phase, st.Code, st.Message = fleetv1.DeploymentStatus_FAILED, errdefs.Code(err), err.Error()
		return st
	}
	d, _, _ := r.cfg.Store.GetDeployment(name)
	last := r.current(name)
	svcs := services(spec)
	for _, s := range svcs {
		ss := serviceStatus(st, s.name)
		c := currentOf(cs, s)
		switch {
		case c == nil && stoppedIn(d, s.name):
			ss.Phase = fleetv1.DeploymentStatus_STOPPED
			continue
		case c == nil:
			ss.Phase, ss.Code, ss.Message = fleetv1.DeploymentStatus_FAILED, fleetv1.Reply_NOT_FOUND, "the service's container is gone; start the deployment to create it again"
			continue
		}
		ss.ContainerId = c.ID
		if prev := serviceStatus(last, s.name); prev != nil && prev.GetContainerId() == c.ID {
			ss.ImageDigest = prev.GetImageDigest()
		}
		r.fillService(ctx, ss, c.ID, stoppedIn(d, s.name))
	}
	st.Phase = appPhase(st, svcs)
	rollup(st)
	return st
}

// fillService sets the phase and runtime facts of a service's status from
// the engine.
func (r *Reconciler) fillService(ctx context.Context, ss *fleetv1.ServiceStatus, id string, stopped bool) {
	s, err := r.cfg.Engine.Inspect(ctx, id)
	if err != nil {
		ss.Phase, ss.Code, ss.Message = fleetv1.DeploymentStatus_FAILED, errdefs.Code(err), capMessage(err.Error())
		return
	}
	ss.Health, ss.RestartCount, ss.ExitCode, ss.OomKilled = s.Health, uint32(s.RestartCount), int32(s.ExitCode), s.OOMKilled
	switch {
	case s.Running:
		ss.Phase = fleetv1.DeploymentStatus_RUNNING
	case stopped:
		ss.Phase = fleetv1.DeploymentStatus_STOPPED
	default:
		ss.Phase = fleetv1.DeploymentStatus_EXITED
	}
}

// explain sets a service's code and message from its state after a change
// the engine reported.
func explain(ss *fleetv1.ServiceStatus) {
	ss.Code, ss.Message = fleetv1.Reply_OK, ""
	switch {
	case ss.GetOomKilled() && ss.GetPhase() != fleetv1.DeploymentStatus_RUNNING:
		ss.Code, ss.Message = fleetv1.Reply_UNHEALTHY, "the container was killed for exceeding its memory limit (OOM)"
	case ss.GetPhase() == fleetv1.DeploymentStatus_EXITED:
		ss.Message = sprintf("the container exited with code %d", ss.GetExitCode())
		if ss.GetExitCode() != 0 {
			ss.Code = fleetv1.Reply_UNHEALTHY
		}
	case ss.GetHealth() == fleetv1.HealthCheck_UNHEALTHY:
		ss.Code, ss.Message = fleetv1.Reply_UNHEALTHY, "the container's health check fails"
	}
}
