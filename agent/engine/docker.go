// Package engine runs deployments' containers on the Docker Engine. The
// reconciler declares the small interfaces it needs; Docker implements them
// for the real engine and a fake implements them for simulated gateways.
package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/docker/client"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Container is a managed container as listed by the engine.
type Container struct {
	ID         string
	Name       string
	Deployment string
	Revision   int64
	SpecHash   string
	Running    bool
	// Service is the service label: the application's service the
	// container runs; empty on containers of agents before applications
	// (a single container, whose one service is named after the deployment).
	Service string
}

// State is what the engine reports of one container.
type State struct {
	ID           string
	Running      bool
	Status       string // created, running, exited, …
	ExitCode     int
	OOMKilled    bool
	RestartCount int
	Health       fleetv1.HealthCheck_Status
	Error        string
	ImageID      string
	StartedAt    time.Time
}

// Docker is the Docker Engine.
type Docker struct {
	cli   *client.Client
	owner string
	log   *slog.Logger
	facts *Facts
}

// NewDocker connects to the engine given by host (empty: DOCKER_HOST or the
// default socket), negotiating the API version. owner ("{tenant}/{gateway}")
// labels every container it creates, and List returns only those.
func NewDocker(host, owner string, log *slog.Logger) (*Docker, error) {
	opts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Docker{cli: cli, owner: owner, log: log}
	d.facts = NewFacts(d.Info)
	return d, nil
}

// Facts is the engine's description for the birth certificate, kept in
// step with the event stream: each Events subscription refreshes it and a
// failed stream marks it unreachable before the failure is passed on.
func (d *Docker) Facts() *Facts { return d.facts }

// Close releases the client.
func (d *Docker) Close() error { return d.cli.Close() }

// Info asks the engine to describe itself for the birth certificate; a
// birth reads Facts instead.
func (d *Docker) Info(ctx context.Context) *fleetv1.Engine {
	e := &fleetv1.Engine{Name: "docker"}
	v, err := d.cli.ServerVersion(ctx)
	if err != nil {
		e.Error = err.Error()
		return e
	}
	e.Version, e.ApiVersion, e.Reachable = v.Version, d.cli.ClientVersion(), true
	return e
}

// DataRoot is the engine's data directory (for free-space checks).
func (d *Docker) DataRoot(ctx context.Context) (string, error) {
	info, err := d.cli.Info(ctx)
	if err != nil {
		return "", mapErr(err)
	}
	return info.DockerRootDir, nil
}

// Pull pulls ref, passing registryAuth (base64 JSON, as the Docker API takes
// it; empty for none) for this pull only. progress, if set, is called with
// bytes done and total across layers as they change.
func (d *Docker) Pull(ctx context.Context, ref, registryAuth string, progress func(done, total int64)) error {
	rc, err := d.cli.ImagePull(ctx, ref, image.PullOptions{RegistryAuth: registryAuth})
	if err != nil {
		return pullErr(ref, err)
	}
	defer rc.Close()
	type layer struct{ cur, total int64 }
	layers := map[string]*layer{}
	dec := json.NewDecoder(rc)
	for {
		var m struct {
			ID             string `json:"id"`
			Status         string `json:"status"`
			ProgressDetail struct {
				Current int64 `json:"current"`
				Total   int64 `json:"total"`
			} `json:"progressDetail"`
			Error string `json:"error"`
		}
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return pullErr(ref, err)
		}
		if m.Error != "" {
			return pullErr(ref, errors.New(m.Error))
		}
		if progress == nil || m.ID == "" {
			continue
		}
		l := layers[m.ID]
		if l == nil {
			l = &layer{}
			layers[m.ID] = l
		}
		switch {
		case m.Status == "Downloading" && m.ProgressDetail.Total > 0:
			l.cur, l.total = m.ProgressDetail.Current, m.ProgressDetail.Total
		case m.Status == "Download complete" || m.Status == "Pull complete" || m.Status == "Already exists":
			l.cur = l.total
		default:
			continue
		}
		var done, total int64
		for _, l := range layers {
			done, total = done+l.cur, total+l.total
		}
		progress(done, total)
	}
}

