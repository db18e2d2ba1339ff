package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// service is one container of a deployment, whichever form its spec took:
// a single-container spec is one service named after the deployment, an
// application (DeploymentSpec.services) one per entry. The reconciler
// handles both through this type alone.
type service struct {
	name string
	// field is where the service's container fields are in the spec:
	// "spec", or "spec.services.{name}".
	field string
	// spec is the container's: the deployment's name and revision and the
	// service's container fields, app volumes resolved to their engine
	// names. For a single container it is the deployment's spec itself.
	spec *fleetv1.DeploymentSpec
	// app: one of an application's services (not the single-container form).
	app bool
	// appVolumes are the indexes of spec's mounts of the application's
	// own volumes (their sources resolved to engine names).
	appVolumes []int
	// hash identifies what the container runs: a single container's
	// engine.SpecHash (revision included, as always); an application
	// service's leaves the revision out, so an unchanged service keeps its
	// container across revisions.
	hash      string
	networks  []engine.Network
	dependsOn []*fleetv1.Dependency
	// job: another service waits for it to complete successfully.
	job bool
	// mayEnd: exited 0, it has done its work, not failed: a job, or a
	// service whose restart policy lets it end (mayEnd).
	mayEnd bool
	// dependents: some other service depends on it.
	dependents bool
}

// containerName is the engine name of the service's container at revision.
func (s *service) containerName(revision int64) string {
	if !s.app {
		return engine.ContainerName(s.spec.GetName(), revision)
	}
	return fmt.Sprintf("fleet-%s-%s-r%d", s.spec.GetName(), s.name, revision)
}

// host is what the service adds to the local policy's engine.Host.
func (s *service) host(h engine.Host) engine.Host {
	if s.app {
		h.Service, h.SpecHash, h.Networks = s.name, s.hash, s.networks
	}
	return h
}

// under moves a field error about the service's container fields, which
// names them under "spec", to the service's place in the spec.
func (s *service) under(err error) error {
	if fe, ok := errors.AsType[*errdefs.FieldError](err); ok && s.app && strings.HasPrefix(fe.Field, specField+".") {
		fe.Field = s.field + strings.TrimPrefix(fe.Field, specField)
	}
	return err
}

// wrap names the service in an application's error.
func (s *service) wrap(err error) error {
	if err == nil || !s.app {
		return err
	}
	return fmt.Errorf("service %s: %w", s.name, err)
}

// appResource is the engine name of an application's network or volume.
func appResource(deployment, name string) string { return "fleet-" + deployment + "-" + name }

// services normalises spec into its services in dependency order (a
// service after those it depends on; ties by name). spec must be valid.
func services(spec *fleetv1.DeploymentSpec) []*service {
	if len(spec.GetServices()) == 0 {
		return []*service{{name: spec.GetName(), field: specField, spec: spec, hash: engine.SpecHash(spec), mayEnd: mayEnd(spec)}}
	}
	byName := map[string]*service{}
	for _, n := range slices.Sorted(maps.Keys(spec.GetServices())) {
		byName[n] = appService(spec, n, spec.GetServices()[n])
	}
	for _, s := range byName {
		for _, d := range s.dependsOn {
			if dep := byName[d.GetService()]; dep != nil {
				dep.dependents = true
				dep.job = dep.job || d.GetCondition() == fleetv1.Dependency_COMPLETED_SUCCESSFULLY
			}
		}
	}
	order, _ := dependencyOrder(spec.GetServices())
	out := make([]*service, 0, len(order))
	for _, n := range order {
		s := byName[n]
		s.mayEnd = s.job || mayEnd(s.spec)
		out = append(out, s)
	}
	return out
}

// mayEnd reports whether a container of spec may end its work: its
// restart policy (NO or ON_FAILURE, as the operator set it) does not
// restart it after exit 0. Exited 0, it has completed, not failed: a
// one-shot task that no service depends on, such as a Compose file's
// `restart: "no"` service. Without a restart policy it has to keep
// running: a container that ends at once is more often a mistake.
func mayEnd(spec *fleetv1.DeploymentSpec) bool {
	m := spec.GetRestartPolicy().GetMode()
	return m == fleetv1.RestartPolicy_NO || m == fleetv1.RestartPolicy_ON_FAILURE
}

