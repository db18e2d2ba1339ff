package engine

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Fake is an in-memory container engine for simulated gateways and tests.
// It keeps the same contract as Docker (the enginetest suite runs against
// both): images come from a fake registry, containers run until stopped or
// until their spec's MODE=exit makes them exit.
type Fake struct {
	owner string
	// PullDelay is how long a pull takes.
	PullDelay time.Duration
	// FailPull, if set, decides the error of a pull (it may block until ctx ends).
	FailPull func(ctx context.Context, ref string) error
	// Free is the free space FreeSpace reports; Size the size of every image.
	Free uint64
	Size int64
	// AnyImage makes every reference pullable, with a digest derived from
	// it, as simulated gateways want.
	AnyImage bool
	// Crash, if set, decides whether a started container crashes, when,
	// and with which exit code: simulated gateways' crash rate.
	Crash func(spec *fleetv1.DeploymentSpec) (after time.Duration, code int, crash bool)
	// BeforeCreate, if set, is called with the container's name before
	// each Create: a test's look between a pull and the create after it.
	BeforeCreate func(name string)

	mu         sync.Mutex
	registry   map[string]string // ref -> digest
	images     map[string]string // ref -> digest
	bare       map[string]bool   // refs without a repository digest (Deliver)
	containers map[string]*fakeContainer
	names      map[string]string
	volumes    map[string]string // name -> owner label
	networks   map[string]string // name -> owner label
	subs       map[int]chan Event
	nextSub    int
	nextID     int
	pulls      int
}

type fakeContainer struct {
	Container
	spec  *fleetv1.DeploymentSpec
	host  Host
	state State
}

// NewFake returns a fake engine for owner, with 1 TiB free and 10 MiB
// images.
func NewFake(owner string) *Fake {
	return &Fake{owner: owner, Free: 1 << 40, Size: 10 << 20, registry: map[string]string{}, images: map[string]string{}, bare: map[string]bool{},
		containers: map[string]*fakeContainer{}, names: map[string]string{}, volumes: map[string]string{}, networks: map[string]string{}, subs: map[int]chan Event{}}
}

// Publish makes ref pullable from the fake registry (again, with a new
// digest if content differs) and returns its digest.
func (f *Fake) Publish(ref, content string) string {
	sum := sha256.Sum256([]byte(ref + "\x00" + content))
	d := "sha256:" + hex.EncodeToString(sum[:])
	f.mu.Lock()
	f.registry[ref] = d
	f.mu.Unlock()
	return d
}

// remote is ref's digest in the fake registry; f.mu is held.
func (f *Fake) remote(ref string) (string, bool) {
	if d, ok := f.registry[ref]; ok {
		return d, true
	}
	if f.AnyImage {
		sum := sha256.Sum256([]byte(ref))
		return "sha256:" + hex.EncodeToString(sum[:]), true
	}
	return "", false
}

// Load puts an image in the engine without a pull, as an operator's
// docker load or docker build does, and returns its id (its digest here).
func (f *Fake) Load(ref, content string) string {
	sum := sha256.Sum256([]byte(ref + "\x00" + content))
	d := "sha256:" + hex.EncodeToString(sum[:])
	f.mu.Lock()
	f.images[ref] = d
	f.mu.Unlock()
	return d
}

// Deliver puts an image in the engine under name with the given id and no
// repository digest, as the agent's pull from loopback leaves it.
func (f *Fake) Deliver(name, id string) {
	f.mu.Lock()
	f.images[name], f.bare[name] = id, true
	f.mu.Unlock()
}

// Unpublish removes ref from the fake registry.
func (f *Fake) Unpublish(ref string) {
	f.mu.Lock()
	delete(f.registry, ref)
	f.mu.Unlock()
}

// ImageSize reports Size for an image in the fake registry.
func (f *Fake) ImageSize(_ context.Context, ref, _ string) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.remote(ref); !ok {
		return 0, fmt.Errorf("%w: %s", errdefs.ErrNotFound, ref)
	}
	return f.Size, nil
}