// Image reports the local image id and repository digests of ref.
func (d *Docker) Image(ctx context.Context, ref string) (id string, repoDigests []string, found bool, err error) {
	ii, err := d.cli.ImageInspect(ctx, ref)
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", nil, false, nil
		}
		return "", nil, false, mapErr(err)
	}
	return ii.ID, ii.RepoDigests, true, nil
}

// RemoveImage removes an image; one still in use is left and reported.
func (d *Docker) RemoveImage(ctx context.Context, ref string) error {
	_, err := d.cli.ImageRemove(ctx, ref, image.RemoveOptions{PruneChildren: true})
	return mapErr(err)
}

// Create creates the container of spec, named name, with what the local
// policy decided in h. The named volumes it mounts are created first,
// labelled with the owner; an existing volume without that label is
// refused unless h lists it.
func (d *Docker) Create(ctx context.Context, name string, spec *fleetv1.DeploymentSpec, h Host) (string, error) {
	cfg, host, err := containerConfig(d.owner, spec, h)
	if err != nil {
		return "", errdefs.Invalid("deploy.spec", "%v", err)
	}
	for i, m := range spec.GetMounts() {
		if m.GetType() != fleetv1.Mount_VOLUME {
			continue
		}
		if err := d.ensureVolume(ctx, i, m.GetSource(), h.ForeignVolumes); err != nil {
			return "", err
		}
	}
	resp, err := d.cli.ContainerCreate(ctx, cfg, host, endpoints(h.Networks[:min(len(h.Networks), 1)]), nil, name)
	if err != nil {
		return "", fmt.Errorf("create container %s: %w", name, mapErr(err))
	}
	if err := d.connect(ctx, resp.ID, h.Networks); err != nil {
		d.Remove(context.WithoutCancel(ctx), resp.ID)
		return "", fmt.Errorf("create container %s: %w", name, err)
	}
	for _, w := range resp.Warnings {
		d.log.Warn("engine warning on create", "container", name, "warning", w)
	}
	return resp.ID, nil
}

// ensureVolume creates the volume of spec.Mounts[i] labelled with the owner,
// or checks that the one there is the agent's own or allowed: a volume
// someone else created may bind any host path (local driver, o=bind).
func (d *Docker) ensureVolume(ctx context.Context, i int, name string, foreign []string) error {
	v, err := d.cli.VolumeInspect(ctx, name)
	if cerrdefs.IsNotFound(err) {
		v, err = d.cli.VolumeCreate(ctx, volume.CreateOptions{Name: name, Labels: map[string]string{LabelOwner: d.owner}})
	}
	if err != nil {
		return fmt.Errorf("volume %s: %w", name, mapErr(err))
	}
	return volumeAllowed(i, name, v.Labels[LabelOwner], d.owner, foreign)
}

// Start starts a container.
func (d *Docker) Start(ctx context.Context, id string) error {
	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return fmt.Errorf("start container: %w", mapErr(err))
	}
	return nil
}

// Stop stops a container, waiting up to timeout (nil: its own stop timeout).
func (d *Docker) Stop(ctx context.Context, id string, timeout *time.Duration) error {
	var secs *int
	if timeout != nil {
		s := int(*timeout / time.Second)
		secs = &s
	}
	if err := d.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: secs}); err != nil {
		return fmt.Errorf("stop container: %w", mapErr(err))
	}
	return nil
}

// Remove removes a container, stopping it if it runs. A missing container
// is not an error.
func (d *Docker) Remove(ctx context.Context, id string) error {
	err := d.cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("remove container: %w", mapErr(err))
	}
	return nil
}

