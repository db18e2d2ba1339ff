package reconcile

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/distribution/reference"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Policy is the gateway's local policy: what a deployment may ask of the
// host. The zero value denies privileged containers, added capabilities,
// every bind mount and device, the host's and other containers' network,
// named networks, volumes the agent did not create and log drivers other
// than json-file, local and none; it publishes ports on 127.0.0.1 unless a
// spec names an allowed host address, and caps every tmpfs at 64 MiB.
type Policy struct {
	AllowPrivileged  bool
	AllowHostNetwork bool
	AllowCapAdd      bool
	// AllowedHostPaths are host directories under which bind mounts and
	// devices may lie, once their symlinks are resolved.
	AllowedHostPaths []string
	// AllowedNetworks are network modes allowed besides bridge and none: a
	// network's name, host, container:NAME, or container:* for any.
	AllowedNetworks []string
	// AllowedVolumes are named volumes the agent did not create that a
	// deployment may mount.
	AllowedVolumes []string
	// AllowedLogDrivers are log drivers allowed besides json-file, local
	// and none.
	AllowedLogDrivers []string
	// PublishHostIP is the host address of published ports whose spec
	// gives none (default 127.0.0.1); a spec may always name it.
	PublishHostIP string
	// AllowedPublishHostIPs are other host addresses a spec may name.
	AllowedPublishHostIPs []string
	// TmpfsSize is the size of every tmpfs mount in bytes (default 64 MiB):
	// the spec cannot give one.
	TmpfsSize int64
}

// Defaults of the zero Policy.
const (
	DefaultPublishHostIP = "127.0.0.1"
	DefaultTmpfsSize     = 64 << 20
)

// logDrivers are the log drivers that write on the gateway only.
var logDrivers = []string{"json-file", "local", "none"}

const specField = "spec"

