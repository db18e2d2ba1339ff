package engine

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/go-connections/nat"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Labels the agent puts on every container it creates. A container without
// LabelOwner equal to the agent's owner id is never touched.
const (
	LabelOwner      = "io.fleet-agent.owner" // "{tenant}/{gateway}"
	LabelDeployment = "io.fleet-agent.deployment"
	LabelRevision   = "io.fleet-agent.revision"
	LabelSpecHash   = "io.fleet-agent.spec-hash"
)

// Default log options: gateway flash fills up.
var defaultLogOptions = map[string]string{"max-size": "10m", "max-file": "3"}

// SpecHash is a stable hash of a deployment spec; a container whose label
// differs from its desired spec's hash is replaced.
func SpecHash(spec *fleetv1.DeploymentSpec) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(spec)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// ContainerName is the engine name of a deployment's container at a revision.
func ContainerName(deployment string, revision int64) string {
	return fmt.Sprintf("fleet-%s-r%d", deployment, revision)
}

// Host is what the gateway's local policy decides for a container beyond
// its spec. It is not part of the spec hash: a change applies to
// containers created after it. The zero value keeps the spec as written.
type Host struct {
	// MountSources[i], when set, is the host path of spec.Mounts[i] (a
	// BIND) with its symlinks resolved, as the policy checked it: it is
	// what the engine mounts, so a link swapped in later is not followed.
	MountSources []string
	// DeviceSources[i], when set, is spec.Devices[i].HostPath resolved.
	DeviceSources []string
	// PublishHostIP is the host address of published ports whose spec
	// gives none (empty: every address, Docker's default).
	PublishHostIP string
	// TmpfsSize is the size of every tmpfs mount in bytes (0: unlimited).
	TmpfsSize int64
	// ForeignVolumes are named volumes this agent did not create that the
	// spec may mount. Any other volume must carry the owner label; a
	// missing one is created with it.
	ForeignVolumes []string

	// An application's service (see app.go); the zero values are a single
	// container's.

	// Service is the container's service label; empty: the deployment's
	// name (a single container's one service).
	Service string
	// SpecHash, when set, is the spec-hash label instead of SpecHash(spec):
	// an application's service hashes what its container is, without the
	// revision, so that an unchanged service keeps its container.
	SpecHash string
	// Networks are the application networks the container joins, its
	// service name as an alias on each; the first is its network mode.
	Networks []Network
}

// containerConfig translates a spec into Docker's create parameters.
func containerConfig(owner string, spec *fleetv1.DeploymentSpec, h Host) (*container.Config, *container.HostConfig, error) {
	labels := map[string]string{}
	for k, v := range spec.GetLabels() {
		labels[k] = v
	}
	labels[LabelOwner] = owner
	labels[LabelDeployment] = spec.GetName()
	labels[LabelRevision] = strconv.FormatInt(spec.GetRevision(), 10)
	labels[LabelSpecHash] = cmp.Or(h.SpecHash, SpecHash(spec))
	labels[LabelService] = cmp.Or(h.Service, spec.GetName())

	cfg := &container.Config{
		Image:      spec.GetImage(),
		Cmd:        spec.GetCommand(),
		Entrypoint: spec.GetEntrypoint(),
		Labels:     labels,
		User:       spec.GetUser(),
		WorkingDir: spec.GetWorkingDir(),
	}
	for k, v := range spec.GetEnv() {
		cfg.Env = append(cfg.Env, k+"="+v)
	}
	if st := spec.GetStopTimeout(); st != nil {
		secs := int(st.AsDuration() / time.Second)
		cfg.StopTimeout = &secs
	}
	if hc := spec.GetHealthCheck(); hc != nil {
		cfg.Healthcheck = &container.HealthConfig{
			Test: hc.GetTest(), Interval: hc.GetInterval().AsDuration(), Timeout: hc.GetTimeout().AsDuration(),
			Retries: int(hc.GetRetries()), StartPeriod: hc.GetStartPeriod().AsDuration(),
		}
	}

	host := &container.HostConfig{
		Privileged:  spec.GetPrivileged(),
		CapAdd:      spec.GetCapAdd(),
		CapDrop:     spec.GetCapDrop(),
		NetworkMode: container.NetworkMode(spec.GetNetworkMode()),
		LogConfig:   container.LogConfig{Type: "json-file", Config: defaultLogOptions},
		Resources: container.Resources{
			Memory:   spec.GetResources().GetMemoryBytes(),
			NanoCPUs: spec.GetResources().GetNanoCpus(),
		},
	}
	if len(h.Networks) > 0 {
		host.NetworkMode = container.NetworkMode(h.Networks[0].Name)
	}
	if cpus := spec.GetResources().GetCpus(); cpus > 0 {
		host.Resources.NanoCPUs = int64(cpus * 1e9)
	}
	if l := spec.GetLogging(); l != nil && l.GetDriver() != "" && l.GetDriver() != "json-file" {
		host.LogConfig = container.LogConfig{Type: l.GetDriver(), Config: l.GetOptions()}
	} else if l != nil {
		// json-file has no cap of its own: the spec's options over ours.
		host.LogConfig.Config = maps.Clone(defaultLogOptions)
		maps.Copy(host.LogConfig.Config, l.GetOptions())
	}
	if rp := spec.GetRestartPolicy(); rp != nil {
		host.RestartPolicy = container.RestartPolicy{Name: restartMode(rp.GetMode()), MaximumRetryCount: int(rp.GetMaxRetries())}
	}
	if err := publish(cfg, host, spec.GetPorts(), h.PublishHostIP); err != nil {
		return nil, nil, err
	}
	for i, m := range spec.GetMounts() {
		mt := map[fleetv1.Mount_Type]mount.Type{fleetv1.Mount_BIND: mount.TypeBind, fleetv1.Mount_VOLUME: mount.TypeVolume, fleetv1.Mount_TMPFS: mount.TypeTmpfs}[m.GetType()]
		mm := mount.Mount{Type: mt, Source: override(m.GetSource(), h.MountSources, i), Target: m.GetTarget(), ReadOnly: m.GetReadOnly()}
		if mt == mount.TypeTmpfs && h.TmpfsSize > 0 {
			mm.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: h.TmpfsSize}
		}
		host.Mounts = append(host.Mounts, mm)
	}
	for i, d := range spec.GetDevices() {
		perms := d.GetPermissions()
		if perms == "" {
			perms = "rwm"
		}
		target := d.GetContainerPath()
		if target == "" {
			target = d.GetHostPath()
		}
		host.Devices = append(host.Devices, container.DeviceMapping{PathOnHost: override(d.GetHostPath(), h.DeviceSources, i), PathInContainer: target, CgroupPermissions: perms})
	}
	return cfg, host, nil
}