// Inspect reports a container's state.
func (d *Docker) Inspect(ctx context.Context, id string) (State, error) {
	ci, err := d.cli.ContainerInspect(ctx, id)
	if err != nil {
		return State{}, mapErr(err)
	}
	s := State{ID: ci.ID, ImageID: ci.Image, RestartCount: ci.RestartCount}
	if st := ci.State; st != nil {
		s.Running, s.Status, s.ExitCode, s.OOMKilled, s.Error = st.Running, string(st.Status), st.ExitCode, st.OOMKilled, st.Error
		s.StartedAt, _ = time.Parse(time.RFC3339Nano, st.StartedAt)
		if st.Health != nil {
			s.Health = map[string]fleetv1.HealthCheck_Status{
				"starting": fleetv1.HealthCheck_STARTING, "healthy": fleetv1.HealthCheck_HEALTHY, "unhealthy": fleetv1.HealthCheck_UNHEALTHY,
			}[st.Health.Status]
		}
	}
	return s, nil
}

// List returns the containers this owner created, running or not.
func (d *Docker) List(ctx context.Context) ([]Container, error) {
	cs, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", LabelOwner+"="+d.owner))})
	if err != nil {
		return nil, mapErr(err)
	}
	out := make([]Container, 0, len(cs))
	for _, c := range cs {
		rev, _ := strconv.ParseInt(c.Labels[LabelRevision], 10, 64)
		name := ""
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, Container{ID: c.ID, Name: name, Deployment: c.Labels[LabelDeployment], Revision: rev,
			SpecHash: c.Labels[LabelSpecHash], Running: c.State == "running", Service: c.Labels[LabelService]})
	}
	return out, nil
}

// mapErr maps engine errors onto the protocol's error kinds.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case client.IsErrConnectionFailed(err):
		return fmt.Errorf("%w: %v", errdefs.ErrRuntimeUnavailable, err)
	case cerrdefs.IsNotFound(err):
		return fmt.Errorf("%w: %v", errdefs.ErrNotFound, err)
	case strings.Contains(err.Error(), "no space left on device"):
		return fmt.Errorf("%w: %v", errdefs.ErrNoSpace, err)
	}
	return err
}

// pullErr maps a pull failure onto a precise kind, never an opaque I/O error.
func pullErr(ref string, err error) error {
	msg := err.Error()
	low := strings.ToLower(msg)
	var kind error
	switch {
	case strings.Contains(low, "server gave http response to https client"):
		host := ref
		if n, perr := name.ParseReference(ref); perr == nil {
			host = n.Context().RegistryStr()
		}
		return fmt.Errorf("pull %s: %w (%s)", ref, errdefs.PlainHTTPRegistry(host), msg)
	case strings.Contains(low, "x509") || strings.Contains(low, "certificate signed by unknown authority"):
		return fmt.Errorf("pull %s: %w: the registry's TLS certificate did not verify; for a private CA send its certificate as caCertificate with set-credentials (%s)", ref, errdefs.ErrTLS, msg)
	case client.IsErrConnectionFailed(err):
		kind = errdefs.ErrRuntimeUnavailable
	case strings.Contains(low, "unauthorized") || strings.Contains(low, "authentication required") || strings.Contains(low, "no basic auth credentials"):
		kind = errdefs.ErrUnauthenticated
	case strings.Contains(low, "denied"):
		kind = errdefs.ErrPermissionDenied
	case strings.Contains(low, "manifest unknown") || strings.Contains(low, "not found") || strings.Contains(low, "does not exist"):
		kind = errdefs.ErrNotFound
	case strings.Contains(low, "x509") || strings.Contains(low, "certificate") || strings.Contains(low, "tls"):
		kind = errdefs.ErrTLS
	case strings.Contains(low, "no space left"):
		kind = errdefs.ErrNoSpace
	case strings.Contains(low, "connection refused") || strings.Contains(low, "no such host") || strings.Contains(low, "i/o timeout") ||
		strings.Contains(low, "timeout") || strings.Contains(low, "network is unreachable") || strings.Contains(low, "connection reset"):
		kind = errdefs.ErrRegistryUnreachable
	default:
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	return fmt.Errorf("pull %s: %w: %s", ref, kind, msg)
}

// Event is a change of one of the owner's containers.
type Event struct {
	ContainerID string
	Deployment  string
	Action      string // die, oom, start, health_status: healthy, …
}

// Events streams changes of the owner's containers until ctx ends or the
// engine connection fails; the error channel then receives the reason.
// Subscribing refreshes Facts (the engine may be back, restarted or
// upgraded); a failure marks them unreachable before it is passed on.
func (d *Docker) Events(ctx context.Context) (<-chan Event, <-chan error) {
	msgs, errs := d.cli.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelOwner+"="+d.owner),
	)})
	d.facts.Refresh()
	out := make(chan Event)
	outErr := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			select {
			case m := <-msgs:
				ev := Event{ContainerID: m.Actor.ID, Deployment: m.Actor.Attributes[LabelDeployment], Action: string(m.Action)}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			case err := <-errs:
				err = mapErr(err)
				if ctx.Err() == nil {
					d.facts.Lost(err)
				}
				outErr <- err
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, outErr
}