// FreeSpace reports Free.
func (f *Fake) FreeSpace(context.Context) (uint64, error) { return f.Free, nil }

// Info describes the fake engine.
func (f *Fake) Info(context.Context) *fleetv1.Engine {
	return &fleetv1.Engine{Name: "fake", Version: "1", ApiVersion: "1", Reachable: true}
}

func (f *Fake) Pull(ctx context.Context, ref, _ string, progress func(done, total int64)) error {
	if f.FailPull != nil {
		if err := f.FailPull(ctx, ref); err != nil {
			return err
		}
	}
	f.mu.Lock()
	d, ok := f.remote(ref)
	if ok {
		f.pulls++
	}
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("pull %s: %w: manifest unknown", ref, errdefs.ErrNotFound)
	}
	select {
	case <-time.After(f.PullDelay):
	case <-ctx.Done():
		return ctx.Err()
	}
	if progress != nil {
		for done := int64(0); done <= f.Size; done += f.Size / 100 {
			progress(done, f.Size)
		}
	}
	f.mu.Lock()
	f.images[ref] = d
	f.mu.Unlock()
	return nil
}

// Pulls is how many pulls of a published image have begun so far.
func (f *Fake) Pulls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pulls
}

func (f *Fake) Image(_ context.Context, ref string) (string, []string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.images[ref]
	if !ok {
		return "", nil, false, nil
	}
	if f.bare[ref] {
		return d, nil, true, nil
	}
	return d, []string{repoOf(ref) + "@" + d}, true, nil
}

func (f *Fake) RemoteDigest(_ context.Context, ref, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.remote(ref)
	if !ok {
		return "", fmt.Errorf("%w: %s", errdefs.ErrNotFound, ref)
	}
	return d, nil
}

// RemoveImage removes an image by reference or id (its digest here).
func (f *Fake) RemoveImage(_ context.Context, ref string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for r, d := range f.images {
		if r == ref || d == ref {
			delete(f.images, r)
			delete(f.bare, r)
		}
	}
	return nil
}

// AddVolume adds a named volume labelled with owner ("" for a volume
// someone else created).
func (f *Fake) AddVolume(name, owner string) {
	f.mu.Lock()
	f.volumes[name] = owner
	f.mu.Unlock()
}

// HostOf is what the policy decided for the container named name.
func (f *Fake) HostOf(name string) (Host, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[f.names[name]]
	if !ok {
		return Host{}, false
	}
	return c.host, true
}