// appService is the service name of an application spec.
func appService(spec *fleetv1.DeploymentSpec, name string, svc *fleetv1.Service) *service {
	// Service has DeploymentSpec's container fields under the same numbers:
	// its wire form, without its own fields, is a DeploymentSpec's.
	bare := proto.Clone(svc).(*fleetv1.Service)
	bare.Networks, bare.DependsOn = nil, nil
	raw, _ := proto.Marshal(bare)
	cs := new(fleetv1.DeploymentSpec)
	_ = proto.Unmarshal(raw, cs)
	cs.Name, cs.Revision = spec.GetName(), spec.GetRevision()
	if len(svc.GetNetworks()) > 0 {
		cs.NetworkMode = "" // "bridge" with networks: ignored
	}
	s := &service{name: name, field: specField + ".services." + name, spec: cs, app: true, dependsOn: svc.GetDependsOn()}
	for i, m := range cs.GetMounts() {
		if m.GetType() == fleetv1.Mount_VOLUME && slices.ContainsFunc(spec.GetVolumes(), func(v *fleetv1.AppVolume) bool { return v.GetName() == m.GetSource() }) {
			m.Source = appResource(spec.GetName(), m.GetSource())
			s.appVolumes = append(s.appVolumes, i)
		}
	}
	h := sha256.New()
	noRev := proto.Clone(cs).(*fleetv1.DeploymentSpec)
	noRev.Revision = 0
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(noRev)
	h.Write(b)
	for _, n := range svc.GetNetworks() {
		internal := slices.ContainsFunc(spec.GetNetworks(), func(an *fleetv1.AppNetwork) bool { return an.GetName() == n && an.GetInternal() })
		fmt.Fprintf(h, "\x00network %s %v", n, internal)
		s.networks = append(s.networks, engine.Network{Name: appResource(spec.GetName(), n), Aliases: []string{name}})
	}
	s.hash = hex.EncodeToString(h.Sum(nil)[:8])
	return s
}

// dependencyOrder sorts the services so that each comes after those it
// depends on (ties by name); cycle names a cycle when there is one.
func dependencyOrder(svcs map[string]*fleetv1.Service) (order, cycle []string) {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var path []string
	var visit func(n string) bool
	visit = func(n string) bool {
		switch state[n] {
		case done:
			return true
		case visiting:
			i := slices.Index(path, n)
			cycle = append(slices.Clone(path[i:]), n)
			return false
		}
		state[n] = visiting
		path = append(path, n)
		deps := svcs[n].GetDependsOn()
		names := make([]string, 0, len(deps))
		for _, d := range deps {
			if _, ok := svcs[d.GetService()]; ok {
				names = append(names, d.GetService())
			}
		}
		slices.Sort(names)
		for _, d := range names {
			if !visit(d) {
				return false
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		order = append(order, n)
		return true
	}
	for _, n := range slices.Sorted(maps.Keys(svcs)) {
		if !visit(n) {
			return nil, cycle
		}
	}
	return order, nil
}

// serviceOf is the service a listed container runs: containers of agents
// before applications carry no service label, and are a single
// container's, named after the deployment.
func serviceOf(c engine.Container) string {
	if c.Service == "" {
		return c.Deployment
	}
	return c.Service
}

// findService returns the service of spec named name; the error names the
// field "service".
func findService(spec *fleetv1.DeploymentSpec, name string) (*service, error) {
	for _, s := range services(spec) {
		if s.name == name {
			return s, nil
		}
	}
	var names []string
	for _, s := range services(spec) {
		names = append(names, s.name)
	}
	return nil, &errdefs.FieldError{Field: "service", Kind: errdefs.ErrNotFound,
		Msg: sprintf("deployment %s has no service %q; its services are %s", spec.GetName(), name, strings.Join(names, ", "))}
}

// engineNames are spec and h as the engine takes them for s: the
// application's networks and volumes under r's resource prefix.
func (r *Reconciler) engineNames(s *service, spec *fleetv1.DeploymentSpec, h engine.Host) (*fleetv1.DeploymentSpec, engine.Host) {
	if r.cfg.ResourcePrefix == DefaultResourcePrefix {
		return spec, h
	}
	if len(s.appVolumes) > 0 {
		spec = proto.Clone(spec).(*fleetv1.DeploymentSpec)
		for _, i := range s.appVolumes {
			spec.Mounts[i].Source = r.resourceName(spec.Mounts[i].Source)
		}
	}
	if len(h.Networks) > 0 {
		nets := make([]engine.Network, len(h.Networks))
		for i, n := range h.Networks {
			n.Name = r.resourceName(n.Name)
			nets[i] = n
		}
		h.Networks = nets
	}
	return spec, h
}