// volumeName is Docker's rule for volume names, compiled at its first
// use: an idle agent holds no regular expression it has not needed.
var volumeName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`) })

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
	if len(spec.GetServices()) > 0 {
		return validateApp(spec)
	}
	for _, c := range []struct { // in order: the first one set is named
		field string
		n     int
	}{{"networks", len(spec.GetNetworks())}, {"volumes", len(spec.GetVolumes())}} {
		if c.n > 0 {
			return errdefs.Invalid(f(c.field), "belongs to an application: set services (each service joins networks and mounts volumes), or use a VOLUME mount of a named volume for a single container")
		}
	}
	return validateContainer(spec)
}

// validateContainer checks the container fields of spec (a single
// container's, or a service's as its container spec).
func validateContainer(spec *fleetv1.DeploymentSpec) error {
	f := func(name string) string { return specField + "." + name }
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
			return errdefs.Invalid(f(sprintf("ports[%d]", i)), "containerPort must be 1-65535 and hostPort 0-65535")
		}
		if pr := p.GetProtocol(); pr != "" && !slices.Contains([]string{"tcp", "udp", "sctp"}, pr) {
			return errdefs.Invalid(f(sprintf("ports[%d].protocol", i)), "%q must be tcp, udp or sctp", pr)
		}
		if ip := p.GetHostIp(); ip != "" {
			if _, err := netip.ParseAddr(ip); err != nil {
				return errdefs.Invalid(f(sprintf("ports[%d].hostIp", i)), "%q is not an IP address (e.g. 127.0.0.1, or leave it empty for the gateway's --publish-host-ip)", ip)
			}
		}
	}
	for i, m := range spec.GetMounts() {
		if !path.IsAbs(m.GetTarget()) {
			return errdefs.Invalid(f(sprintf("mounts[%d].target", i)), "%q must be an absolute path", m.GetTarget())
		}
		switch m.GetType() {
		case fleetv1.Mount_BIND:
			if !path.IsAbs(m.GetSource()) {
				return errdefs.Invalid(f(sprintf("mounts[%d].source", i)), "a BIND source must be an absolute host path (got %q)", m.GetSource())
			}
		case fleetv1.Mount_VOLUME:
			if !volumeName().MatchString(m.GetSource()) {
				return errdefs.Invalid(f(sprintf("mounts[%d].source", i)), "a VOLUME source is a volume name, 2 or more of [a-zA-Z0-9_.-] starting with a letter or digit (got %q)", m.GetSource())
			}
		case fleetv1.Mount_TMPFS:
		default:
			return errdefs.Invalid(f(sprintf("mounts[%d].type", i)), "must be BIND, VOLUME or TMPFS")
		}
	}
	for i, d := range spec.GetDevices() {
		if !path.IsAbs(d.GetHostPath()) {
			return errdefs.Invalid(f(sprintf("devices[%d].hostPath", i)), "%q must be an absolute path", d.GetHostPath())
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

// check applies the local policy to every service when a deployment is
// admitted.
func (p Policy) check(spec *fleetv1.DeploymentSpec) error {
	for _, s := range services(spec) {
		if _, err := p.place(s.spec); err != nil {
			return s.under(err)
		}
	}
	return nil
}

func deny(field, format string, args ...any) error {
	return &errdefs.FieldError{Field: specField + "." + field, Kind: errdefs.ErrPolicyDenied, Msg: sprintf(format, args...)}
}

// place applies the local policy to spec and returns what it adds for the
// engine: host paths as resolved and checked, the host address of
// published ports, the tmpfs size, the volumes allowed. The reconciler
// calls it again just before each container is created, so a symlink made
// after admission is caught, and the engine mounts the resolved paths.
func (p Policy) place(spec *fleetv1.DeploymentSpec) (engine.Host, error) {
	h := engine.Host{PublishHostIP: cmp.Or(p.PublishHostIP, DefaultPublishHostIP), TmpfsSize: cmp.Or(p.TmpfsSize, DefaultTmpfsSize),
		ForeignVolumes: p.AllowedVolumes}
	if spec.GetPrivileged() && !p.AllowPrivileged {
		return h, deny("privileged", "privileged containers are not allowed on this gateway (agent setting --allow-privileged)")
	}
	if len(spec.GetCapAdd()) > 0 && !p.AllowCapAdd {
		return h, deny("capAdd", "adding capabilities is not allowed on this gateway (agent setting --allow-cap-add)")
	}
	if err := p.checkNetwork(spec.GetNetworkMode()); err != nil {
		return h, err
	}
	if d := spec.GetLogging().GetDriver(); d != "" && !slices.Contains(logDrivers, d) && !slices.Contains(p.AllowedLogDrivers, d) {
		return h, deny("logging.driver", "log driver %q sends logs off the gateway with the engine's network and credentials; the drivers allowed are %v (agent setting --allow-log-driver %s)",
			d, append(slices.Clone(logDrivers), p.AllowedLogDrivers...), d)
	}
	for i, port := range spec.GetPorts() {
		if err := p.checkHostIP(i, port.GetHostIp(), h.PublishHostIP); err != nil {
			return h, err
		}
	}
	allowed := p.resolvedAllowed()
	for i, m := range spec.GetMounts() {
		if m.GetType() != fleetv1.Mount_BIND {
			continue
		}
		real, err := hostPathAllowed(m.GetSource(), allowed)
		if err != nil {
			return h, deny(sprintf("mounts[%d].source", i), "host path %s %v; the allowed host paths are %v (agent setting --allow-host-path)", m.GetSource(), err, p.AllowedHostPaths)
		}
		h.MountSources = setAt(h.MountSources, i, real)
	}
	for i, d := range spec.GetDevices() {
		real, err := hostPathAllowed(d.GetHostPath(), allowed)
		if err != nil {
			return h, deny(sprintf("devices[%d].hostPath", i), "device %s %v; the allowed host paths are %v (agent setting --allow-host-path)", d.GetHostPath(), err, p.AllowedHostPaths)
		}
		h.DeviceSources = setAt(h.DeviceSources, i, real)
	}
	return h, nil
}

func (p Policy) checkNetwork(mode string) error {
	switch {
	case mode == "" || mode == "default" || mode == "bridge" || mode == "none" || slices.Contains(p.AllowedNetworks, mode):
		return nil
	case mode == "host":
		if p.AllowHostNetwork {
			return nil
		}
		return deny("networkMode", "the host network is not allowed on this gateway (agent setting --allow-host-network)")
	case strings.HasPrefix(mode, "container:"):
		if slices.Contains(p.AllowedNetworks, "container:*") {
			return nil
		}
		return deny("networkMode", "joining another container's network (%s) is not allowed on this gateway (agent setting --allow-network %s, or container:* for any)", mode, mode)
	}
	return deny("networkMode", "network %q is not allowed on this gateway: bridge and none are, and the networks listed by the agent setting --allow-network (%v)", mode, p.AllowedNetworks)
}

// checkHostIP allows a published port on the default address or a listed one.
func (p Policy) checkHostIP(i int, ip, def string) error {
	if ip == "" {
		return nil
	}
	field := sprintf("ports[%d].hostIp", i)
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return errdefs.Invalid(specField+"."+field, "%q is not an IP address", ip)
	}
	for _, a := range append([]string{def}, p.AllowedPublishHostIPs...) {
		if b, err := netip.ParseAddr(a); err == nil && b == addr {
			return nil
		}
	}
	return deny(field, "publishing on %s is not allowed on this gateway: ports are published on %s (agent setting --publish-host-ip), other addresses must be listed (agent setting --allow-publish-host-ip %s)", ip, def, ip)
}

func setAt(s []string, i int, v string) []string {
	for len(s) <= i {
		s = append(s, "")
	}
	s[i] = v
	return s
}

// resolvedAllowed is the allowed host paths with their own symlinks
// resolved (the operator's, trusted): /data -> /mnt/sd/data allows both.
func (p Policy) resolvedAllowed() []string {
	var out []string
	for _, a := range p.AllowedHostPaths {
		out = append(out, filepath.Clean(a))
		if r, err := resolveHostPath(a); err == nil && r != filepath.Clean(a) {
			out = append(out, r)
		}
	}
	return out
}

// hostPathAllowed resolves hp on this host and returns the result if it
// lies under an allowed path; the error says why not.
func hostPathAllowed(hp string, allowed []string) (string, error) {
	real, err := resolveHostPath(hp)
	if err != nil {
		return "", err
	}
	for _, a := range allowed {
		if real == a || strings.HasPrefix(real, strings.TrimSuffix(a, "/")+"/") {
			return real, nil
		}
	}
	if real != filepath.Clean(hp) {
		return "", fmt.Errorf("resolves to %s, outside the allowed host paths", real)
	}
	return "", errors.New("is outside the allowed host paths")
}

// resolveHostPath follows every symlink of p on this host. A path whose end
// does not exist yet resolves to its longest existing prefix, resolved,
// with the rest as written (those names cannot be links: they do not
// exist); Docker refuses to bind a missing source, so such a mount fails at
// creation. A dangling link or a loop is refused: its target may appear.
func resolveHostPath(p string) (string, error) {
	p = filepath.Clean(p)
	rest := ""
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("cannot be resolved (%v)", unwrapPath(err))
		}
		if _, lerr := os.Lstat(p); lerr == nil {
			return "", fmt.Errorf("holds a symlink to a missing path (%s)", p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", fmt.Errorf("cannot be resolved (%v)", unwrapPath(err))
		}
		rest, p = filepath.Join(filepath.Base(p), rest), parent
	}
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
