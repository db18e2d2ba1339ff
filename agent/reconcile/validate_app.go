package reconcile

import (
	"maps"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// appName is the rule for service, network and volume names of an
// application: a deployment name's.
func appName(name string) bool { return topic.CheckDeploymentName(name) == nil }

// maxServices bounds an application, and so its status (one entry a
// service, each message capped at maxServiceMessage).
const maxServices = 32

// validateApp checks an application's spec (DeploymentSpec.services set).
func validateApp(spec *fleetv1.DeploymentSpec) error {
	if f := containerFieldSet(spec); f != "" {
		return errdefs.Invalid(specField+"."+f, "must be unset when services are set: each service carries its own container fields (move it under services.<name>.%s)", f)
	}
	if n := len(spec.GetServices()); n > maxServices {
		return errdefs.Invalid(specField+".services", "%d services are more than the %d an application may have", n, maxServices)
	}
	nets, err := appNames("networks", spec.GetNetworks(), (*fleetv1.AppNetwork).GetName)
	if err != nil {
		return err
	}
	if _, err := appNames("volumes", spec.GetVolumes(), (*fleetv1.AppVolume).GetName); err != nil {
		return err
	}
	svcs := spec.GetServices()
	for _, name := range slices.Sorted(maps.Keys(svcs)) {
		if err := checkService(name, svcs, nets); err != nil {
			return err
		}
	}
	if _, cycle := dependencyOrder(svcs); cycle != nil {
		return errdefs.Invalid(specField+".services."+cycle[0]+".dependsOn", "the services depend on each other in a cycle (%s); remove one of these dependencies",
			strings.Join(cycle, " → "))
	}
	for _, s := range services(spec) {
		if err := validateContainer(s.spec); err != nil {
			return s.under(err)
		}
	}
	return nil
}

// containerFieldSet names the first container field set on an
// application's spec ("" for none).
func containerFieldSet(spec *fleetv1.DeploymentSpec) string {
	top := proto.Clone(spec).(*fleetv1.DeploymentSpec)
	top.Name, top.Revision, top.Services, top.Networks, top.Volumes = "", 0, nil, nil, nil
	m := top.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		if fd := fields.Get(i); m.Has(fd) {
			return fd.JSONName()
		}
	}
	return ""
}

// appNames checks the names of an application's networks or volumes and
// returns them as a set.
func appNames[T any](what string, list []T, name func(T) string) (map[string]bool, error) {
	set := map[string]bool{}
	for i, x := range list {
		n := name(x)
		field := sprintf("%s.%s[%d].name", specField, what, i)
		if !appName(n) {
			return nil, errdefs.Invalid(field, "%q must be 1-63 characters of a-z 0-9 -", n)
		}
		if set[n] {
			return nil, errdefs.Invalid(field, "%q is listed twice", n)
		}
		set[n] = true
	}
	return set, nil
}

// checkService checks what an application's service name adds to a
// container: its name, networks and dependencies.
func checkService(name string, svcs map[string]*fleetv1.Service, nets map[string]bool) error {
	field := specField + ".services." + name
	if !appName(name) {
		return errdefs.Invalid(specField+".services", "service name %q must be 1-63 characters of a-z 0-9 -", name)
	}
	svc := svcs[name]
	if svc == nil {
		return errdefs.Invalid(field, "is empty; a service needs at least an image")
	}
	for i, n := range svc.GetNetworks() {
		if !nets[n] {
			return errdefs.Invalid(sprintf("%s.networks[%d]", field, i), "network %q is not one of the application's networks (spec.networks): add it there", n)
		}
	}
	if mode := svc.GetNetworkMode(); len(svc.GetNetworks()) > 0 && mode != "" && mode != "bridge" {
		return errdefs.Invalid(field+".networkMode", "%q cannot be combined with networks: leave networkMode empty or drop networks", mode)
	}
	for i, d := range svc.GetDependsOn() {
		df := sprintf("%s.dependsOn[%d]", field, i)
		dep, ok := svcs[d.GetService()]
		if !ok || dep == nil {
			return errdefs.Invalid(df+".service", "%q is not a service of this application", d.GetService())
		}
		switch d.GetCondition() {
		case fleetv1.Dependency_HEALTHY:
			if t := dep.GetHealthCheck().GetTest(); len(t) == 0 || t[0] == "NONE" {
				return errdefs.Invalid(df+".condition", "HEALTHY needs a health check on service %s: give it healthCheck, or wait for STARTED", d.GetService())
			}
		case fleetv1.Dependency_COMPLETED_SUCCESSFULLY:
			if m := dep.GetRestartPolicy().GetMode(); m == fleetv1.RestartPolicy_ALWAYS || m == fleetv1.RestartPolicy_UNLESS_STOPPED {
				return errdefs.Invalid(df+".condition", "COMPLETED_SUCCESSFULLY needs service %s to end, but its restartPolicy %v restarts it: use NO or ON_FAILURE", d.GetService(), m)
			}
		}
	}
	return nil
}
