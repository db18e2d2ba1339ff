package compose

import (
	"cmp"
	"fmt"
	"maps"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/distribution/reference"
	"google.golang.org/protobuf/types/known/durationpb"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// defaultNetwork is the network Compose puts a service on when it names
// neither networks nor network_mode.
const defaultNetwork = "default"

var (
	// serviceName is the protocol's rule for service names.
	serviceName = regexp.MustCompile(`^[a-z0-9-]{1,63}$`)
	// resourceName is Docker's rule for network and volume names, which
	// the agent prefixes with fleet-{deployment}-.
	resourceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,62}$`)
)

// minMemory is the engine's smallest memory limit.
const minMemory = 6 << 20

// translation turns a loaded project into a spec, refusing with paths
// what the table lets through but the value does not fit.
type translation struct {
	*checker
	p    *types.Project
	opts Options
	// external maps a top-level volume's key to the gateway volume it
	// names, for volumes the application does not own.
	external map[string]string
	// networks are the application networks the services join.
	networks map[string]bool
}

func (t *translation) spec(name string, revision int64) *fleetv1.DeploymentSpec {
	spec := &fleetv1.DeploymentSpec{Name: name, Revision: revision, Services: map[string]*fleetv1.Service{}}
	spec.Volumes = t.volumes()
	t.networks = map[string]bool{}
	if len(t.p.Services) == 0 {
		t.refuse("services", "a Compose file to deploy has one service or more")
	}
	for _, sn := range slices.Sorted(maps.Keys(t.p.Services)) {
		if s := t.service(sn, t.p.Services[sn]); s != nil {
			spec.Services[sn] = s
		}
	}
	spec.Networks = t.appNetworks()
	return spec
}

func (t *translation) volumes() []*fleetv1.AppVolume {
	t.external = map[string]string{}
	var out []*fleetv1.AppVolume
	for _, k := range slices.Sorted(maps.Keys(t.p.Volumes)) {
		v, p := t.p.Volumes[k], "volumes."+k
		if d := v.Driver; d != "" && d != "local" {
			t.refuse(p+".driver", "%q: only the local driver is supported", d)
		}
		if bool(v.External) {
			t.external[k] = cmp.Or(v.Name, k)
			continue
		}
		if v.Name != "" && v.Name != t.p.Name+"_"+k {
			t.refuse(p+".name", "%q: the agent names an application's volumes fleet-{deployment}-{volume}; a name is for an external volume (external: true)", v.Name)
		}
		if !resourceName.MatchString(k) {
			t.refuse(p, "a volume name is 2-63 of a-z A-Z 0-9 _ . - starting with a letter or digit")
			continue
		}
		out = append(out, &fleetv1.AppVolume{Name: k})
	}
	return out
}

func (t *translation) appNetworks() []*fleetv1.AppNetwork {
	for _, k := range slices.Sorted(maps.Keys(t.p.Networks)) {
		if !t.networks[k] && k != defaultNetwork {
			t.warn("networks."+k, "not created: no service joins it")
		}
	}
	var out []*fleetv1.AppNetwork
	for _, k := range slices.Sorted(maps.Keys(t.networks)) {
		n, p := t.p.Networks[k], "networks."+k
		if d := n.Driver; d != "" && d != "bridge" {
			t.refuse(p+".driver", "%q: only the bridge driver is supported", d)
		}
		if !resourceName.MatchString(k) {
			t.refuse(p, "a network name is 2-63 of a-z A-Z 0-9 _ . - starting with a letter or digit")
			continue
		}
		out = append(out, &fleetv1.AppNetwork{Name: k, Internal: n.Internal})
	}
	return out
}

// service translates one service; nil when it is refused whole.
func (t *translation) service(name string, s types.ServiceConfig) *fleetv1.Service {
	p := "services." + name
	if !serviceName.MatchString(name) {
		t.refuse(p, "a service name is 1-63 of a-z 0-9 -")
	}
	out := &fleetv1.Service{
		Command:    s.Command,
		Entrypoint: s.Entrypoint,
		Privileged: s.Privileged,
		CapAdd:     s.CapAdd,
		CapDrop:    s.CapDrop,
		User:       s.User,
		WorkingDir: s.WorkingDir,
		Labels:     map[string]string(s.Labels),
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	t.image(p, s, out)
	t.scale(p, s)
	out.Env = t.env(p, s)
	out.Ports = t.ports(p, s.Ports)
	out.Mounts = t.mounts(p, s)
	for _, d := range s.Devices {
		out.Devices = append(out.Devices, &fleetv1.Device{HostPath: d.Source, ContainerPath: d.Target, Permissions: d.Permissions})
	}
	t.network(p, s, out)
	out.RestartPolicy = t.restart(p, s)
	out.Resources = t.resources(p, s)
	if s.Logging != nil && (s.Logging.Driver != "" || len(s.Logging.Options) > 0) {
		out.Logging = &fleetv1.Logging{Driver: s.Logging.Driver, Options: s.Logging.Options}
	}
	out.HealthCheck = healthCheck(s.HealthCheck)
	if s.StopGracePeriod != nil {
		out.StopTimeout = durationpb.New(time.Duration(*s.StopGracePeriod))
	}
	out.DependsOn = t.dependsOn(p, s)
	return out
}

func (t *translation) image(p string, s types.ServiceConfig, out *fleetv1.Service) {
	out.Image = s.Image
	if s.Image == "" {
		t.refuse(p+".image", "is required: push the service's image to a registry and name it here")
	} else if _, err := reference.ParseNormalizedNamed(s.Image); err != nil {
		t.refuse(p+".image", "%q is not an image reference: %v", s.Image, err)
	}
	switch s.PullPolicy {
	case "":
	case types.PullPolicyAlways:
		out.PullPolicy = fleetv1.Pull_ALWAYS
	case types.PullPolicyMissing, types.PullPolicyIfNotPresent:
		out.PullPolicy = fleetv1.Pull_IF_NOT_PRESENT
	case types.PullPolicyNever:
		out.PullPolicy = fleetv1.Pull_NEVER
	default:
		t.refuse(p+".pull_policy", "%q is not supported: use always, missing or never", s.PullPolicy)
	}
}

func (t *translation) scale(p string, s types.ServiceConfig) {
	if s.Scale != nil && *s.Scale != 1 {
		t.refuse(p+".scale", "%d: a service runs one container on a gateway", *s.Scale)
	}
	if s.Deploy != nil && s.Deploy.Replicas != nil && *s.Deploy.Replicas != 1 {
		t.refuse(p+".deploy.replicas", "%d: a service runs one container on a gateway", *s.Deploy.Replicas)
	}
}

func (t *translation) ports(p string, ports []types.ServicePortConfig) []*fleetv1.Port {
	var out []*fleetv1.Port
	for i, port := range ports {
		pp := fmt.Sprintf("%s.ports[%d]", p, i)
		fp := &fleetv1.Port{ContainerPort: port.Target, HostIp: port.HostIP, Protocol: port.Protocol}
		if port.Published != "" {
			n, err := strconv.ParseUint(port.Published, 10, 16)
			if err != nil {
				t.refuse(pp+".published", "%q: give one host port (a range is not supported)", port.Published)
			}
			fp.HostPort = uint32(n)
		}
		if fp.Protocol == "tcp" {
			fp.Protocol = ""
		}
		out = append(out, fp)
	}
	return out
}

func (t *translation) mounts(p string, s types.ServiceConfig) []*fleetv1.Mount {
	var out []*fleetv1.Mount
	for i, v := range s.Volumes {
		vp := fmt.Sprintf("%s.volumes[%d]", p, i)
		m := &fleetv1.Mount{Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case types.VolumeTypeVolume:
			m.Type, m.Source = fleetv1.Mount_VOLUME, v.Source
			if ext, ok := t.external[v.Source]; ok {
				m.Source = ext
			} else if v.Source == "" {
				t.refuse(vp+".source", "an anonymous volume is not supported: name it, and declare it under the top-level volumes")
			} else if _, ok := t.p.Volumes[v.Source]; !ok {
				t.refuse(vp+".source", "%q is not declared under the top-level volumes", v.Source)
			}
		case types.VolumeTypeBind:
			m.Type, m.Source = fleetv1.Mount_BIND, v.Source
			if !path.IsAbs(v.Source) {
				t.refuse(vp+".source", "%q: a bind mount needs an absolute path on the gateway (a relative one names the machine running Compose)", v.Source)
			}
		case types.VolumeTypeTmpfs:
			m.Type, m.Source = fleetv1.Mount_TMPFS, ""
		default:
			t.refuse(vp+".type", "%q is not supported: use volume, bind or tmpfs", v.Type)
		}
		if !path.IsAbs(v.Target) {
			t.refuse(vp+".target", "%q must be an absolute path in the container", v.Target)
		}
		out = append(out, m)
	}
	for i, tm := range s.Tmpfs {
		target, opts, _ := strings.Cut(tm, ":")
		if opts != "" {
			t.warn(fmt.Sprintf("%s.tmpfs[%d]", p, i), "options %q ignored: the gateway sets every tmpfs's size", opts)
		}
		if !path.IsAbs(target) {
			t.refuse(fmt.Sprintf("%s.tmpfs[%d]", p, i), "%q must be an absolute path in the container", target)
		}
		out = append(out, &fleetv1.Mount{Type: fleetv1.Mount_TMPFS, Target: target})
	}
	return out
}

func (t *translation) network(p string, s types.ServiceConfig, out *fleetv1.Service) {
	mode := s.NetworkMode
	if strings.HasPrefix(mode, "service:") {
		t.refuse(p+".network_mode", "%q is not supported: put the services on one network", mode)
	}
	out.NetworkMode = mode
	for _, n := range slices.Sorted(maps.Keys(s.Networks)) {
		if _, ok := t.p.Networks[n]; !ok && n != defaultNetwork {
			t.refuse(p+".networks."+n, "is not declared under the top-level networks")
			continue
		}
		t.networks[n] = true
		out.Networks = append(out.Networks, n)
	}
	if len(out.Networks) > 0 && mode != "" && mode != "bridge" {
		t.refuse(p+".network_mode", "%q cannot be combined with networks", mode)
	}
}

func (t *translation) restart(p string, s types.ServiceConfig) *fleetv1.RestartPolicy {
	if s.Deploy != nil && s.Deploy.RestartPolicy != nil {
		rp := s.Deploy.RestartPolicy
		if s.Restart != "" {
			t.refuse(p+".restart", "give restart or deploy.restart_policy, not both")
		}
		out := &fleetv1.RestartPolicy{}
		switch rp.Condition {
		case "none":
			out.Mode = fleetv1.RestartPolicy_NO
		case "on-failure":
			out.Mode = fleetv1.RestartPolicy_ON_FAILURE
		case "any", "":
			out.Mode = fleetv1.RestartPolicy_ALWAYS
		default:
			t.refuse(p+".deploy.restart_policy.condition", "%q: use none, on-failure or any", rp.Condition)
		}
		if rp.MaxAttempts != nil {
			if out.Mode != fleetv1.RestartPolicy_ON_FAILURE {
				t.refuse(p+".deploy.restart_policy.max_attempts", "applies only to the condition on-failure")
			}
			out.MaxRetries = uint32(*rp.MaxAttempts)
		}
		return out
	}
	mode, n, _ := strings.Cut(s.Restart, ":")
	out := &fleetv1.RestartPolicy{}
	switch mode {
	case "":
		return nil
	case "no":
		out.Mode = fleetv1.RestartPolicy_NO
	case "always":
		out.Mode = fleetv1.RestartPolicy_ALWAYS
	case "unless-stopped":
		out.Mode = fleetv1.RestartPolicy_UNLESS_STOPPED
	case "on-failure":
		out.Mode = fleetv1.RestartPolicy_ON_FAILURE
	default:
		t.refuse(p+".restart", "%q: use no, always, unless-stopped or on-failure[:N]", s.Restart)
	}
	if n != "" {
		r, err := strconv.ParseUint(n, 10, 32)
		if err != nil || mode != "on-failure" {
			t.refuse(p+".restart", "%q: a retry count is on-failure:N only", s.Restart)
		}
		out.MaxRetries = uint32(r)
	}
	return out
}

func (t *translation) resources(p string, s types.ServiceConfig) *fleetv1.Resources {
	mem, mp := int64(s.MemLimit), p+".mem_limit"
	cpus, cp := decimal(s.CPUS), p+".cpus"
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		l := s.Deploy.Resources.Limits
		if l.MemoryBytes != 0 {
			if mem != 0 && mem != int64(l.MemoryBytes) {
				t.refuse(p+".deploy.resources.limits.memory", "differs from mem_limit: give one")
			}
			mem, mp = int64(l.MemoryBytes), p+".deploy.resources.limits.memory"
		}
		if l.NanoCPUs != 0 {
			if cpus != 0 && cpus != decimal(float32(l.NanoCPUs)) {
				t.refuse(p+".deploy.resources.limits.cpus", "differs from cpus: give one")
			}
			cpus, cp = decimal(float32(l.NanoCPUs)), p+".deploy.resources.limits.cpus"
		}
	}
	if mem == 0 && cpus == 0 {
		return nil
	}
	if mem != 0 && mem < minMemory {
		t.refuse(mp, "%d bytes is below the engine's minimum of 6 MiB", mem)
	}
	if cpus < 0 {
		t.refuse(cp, "must be positive")
	}
	return &fleetv1.Resources{MemoryBytes: mem, Cpus: cpus}
}

// decimal is a float32 as the decimal it was written as (0.1, not
// 0.10000000149): compose-go keeps cpus in a float32.
func decimal(f float32) float64 {
	d, _ := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
	return d
}

func healthCheck(h *types.HealthCheckConfig) *fleetv1.HealthCheck {
	if h == nil {
		return nil
	}
	if h.Disable {
		return &fleetv1.HealthCheck{Test: []string{"NONE"}}
	}
	out := &fleetv1.HealthCheck{Test: h.Test}
	if len(out.Test) == 1 && out.Test[0] != "NONE" {
		out.Test = []string{"CMD-SHELL", out.Test[0]}
	}
	dur := func(d *types.Duration) *durationpb.Duration {
		if d == nil {
			return nil
		}
		return durationpb.New(time.Duration(*d))
	}
	out.Interval, out.Timeout, out.StartPeriod = dur(h.Interval), dur(h.Timeout), dur(h.StartPeriod)
	if h.Retries != nil {
		out.Retries = uint32(*h.Retries)
	}
	return out
}

// hasHealthCheck tells whether a service's container reports health.
func hasHealthCheck(s types.ServiceConfig) bool {
	h := s.HealthCheck
	return h != nil && !h.Disable && len(h.Test) > 0 && h.Test[0] != "NONE"
}

func (t *translation) dependsOn(p string, s types.ServiceConfig) []*fleetv1.Dependency {
	var out []*fleetv1.Dependency
	for _, dn := range slices.Sorted(maps.Keys(s.DependsOn)) {
		d, dp := s.DependsOn[dn], p+".depends_on."+dn
		dep, ok := t.p.Services[dn]
		if !ok {
			t.refuse(dp, "is not a service of this file")
			continue
		}
		if !d.Required {
			t.refuse(dp+".required", "false is not supported: every dependency is waited for")
		}
		fd := &fleetv1.Dependency{Service: dn, Condition: fleetv1.Dependency_STARTED}
		switch d.Condition {
		case types.ServiceConditionStarted, "":
		case types.ServiceConditionHealthy:
			fd.Condition = fleetv1.Dependency_HEALTHY
			if !hasHealthCheck(dep) {
				t.refuse(dp+".condition", "service_healthy needs a healthcheck with a test on %s (the image's own HEALTHCHECK is not known before the pull)", dn)
			}
		case types.ServiceConditionCompletedSuccessfully:
			fd.Condition = fleetv1.Dependency_COMPLETED_SUCCESSFULLY
			if r := (&translation{checker: &checker{}}).restart("", dep); r.GetMode() == fleetv1.RestartPolicy_ALWAYS || r.GetMode() == fleetv1.RestartPolicy_UNLESS_STOPPED {
				t.refuse(dp+".condition", "service_completed_successfully needs %s to run once: its restart must be no or on-failure", dn)
			}
		default:
			t.refuse(dp+".condition", "%q: use service_started, service_healthy or service_completed_successfully", d.Condition)
		}
		out = append(out, fd)
	}
	return out
}