// RemoteDigest asks the registry, through the engine (so with the engine's
// registry settings), which manifest digest ref resolves to now.
func (d *Docker) RemoteDigest(ctx context.Context, ref, registryAuth string) (string, error) {
	di, err := d.cli.DistributionInspect(ctx, ref, registryAuth)
	if err != nil {
		return "", pullErr(ref, err)
	}
	return di.Descriptor.Digest.String(), nil
}

// ImageSize asks the registry for the compressed size of ref for this
// machine's platform (config and layers), with the pull's registryAuth.
// A registry this process cannot reach as the engine does (a private CA
// installed for the engine only) yields an error, and the caller skips the
// check.
func (d *Docker) ImageSize(ctx context.Context, ref, registryAuth string) (int64, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return 0, err
	}
	var auth authn.Authenticator = authn.Anonymous
	if registryAuth != "" {
		raw, err := base64.URLEncoding.DecodeString(registryAuth)
		if err != nil {
			return 0, err
		}
		var a registry.AuthConfig
		if err := json.Unmarshal(raw, &a); err != nil {
			return 0, err
		}
		auth = &authn.Basic{Username: a.Username, Password: a.Password}
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithAuth(auth), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	if err != nil {
		return 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	total := m.Config.Size
	for _, l := range m.Layers {
		total += l.Size
	}
	return total, nil
}

// FreeSpace reports the free bytes on the engine's data root, when this
// process can see it (not, for example, from inside a container).
func (d *Docker) FreeSpace(ctx context.Context) (uint64, error) {
	root, err := d.DataRoot(ctx)
	if err != nil {
		return 0, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", root, err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// InsecureRegistry reports whether the engine pulls from host (host:port)
// without verified TLS: it is in the engine's insecure-registries, by name
// or by CIDR (127.0.0.0/8 by default). An error means the engine or the
// host's address could not be asked.
func (d *Docker) InsecureRegistry(ctx context.Context, host string) (bool, error) {
	info, err := d.cli.Info(ctx)
	if err != nil {
		return false, mapErr(err)
	}
	if info.RegistryConfig == nil {
		return false, errors.New("the engine reports no registry configuration")
	}
	if ic, ok := info.RegistryConfig.IndexConfigs[host]; ok {
		return !ic.Secure, nil
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", h)
	if err != nil {
		return false, err
	}
	for _, ip := range ips {
		for _, cidr := range info.RegistryConfig.InsecureRegistryCIDRs {
			if (*net.IPNet)(cidr).Contains(ip) {
				return true, nil
			}
		}
	}
	return false, nil
}
