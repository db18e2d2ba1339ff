package reconcile

import (
	"path"
	"slices"
	"strings"

	"github.com/distribution/reference"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Policy is the gateway's local policy: what a deployment may ask of the
// host. The zero value denies privileged containers, the host network,
// added capabilities, and every bind mount and device.
type Policy struct {
	AllowPrivileged  bool
	AllowHostNetwork bool
	AllowCapAdd      bool
	// AllowedHostPaths are host directories under which bind mounts and
	// devices may lie.
	AllowedHostPaths []string
}

const specField = "spec"

// validate checks a spec; errors name the field and the fix.
func validate(spec *fleetv1.DeploymentSpec) error {
	f := func(name string) string { return specField + "." + name }
	if spec == nil {
		return errdefs.Invalid(specField, "is missing")
	}
	if err := topic.CheckDeploymentName(spec.GetName()); err != nil {
		return errdefs.Invalid(f("name"), "%v", err)
	}
	if spec.GetRevision() < 1 {
		return errdefs.Invalid(f("revision"), "must be 1 or more, and higher than the revision deployed (got %d)", spec.GetRevision())
	}
	if spec.GetImage() == "" {
		return errdefs.Invalid(f("image"), "must be set, e.g. registry.example.com/team/app:1.2 or …@sha256:<digest>")
	}
	if _, err := reference.ParseNormalizedNamed(spec.GetImage()); err != nil {
		return errdefs.Invalid(f("image"), "%q is not an image reference: %v", spec.GetImage(), err)
	}
	for k := range spec.GetEnv() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return errdefs.Invalid(f("env"), "variable name %q must be non-empty and contain no = or NUL", k)
		}
	}
	for i, p := range spec.GetPorts() {
		if p.GetContainerPort() < 1 || p.GetContainerPort() > 65535 || p.GetHostPort() > 65535 {
			return errdefs.Invalid(f("ports"), "port %d: containerPort must be 1-65535 and hostPort 0-65535", i)
		}
		if pr := p.GetProtocol(); pr != "" && !slices.Contains([]string{"tcp", "udp", "sctp"}, pr) {
			return errdefs.Invalid(f("ports"), "port %d: protocol %q must be tcp, udp or sctp", i, pr)
		}
	}
	for i, m := range spec.GetMounts() {
		if !path.IsAbs(m.GetTarget()) {
			return errdefs.Invalid(f("mounts"), "mount %d: target %q must be an absolute path", i, m.GetTarget())
		}
		switch m.GetType() {
		case fleetv1.Mount_BIND:
			if !path.IsAbs(m.GetSource()) {
				return errdefs.Invalid(f("mounts"), "mount %d: a BIND source must be an absolute host path (got %q)", i, m.GetSource())
			}
		case fleetv1.Mount_VOLUME:
			if m.GetSource() == "" {
				return errdefs.Invalid(f("mounts"), "mount %d: a VOLUME needs a source (the volume name)", i)
			}
		case fleetv1.Mount_TMPFS:
		default:
			return errdefs.Invalid(f("mounts"), "mount %d: type must be BIND, VOLUME or TMPFS", i)
		}
	}
	for i, d := range spec.GetDevices() {
		if !path.IsAbs(d.GetHostPath()) {
			return errdefs.Invalid(f("devices"), "device %d: hostPath %q must be an absolute path", i, d.GetHostPath())
		}
	}
	res := spec.GetResources()
	if res.GetNanoCpus() != 0 && res.GetCpus() != 0 {
		return errdefs.Invalid(f("resources"), "set nanoCpus or cpus, not both")
	}
	if res.GetMemoryBytes() != 0 && res.GetMemoryBytes() < 6<<20 {
		return errdefs.Invalid(f("resources.memoryBytes"), "%d is below the engine's minimum of 6 MiB", res.GetMemoryBytes())
	}
	if rp := spec.GetRestartPolicy(); rp.GetMaxRetries() > 0 && rp.GetMode() != fleetv1.RestartPolicy_ON_FAILURE {
		return errdefs.Invalid(f("restartPolicy.maxRetries"), "applies only to mode ON_FAILURE")
	}
	if hc := spec.GetHealthCheck(); hc != nil && len(hc.GetTest()) > 0 &&
		!slices.Contains([]string{"CMD", "CMD-SHELL", "NONE"}, hc.GetTest()[0]) {
		return errdefs.Invalid(f("healthCheck.test"), `must start with "CMD", "CMD-SHELL" or "NONE" (got %q)`, hc.GetTest()[0])
	}
	if u := spec.GetUpdate(); u.GetProgressDeadlineSeconds() != 0 && u.GetMinReadySeconds() >= u.GetProgressDeadlineSeconds() {
		return errdefs.Invalid(f("update.minReadySeconds"), "must be less than progressDeadlineSeconds (%d)", u.GetProgressDeadlineSeconds())
	}
	return nil
}

// check applies the local policy.
func (p Policy) check(spec *fleetv1.DeploymentSpec) error {
	deny := func(field, format string, args ...any) error {
		return &errdefs.FieldError{Field: specField + "." + field, Kind: errdefs.ErrPolicyDenied, Msg: sprintf(format, args...)}
	}
	if spec.GetPrivileged() && !p.AllowPrivileged {
		return deny("privileged", "privileged containers are not allowed on this gateway (agent setting --allow-privileged)")
	}
	if spec.GetNetworkMode() == "host" && !p.AllowHostNetwork {
		return deny("networkMode", "the host network is not allowed on this gateway (agent setting --allow-host-network)")
	}
	if len(spec.GetCapAdd()) > 0 && !p.AllowCapAdd {
		return deny("capAdd", "adding capabilities is not allowed on this gateway (agent setting --allow-cap-add)")
	}
	for i, m := range spec.GetMounts() {
		if m.GetType() == fleetv1.Mount_BIND && !p.hostPathAllowed(m.GetSource()) {
			return deny("mounts", "mount %d: host path %s is outside the allowed host paths %v (agent setting --allow-host-path)", i, m.GetSource(), p.AllowedHostPaths)
		}
	}
	for i, d := range spec.GetDevices() {
		if !p.hostPathAllowed(d.GetHostPath()) {
			return deny("devices", "device %d: %s is outside the allowed host paths %v (agent setting --allow-host-path)", i, d.GetHostPath(), p.AllowedHostPaths)
		}
	}
	return nil
}

func (p Policy) hostPathAllowed(hp string) bool {
	hp = path.Clean(hp)
	for _, allowed := range p.AllowedHostPaths {
		a := path.Clean(allowed)
		if hp == a || strings.HasPrefix(hp, strings.TrimSuffix(a, "/")+"/") {
			return true
		}
	}
	return false
}