func (f *Fake) Create(_ context.Context, name string, spec *fleetv1.DeploymentSpec, h Host) (string, error) {
	if f.BeforeCreate != nil {
		f.BeforeCreate(name)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	imageID, ok := f.images[spec.GetImage()]
	if !ok {
		return "", fmt.Errorf("create container %s: %w: no such image %s", name, errdefs.ErrNotFound, spec.GetImage())
	}
	if _, taken := f.names[name]; taken {
		return "", fmt.Errorf("create container %s: the name is in use", name)
	}
	for i, m := range spec.GetMounts() {
		if m.GetType() != fleetv1.Mount_VOLUME {
			continue
		}
		label, ok := f.volumes[m.GetSource()]
		if !ok {
			label = f.owner
			f.volumes[m.GetSource()] = label
		}
		if err := volumeAllowed(i, m.GetSource(), label, f.owner, h.ForeignVolumes); err != nil {
			return "", err
		}
	}
	for _, n := range h.Networks {
		if _, ok := f.networks[n.Name]; !ok {
			return "", fmt.Errorf("create container %s: %w: no such network %s", name, errdefs.ErrNotFound, n.Name)
		}
	}
	f.nextID++
	id := fmt.Sprintf("fake%060d", f.nextID)
	f.containers[id] = &fakeContainer{
		Container: Container{ID: id, Name: name, Deployment: spec.GetName(), Revision: spec.GetRevision(),
			SpecHash: cmp.Or(h.SpecHash, SpecHash(spec)), Service: cmp.Or(h.Service, spec.GetName())},
		spec: spec, host: h, state: State{ID: id, Status: "created", ImageID: imageID},
	}
	f.names[name] = id
	return id, nil
}

func (f *Fake) Start(_ context.Context, id string) error {
	f.mu.Lock()
	c, ok := f.containers[id]
	if !ok {
		f.mu.Unlock()
		return fmt.Errorf("start container: %w: %s", errdefs.ErrNotFound, id)
	}
	exitCode, exits := 0, false
	if c.spec.GetEnv()["MODE"] == "exit" {
		exitCode, _ = strconv.Atoi(c.spec.GetEnv()["EXIT_CODE"])
		exits = true
	}
	c.Running, c.state.Running, c.state.Status, c.state.StartedAt = true, true, "running", time.Now()
	c.state.Health = fakeHealth(c.spec)
	crash := f.Crash
	f.mu.Unlock()
	f.emit(c.Container, "start")
	if crash != nil && !exits {
		if after, code, ok := crash(c.spec); ok {
			time.AfterFunc(after, func() { f.exit(id, code) })
		}
	}
	if exits {
		f.exit(id, exitCode)
	}
	return nil
}

// fakeHealth is the health of a started container: with a health check,
// HEALTHY at once, or UNHEALTHY for MODE=unhealthy (as testapp's /healthz).
func fakeHealth(spec *fleetv1.DeploymentSpec) fleetv1.HealthCheck_Status {
	if t := spec.GetHealthCheck().GetTest(); len(t) == 0 || t[0] == "NONE" {
		return fleetv1.HealthCheck_NONE
	}
	if spec.GetEnv()["MODE"] == "unhealthy" {
		return fleetv1.HealthCheck_UNHEALTHY
	}
	return fleetv1.HealthCheck_HEALTHY
}

// exit makes a running container exit with code.
func (f *Fake) exit(id string, code int) {
	f.mu.Lock()
	c, ok := f.containers[id]
	if !ok || !c.Running {
		f.mu.Unlock()
		return
	}
	c.Running, c.state.Running, c.state.Status, c.state.ExitCode = false, false, "exited", code
	f.mu.Unlock()
	f.emit(c.Container, "die")
}

func (f *Fake) Stop(_ context.Context, id string, _ *time.Duration) error {
	f.mu.Lock()
	_, ok := f.containers[id]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("stop container: %w: %s", errdefs.ErrNotFound, id)
	}
	f.exit(id, 0)
	return nil
}

func (f *Fake) Remove(_ context.Context, id string) error {
	f.mu.Lock()
	c, ok := f.containers[id]
	if ok {
		delete(f.containers, id)
		delete(f.names, c.Name)
	}
	f.mu.Unlock()
	if ok {
		f.emit(c.Container, "destroy")
	}
	return nil
}

func (f *Fake) Inspect(_ context.Context, id string) (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.containers[id]
	if !ok {
		return State{}, fmt.Errorf("%w: no such container %s", errdefs.ErrNotFound, id)
	}
	return c.state, nil
}

func (f *Fake) List(context.Context) ([]Container, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Container, 0, len(f.containers))
	for _, c := range f.containers {
		out = append(out, c.Container)
	}
	return out, nil
}

func (f *Fake) Events(ctx context.Context) (<-chan Event, <-chan error) {
	ch := make(chan Event, 64)
	f.mu.Lock()
	id := f.nextSub
	f.nextSub++
	f.subs[id] = ch
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		delete(f.subs, id)
		f.mu.Unlock()
	}()
	return ch, make(chan error)
}

func (f *Fake) emit(c Container, action string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ch := range f.subs {
		select {
		case ch <- Event{ContainerID: c.ID, Deployment: c.Deployment, Action: action}:
		default:
		}
	}
}

// repoOf strips the tag or digest of a reference.
func repoOf(ref string) string {
	for i := len(ref) - 1; i >= 0; i-- {
		switch ref[i] {
		case '@':
			return ref[:i]
		case ':':
			return ref[:i]
		case '/':
			return ref
		}
	}
	return ref
}
