package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/go-connections/nat"
	"google.golang.org/protobuf/proto"

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

// containerConfig translates a spec into Docker's create parameters.
func containerConfig(owner string, spec *fleetv1.DeploymentSpec) (*container.Config, *container.HostConfig, error) {
	labels := map[string]string{}
	for k, v := range spec.GetLabels() {
		labels[k] = v
	}
	labels[LabelOwner] = owner
	labels[LabelDeployment] = spec.GetName()
	labels[LabelRevision] = strconv.FormatInt(spec.GetRevision(), 10)
	labels[LabelSpecHash] = SpecHash(spec)

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
	if cpus := spec.GetResources().GetCpus(); cpus > 0 {
		host.Resources.NanoCPUs = int64(cpus * 1e9)
	}
	if l := spec.GetLogging(); l != nil && l.GetDriver() != "" {
		host.LogConfig = container.LogConfig{Type: l.GetDriver(), Config: l.GetOptions()}
	}
	if rp := spec.GetRestartPolicy(); rp != nil {
		host.RestartPolicy = container.RestartPolicy{Name: restartMode(rp.GetMode()), MaximumRetryCount: int(rp.GetMaxRetries())}
	}
	if len(spec.GetPorts()) > 0 {
		cfg.ExposedPorts = nat.PortSet{}
		host.PortBindings = nat.PortMap{}
		for _, p := range spec.GetPorts() {
			proto := p.GetProtocol()
			if proto == "" {
				proto = "tcp"
			}
			port, err := nat.NewPort(proto, strconv.Itoa(int(p.GetContainerPort())))
			if err != nil {
				return nil, nil, err
			}
			cfg.ExposedPorts[port] = struct{}{}
			if p.GetHostPort() != 0 || p.GetHostIp() != "" { // host port 0: any free port
				hp := ""
				if p.GetHostPort() != 0 {
					hp = strconv.Itoa(int(p.GetHostPort()))
				}
				host.PortBindings[port] = append(host.PortBindings[port], nat.PortBinding{HostIP: p.GetHostIp(), HostPort: hp})
			}
		}
	}
	for _, m := range spec.GetMounts() {
		mt := map[fleetv1.Mount_Type]mount.Type{fleetv1.Mount_BIND: mount.TypeBind, fleetv1.Mount_VOLUME: mount.TypeVolume, fleetv1.Mount_TMPFS: mount.TypeTmpfs}[m.GetType()]
		host.Mounts = append(host.Mounts, mount.Mount{Type: mt, Source: m.GetSource(), Target: m.GetTarget(), ReadOnly: m.GetReadOnly()})
	}
	for _, d := range spec.GetDevices() {
		perms := d.GetPermissions()
		if perms == "" {
			perms = "rwm"
		}
		target := d.GetContainerPath()
		if target == "" {
			target = d.GetHostPath()
		}
		host.Devices = append(host.Devices, container.DeviceMapping{PathOnHost: d.GetHostPath(), PathInContainer: target, CgroupPermissions: perms})
	}
	return cfg, host, nil
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