// publish exposes ports and binds those with a host port or address, on
// defaultIP when the port names none.
func publish(cfg *container.Config, host *container.HostConfig, ports []*fleetv1.Port, defaultIP string) error {
	if len(ports) == 0 {
		return nil
	}
	cfg.ExposedPorts = nat.PortSet{}
	host.PortBindings = nat.PortMap{}
	for _, p := range ports {
		proto := p.GetProtocol()
		if proto == "" {
			proto = "tcp"
		}
		port, err := nat.NewPort(proto, strconv.Itoa(int(p.GetContainerPort())))
		if err != nil {
			return err
		}
		cfg.ExposedPorts[port] = struct{}{}
		if p.GetHostPort() != 0 || p.GetHostIp() != "" { // host port 0: any free port
			hp := ""
			if p.GetHostPort() != 0 {
				hp = strconv.Itoa(int(p.GetHostPort()))
			}
			ip := p.GetHostIp()
			if ip == "" {
				ip = defaultIP
			}
			host.PortBindings[port] = append(host.PortBindings[port], nat.PortBinding{HostIP: ip, HostPort: hp})
		}
	}
	return nil
}

// volumeAllowed refuses the volume of spec.Mounts[i] unless this agent
// created it (its owner label is owner) or foreign lists it.
func volumeAllowed(i int, name, label, owner string, foreign []string) error {
	if label == owner || slices.Contains(foreign, name) {
		return nil
	}
	return &errdefs.FieldError{Field: fmt.Sprintf("spec.mounts[%d].source", i), Kind: errdefs.ErrPolicyDenied,
		Msg: fmt.Sprintf("volume %q was not created by this agent (it may bind any host path); allow it with the agent setting --allow-volume %s", name, name)}
}

// override is resolved[i] if set, else p.
func override(p string, resolved []string, i int) string {
	if i < len(resolved) && resolved[i] != "" {
		return resolved[i]
	}
	return p
}

func restartMode(m fleetv1.RestartPolicy_Mode) container.RestartPolicyMode {
	switch m {
	case fleetv1.RestartPolicy_ALWAYS:
		return container.RestartPolicyAlways
	case fleetv1.RestartPolicy_UNLESS_STOPPED:
		return container.RestartPolicyUnlessStopped
	case fleetv1.RestartPolicy_ON_FAILURE:
		return container.RestartPolicyOnFailure
	}
	return container.RestartPolicyDisabled
}
