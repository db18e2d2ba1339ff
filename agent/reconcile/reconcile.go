// Package reconcile keeps the container engine at the desired state of the
// gateway's deployments: it applies specs and stops, starts, restarts and
// removes deployments, rolls out new revisions (pull first, then replace,
// health-gated, rolled back on failure), and on start adopts, recreates or
// removes the containers it labelled. It never touches a container it did
// not create. Each deployment has at most one operation at a time: a new
// one supersedes the one in progress and waits for it to stop.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// Engine is what the reconciler needs of a container engine.
type Engine interface {
	Pull(ctx context.Context, ref, registryAuth string, progress func(done, total int64)) error
	Image(ctx context.Context, ref string) (id string, repoDigests []string, found bool, err error)
	Create(ctx context.Context, name string, spec *fleetv1.DeploymentSpec, host engine.Host) (string, error)
	Start(ctx context.Context, id string) error
	Stop(ctx context.Context, id string, timeout *time.Duration) error
	Remove(ctx context.Context, id string) error
	Inspect(ctx context.Context, id string) (engine.State, error)
	List(ctx context.Context) ([]engine.Container, error)
	RemoveImage(ctx context.Context, ref string) error
	Events(ctx context.Context) (<-chan engine.Event, <-chan error)
	RemoteDigest(ctx context.Context, ref, registryAuth string) (string, error)
	ImageSize(ctx context.Context, ref, registryAuth string) (int64, error)
	FreeSpace(ctx context.Context) (uint64, error)
}

// Store holds the desired deployments.
type Store interface {
	PutDeployment(name string, d store.Deployment) error
	GetDeployment(name string) (store.Deployment, bool, error)
	Deployments() (map[string]store.Deployment, error)
	DeleteDeployment(name string) error
	TrackPulledImage(id, ref string) error
	PulledImages() (map[string]string, error)
	UntrackImage(id string) error
	StageImage(name string, img store.Staged) error
	StagedImages() (map[string]store.Staged, error)
	UnstageImage(name string) error
}

// Config configures a Reconciler.
type Config struct {
	Engine Engine
	Store  Store
	Policy Policy
	// Auth returns the engine's registry auth for pulling an image ("" for
	// none); nil means no credentials.
	Auth func(ctx context.Context, image string) (string, error)
	// Refresh is asked after the registry refused a pull's credential: it
	// returns a fresh one (ok) when there is such a thing (an ECR token),
	// and the pull is tried once more. Nil: never.
	Refresh func(ctx context.Context, image string) (auth string, ok bool, err error)
	// Trust, when set, checks an image and the manifest digest it
	// resolves to against the gateway's image trust policy before it is
	// pulled and before a container is created from it (agent/trust).
	Trust func(ctx context.Context, image, digest string) error
	// Delivery pulls images through the agent's own store (pull mode
	// AGENT); nil: the engine pulls every image itself.
	Delivery Delivery
	// PullMode is the pull mode of specs that leave it unspecified
	// (--pull-mode); UNSPECIFIED means AGENT when Delivery is set.
	PullMode fleetv1.Pull_Mode
	// ImageGC removes images the agent pulled that no deployment keeps
	// (each keeps the image of its current and of its previous revision).
	// Images the agent did not pull (loaded or built by an operator, used
	// with pullPolicy NEVER or found present) are never removed.
	ImageGC bool
	// Publish sends a deployment's status, retained; a nil status clears it.
	Publish func(ctx context.Context, name string, st *fleetv1.DeploymentStatus)
	// Event publishes an event.
	Event func(*fleetv1.Event)
	// PollInterval is how often a starting container is inspected.
	PollInterval time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Reconciler runs deployments.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	running sync.WaitGroup // every begun operation, until it ends

	mu     sync.Mutex
	status map[string]*fleetv1.DeploymentStatus // guarded by mu
	ops    map[string]*op                       // the current operation of each deployment; guarded by mu
	closed bool                                 // Shutdown has begun; guarded by mu
}

// New returns a reconciler.
func New(cfg Config) (*Reconciler, error) {
	if cfg.Engine == nil || cfg.Store == nil || cfg.Publish == nil {
		return nil, errors.New("reconcile: Engine, Store and Publish are required")
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 250 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Event == nil {
		cfg.Event = func(*fleetv1.Event) {}
	}
	if cfg.Auth == nil {
		cfg.Auth = func(context.Context, string) (string, error) { return "", nil }
	}
	return &Reconciler{cfg: cfg, log: cfg.Logger, status: map[string]*fleetv1.DeploymentStatus{}, ops: map[string]*op{}}, nil
}

// Statuses returns the last status of every deployment, by name.
func (r *Reconciler) Statuses() []*fleetv1.DeploymentStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*fleetv1.DeploymentStatus, 0, len(r.status))
	for _, st := range r.status {
		out = append(out, proto.Clone(st).(*fleetv1.DeploymentStatus))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

// Republish sends every status again (for rebirth).
func (r *Reconciler) Republish(ctx context.Context) {
	for _, st := range r.Statuses() {
		r.cfg.Publish(ctx, st.GetName(), st)
	}
}

func (r *Reconciler) publish(ctx context.Context, st *fleetv1.DeploymentStatus) {
	st.UpdatedAt = timestamppb.New(r.cfg.Now())
	c := proto.Clone(st).(*fleetv1.DeploymentStatus)
	r.mu.Lock()
	r.status[st.GetName()] = c
	r.mu.Unlock()
	r.cfg.Publish(ctx, st.GetName(), c)
}

func (r *Reconciler) clear(ctx context.Context, name string) {
	r.mu.Lock()
	delete(r.status, name)
	r.mu.Unlock()
	r.cfg.Publish(ctx, name, nil)
}

func (r *Reconciler) current(name string) *fleetv1.DeploymentStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st := r.status[name]; st != nil {
		return proto.Clone(st).(*fleetv1.DeploymentStatus)
	}
	return nil
}

// containersOf lists the engine's containers of one deployment.
func (r *Reconciler) containersOf(ctx context.Context, name string) ([]engine.Container, error) {
	all, err := r.cfg.Engine.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []engine.Container
	for _, c := range all {
		if c.Deployment == name {
			out = append(out, c)
		}
	}
	return out, nil
}

// rollout brings the deployment to spec. The new image is fully pulled
// before the old container is touched; the new container must be ready
// (running, and healthy if it has a health check, for minReadySeconds)
// within progressDeadlineSeconds, or it is removed and the old one started
// again (ROLLED_BACK).
func (r *Reconciler) rollout(ctx context.Context, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	name, hash := spec.GetName(), engine.SpecHash(spec)
	st := newStatus(spec, fleetv1.DeploymentStatus_PENDING, "")
	r.publish(ctx, st)
	fail := func(phase fleetv1.DeploymentStatus_Phase, err error) (*fleetv1.DeploymentStatus, error) {
		if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errSuperseded) {
			return st, err // shutdown: the command resumes on the next start
		}
		st.Phase, st.Code, st.Message = phase, errdefs.Code(err), err.Error()
		r.publish(context.WithoutCancel(ctx), st)
		return st, err
	}

	existing, err := r.containersOf(ctx, name)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	var old *engine.Container
	for i := range existing {
		c := &existing[i]
		if c.SpecHash == hash && c.Running {
			// Already there (a resumed command, or the same revision again).
			return r.adopt(ctx, spec, *c, existing)
		}
		if c.SpecHash != hash && (old == nil || c.Running && !old.Running || c.Running == old.Running && c.Revision > old.Revision) {
			old = c
		}
	}

	st.Phase = fleetv1.DeploymentStatus_PULLING
	r.publish(ctx, st)
	vouched, err := r.trusted(ctx, spec)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	digest, pulled, err := r.ensureImage(ctx, spec, st)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	imageID, digests, _, err := r.localImage(ctx, spec)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	if vouched != "" {
		if !slices.Contains(digests, vouched) {
			return fail(fleetv1.DeploymentStatus_FAILED, changedErr(spec, vouched, digests))
		}
		digest = vouched
	}
	st.ImageDigest, st.PullProgress = digest, nil

	id, err := r.create(ctx, spec, st, existing, imageID)
	if err != nil {
		return fail(fleetv1.DeploymentStatus_FAILED, err)
	}
	if phase, err := r.replace(ctx, spec, st, id, old); err != nil {
		return fail(phase, err)
	}
	for _, c := range existing {
		if c.ID != id {
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				r.log.Warn("remove previous container", "deployment", name, "container", c.Name, "err", err)
			}
		}
	}
	st.Phase, st.Code, st.Message = fleetv1.DeploymentStatus_RUNNING, fleetv1.Reply_OK, ""
	r.publish(ctx, st)
	r.recordImage(name, imageID, spec.GetImage(), pulled)
	r.gc(ctx)
	return st, nil
}

// create creates the new revision's container (CREATING), replacing one
// left over from an interrupted attempt.
func (r *Reconciler) create(ctx context.Context, spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus, existing []engine.Container, imageID string) (string, error) {
	st.Phase = fleetv1.DeploymentStatus_CREATING
	r.publish(ctx, st)
	newName := engine.ContainerName(spec.GetName(), spec.GetRevision())
	for _, c := range existing {
		if c.Name == newName {
			if err := r.cfg.Engine.Remove(ctx, c.ID); err != nil {
				return "", err
			}
		}
	}
	// The policy again, just before creation: a host path may have become
	// a symlink since admission; the engine mounts what was checked here.
	host, err := r.cfg.Policy.place(spec)
	if err != nil {
		return "", err
	}
	id, err := r.cfg.Engine.Create(ctx, newName, spec, host)
	if err != nil {
		return "", err
	}
	// The container must hold exactly the image checked above: a name
	// retagged meanwhile is refused, not run.
	if s, err := r.cfg.Engine.Inspect(ctx, id); err != nil || imageID != "" && s.ImageID != imageID {
		r.cfg.Engine.Remove(context.WithoutCancel(ctx), id)
		if err != nil {
			return "", err
		}
		return "", fmt.Errorf("%w: %s was retagged while the container was created (verified image %s, the container got %s); deploy again",
			errdefs.ErrUntrustedImage, spec.GetImage(), imageID, s.ImageID)
	}
	st.ContainerId = id
	return id, nil
}

// replace starts the new container id in place of old (stopped first
// unless the strategy is START_FIRST) and waits until it is ready. If it
// does not become ready, it is removed and old started again: the phase
// returned with the error is then ROLLED_BACK, else FAILED.
func (r *Reconciler) replace(ctx context.Context, spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus, id string, old *engine.Container) (fleetv1.DeploymentStatus_Phase, error) {
	name := spec.GetName()
	startFirst := spec.GetUpdate().GetStrategy() == fleetv1.Update_START_FIRST
	oldWasRunning := old != nil && old.Running && old.Name != engine.ContainerName(name, spec.GetRevision())
	if oldWasRunning && !startFirst {
		if err := r.cfg.Engine.Stop(ctx, old.ID, nil); err != nil {
			r.cfg.Engine.Remove(context.WithoutCancel(ctx), id)
			return fleetv1.DeploymentStatus_FAILED, err
		}
	}
	st.Phase = fleetv1.DeploymentStatus_STARTING
	r.publish(ctx, st)
	err := r.cfg.Engine.Start(ctx, id)
	if err == nil {
		err = r.waitReady(ctx, spec, id, st)
	}
	if err == nil {
		return fleetv1.DeploymentStatus_RUNNING, nil
	}
	bg := context.WithoutCancel(ctx)
	if rmErr := r.cfg.Engine.Remove(bg, id); rmErr != nil {
		r.log.Error("remove failed container", "deployment", name, "err", rmErr)
	}
	st.ContainerId = ""
	if !oldWasRunning {
		return fleetv1.DeploymentStatus_FAILED, err
	}
	if startErr := r.cfg.Engine.Start(bg, old.ID); startErr != nil {
		r.log.Error("restart previous container", "deployment", name, "err", startErr)
		return fleetv1.DeploymentStatus_FAILED, err
	}
	st.ContainerId = old.ID
	r.cfg.Event(&fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "deployment.rolled-back", Deployment: name,
		Code: errdefs.Code(err), Message: sprintf("revision %d did not become ready (%v); revision %d runs again", spec.GetRevision(), err, old.Revision)})
	return fleetv1.DeploymentStatus_ROLLED_BACK, fmt.Errorf("rolled back to revision %d: %w", old.Revision, err)
}

// recordImage notes the image a deployment now runs, keeping the one
// before for rollback, and that the agent pulled it (pulled): only such
// images are ever removed.
func (r *Reconciler) recordImage(name, id, ref string, pulled bool) {
	if id == "" {
		return
	}
	// A prefetched image is now kept as the deployment's, or replaced.
	if err := r.cfg.Store.UnstageImage(name); err != nil {
		r.log.Warn("forget prefetched image", "deployment", name, "err", err)
	}
	if pulled {
		if err := r.cfg.Store.TrackPulledImage(id, ref); err != nil {
			r.log.Warn("track pulled image", "image", ref, "err", err)
		}
	}
	d, ok, err := r.cfg.Store.GetDeployment(name)
	if err != nil || !ok || d.ImageID == id {
		return
	}
	d.PreviousImageID, d.ImageID = d.ImageID, id
	if err := r.cfg.Store.PutDeployment(name, d); err != nil {
		r.log.Warn("record image", "deployment", name, "err", err)
	}
}

// kept returns the image ids some deployment keeps.
func (r *Reconciler) kept() (map[string]bool, error) {
	all, err := r.cfg.Store.Deployments()
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, d := range all {
		keep[d.ImageID], keep[d.PreviousImageID] = true, true
	}
	staged, err := r.cfg.Store.StagedImages()
	if err != nil {
		return nil, err
	}
	for _, s := range staged {
		keep[s.ID] = true
	}
	return keep, nil
}

// gc removes the images the agent pulled that no deployment keeps, when
// enabled.
func (r *Reconciler) gc(ctx context.Context) {
	if r.cfg.ImageGC {
		r.removeImages(ctx, nil)
	}
	r.gcStore(ctx)
}

// removeImages removes images the agent pulled that no deployment keeps:
// only those in ids, or all when ids is nil. An image still in use is
// left, and so is one the agent did not pull.
func (r *Reconciler) removeImages(ctx context.Context, ids []string) {
	keep, err := r.kept()
	if err != nil {
		return
	}
	tracked, err := r.cfg.Store.PulledImages()
	if err != nil {
		return
	}
	for _, id := range ids {
		if _, ok := tracked[id]; id != "" && !ok && !keep[id] {
			r.log.Info("image kept: the agent did not pull it", "id", id)
		}
	}
	for id, ref := range tracked {
		if keep[id] || ids != nil && !slices.Contains(ids, id) {
			continue
		}
		if err := r.cfg.Engine.RemoveImage(ctx, id); err != nil && errdefs.Code(err) != fleetv1.Reply_NOT_FOUND {
			r.log.Info("image kept: removal failed", "image", ref, "id", id, "err", err)
			continue
		}
		r.log.Info("removed unused image", "image", ref, "id", id)
		if err := r.cfg.Store.UntrackImage(id); err != nil {
			r.log.Warn("untrack image", "id", id, "err", err)
		}
	}
}

// adopt takes over a running container that already matches spec.
func (r *Reconciler) adopt(ctx context.Context, spec *fleetv1.DeploymentSpec, c engine.Container, all []engine.Container) (*fleetv1.DeploymentStatus, error) {
	for _, o := range all {
		if o.ID != c.ID {
			if err := r.cfg.Engine.Remove(ctx, o.ID); err != nil {
				r.log.Warn("remove stale container", "deployment", spec.GetName(), "container", o.Name, "err", err)
			}
		}
	}
	return r.observe(ctx, spec, c.ID, false), nil
}

// newStatus is the status of spec's deployment in phase, with its
// container (if known).
func newStatus(spec *fleetv1.DeploymentSpec, phase fleetv1.DeploymentStatus_Phase, containerID string) *fleetv1.DeploymentStatus {
	return &fleetv1.DeploymentStatus{Name: spec.GetName(), Revision: spec.GetRevision(), Image: spec.GetImage(), Phase: phase, ContainerId: containerID}
}

// observe publishes and returns the status of spec's deployment as the
// engine shows its container id.
func (r *Reconciler) observe(ctx context.Context, spec *fleetv1.DeploymentSpec, id string, stopped bool) *fleetv1.DeploymentStatus {
	st := newStatus(spec, fleetv1.DeploymentStatus_PENDING, id)
	r.fillFromEngine(ctx, st, id, stopped)
	r.publish(ctx, st)
	return st
}

// fillFromEngine sets the phase and runtime facts of st from the engine.
func (r *Reconciler) fillFromEngine(ctx context.Context, st *fleetv1.DeploymentStatus, id string, stopped bool) {
	s, err := r.cfg.Engine.Inspect(ctx, id)
	if err != nil {
		st.Phase, st.Code, st.Message = fleetv1.DeploymentStatus_FAILED, errdefs.Code(err), err.Error()
		return
	}
	st.Health, st.RestartCount, st.ExitCode, st.OomKilled = s.Health, uint32(s.RestartCount), int32(s.ExitCode), s.OOMKilled
	switch {
	case s.Running:
		st.Phase = fleetv1.DeploymentStatus_RUNNING
	case stopped:
		st.Phase = fleetv1.DeploymentStatus_STOPPED
	default:
		st.Phase = fleetv1.DeploymentStatus_EXITED
	}
}

// trusted checks spec's image against the trust policy before anything is
// pulled or changed, and returns the manifest digest it vouched for ("" with
// no policy): the digest the image reference names, the local copy's with
// pullPolicy NEVER, else the one the registry resolves the tag to now
// (the local copy's when the registry is unreachable and the pull policy
// allows a local copy).
func (r *Reconciler) trusted(ctx context.Context, spec *fleetv1.DeploymentSpec) (string, error) {
	if r.cfg.Trust == nil {
		return "", nil
	}
	ref := spec.GetImage()
	var digest string
	if _, d, ok := strings.Cut(ref, "@"); ok {
		digest = d
	} else {
		_, local, found, err := r.localImage(ctx, spec)
		if err != nil {
			return "", err
		}
		policy := spec.GetPullPolicy()
		switch {
		case policy == fleetv1.Pull_NEVER && !found:
			return "", nil // ensureImage refuses it, naming pullPolicy
		case policy == fleetv1.Pull_NEVER:
			digest = first(local)
		default:
			digest, err = r.remoteDigest(ctx, spec)
			if err != nil && (!found || policy == fleetv1.Pull_ALWAYS) {
				return "", err
			}
			if err != nil {
				digest = first(local)
			}
		}
	}
	if err := r.cfg.Trust(ctx, ref, digest); err != nil {
		return "", err
	}
	return digest, nil
}

// ensureImage makes the image present according to the pull policy and
// returns its registry digest when known, and whether the agent pulled
// it: the pull brought an image the engine did not have under its name.
// A nil st publishes no progress (a prefetch).
func (r *Reconciler) ensureImage(ctx context.Context, spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus) (digest string, pulled bool, err error) {
	ref := spec.GetImage()
	before, digests, found, err := r.localImage(ctx, spec)
	if err != nil {
		return "", false, err
	}
	policy := spec.GetPullPolicy()
	switch {
	case policy == fleetv1.Pull_NEVER && !found:
		return "", false, &errdefs.FieldError{Field: specField + ".pullPolicy", Kind: errdefs.ErrNotFound,
			Msg: sprintf("image %s is not on the gateway and pullPolicy is NEVER; load it or use IF_NOT_PRESENT", ref)}
	case policy == fleetv1.Pull_NEVER:
		return first(digests), false, nil
	case policy != fleetv1.Pull_ALWAYS && found:
		if strings.Contains(ref, "@sha256:") {
			return first(digests), false, nil
		}
		// A tag may have moved: pull again when the registry now resolves
		// it to another digest. Unreachable registry: the local copy.
		remote, err := r.remoteDigest(ctx, spec)
		switch {
		case err != nil:
			r.cfg.Event(&fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "pull.offline-fallback", Deployment: spec.GetName(),
				Code: errdefs.Code(err), Message: sprintf("could not check %s with its registry; using the local copy: %v", ref, err)})
			return first(digests), false, nil
		case slices.Contains(digests, remote):
			return remote, false, nil
		}
		r.log.Info("tag moved; pulling", "image", ref, "digest", remote)
	}
	if err := r.checkSpace(ctx, spec); err != nil {
		return "", false, err
	}
	digest, err = r.pull(ctx, spec, st)
	if err != nil {
		if found && policy != fleetv1.Pull_ALWAYS {
			return first(digests), false, nil
		}
		if found && errors.Is(err, errdefs.ErrRegistryUnreachable) {
			r.cfg.Event(&fleetv1.Event{Severity: fleetv1.Event_WARNING, Kind: "pull.offline-fallback", Deployment: spec.GetName(),
				Code: errdefs.Code(err), Message: sprintf("registry unreachable; using the local copy of %s: %v", ref, err)})
			return first(digests), false, nil
		}
		return "", false, err
	}
	after, digests, _, err := r.localImage(ctx, spec)
	if digest == "" {
		digest = first(digests)
	}
	return digest, err == nil && (!found || after != before), err
}

// spaceFactor is the free space a pull needs, as a multiple of the image's
// compressed size: the download plus the extracted layers.
const spaceFactor = 3

// checkSpace refuses a pull that cannot fit on the engine's data root.
// When the registry does not report the size or the data root is not
// visible, the check is skipped. (In pull mode AGENT the agent's store
// also reserves what it downloads before the first byte.)
func (r *Reconciler) checkSpace(ctx context.Context, spec *fleetv1.DeploymentSpec) error {
	ref := spec.GetImage()
	size, err := r.imageSize(ctx, spec)
	if err != nil {
		r.log.Debug("image size unknown; free-space check skipped", "image", ref, "err", err)
		return nil
	}
	free, err := r.cfg.Engine.FreeSpace(ctx)
	if err != nil {
		r.log.Debug("free space unknown; free-space check skipped", "err", err)
		return nil
	}
	if need := uint64(size) * spaceFactor; free < need {
		return fmt.Errorf("%w: %s is %d MB compressed and needs about %d MB; the engine's data root has %d MB free: remove unused images or deployments",
			errdefs.ErrNoSpace, ref, size>>20, need>>20, free>>20)
	}
	return nil
}

// pull pulls spec's image, by the agent (deliver) or by the engine with
// the spec's retries, retrying only transient failures, and publishes
// progress at most once a second. It returns the registry digest when the
// agent pulled ("" when the engine did: its repository digests tell).
func (r *Reconciler) pull(ctx context.Context, spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus) (string, error) {
	if r.agentPull(spec) {
		img, err := r.deliver(ctx, spec, st)
		return img.Digest, err
	}
	retries, interval, timeout := pullDefaults(spec)
	progress := r.progress(ctx, st)
	var err error
	for attempt := 0; attempt <= retries; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(interval):
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		auth, aerr := r.cfg.Auth(ctx, spec.GetImage())
		if aerr != nil {
			return "", aerr
		}
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err = r.cfg.Engine.Pull(pctx, spec.GetImage(), auth, progress)
		if errdefs.Code(err) == fleetv1.Reply_UNAUTHENTICATED && r.cfg.Refresh != nil {
			if fresh, ok, rerr := r.cfg.Refresh(ctx, spec.GetImage()); rerr != nil {
				err = rerr
			} else if ok {
				r.log.Info("registry refused the credential; pulling once more with a fresh token", "deployment", spec.GetName())
				err = r.cfg.Engine.Pull(pctx, spec.GetImage(), fresh, progress)
			}
		}
		cancel()
		if err == nil || !transient(err) || ctx.Err() != nil {
			return "", err
		}
		r.log.Warn("pull failed; retrying", "deployment", spec.GetName(), "attempt", attempt+1, "err", err)
	}
	return "", err
}

func transient(err error) bool {
	switch errdefs.Code(err) {
	case fleetv1.Reply_REGISTRY_UNREACHABLE, fleetv1.Reply_INTERNAL, fleetv1.Reply_DEADLINE_EXCEEDED:
		return true
	}
	return false
}

// first is the first of digests, "" for none.
func first(digests []string) string {
	if len(digests) == 0 {
		return ""
	}
	return digests[0]
}

// waitReady waits until the container has been running (and healthy, if it
// has a health check) without a restart for minReadySeconds.
func (r *Reconciler) waitReady(ctx context.Context, spec *fleetv1.DeploymentSpec, id string, st *fleetv1.DeploymentStatus) error {
	minReady := time.Duration(spec.GetUpdate().GetMinReadySeconds()) * time.Second
	deadline := time.Duration(spec.GetUpdate().GetProgressDeadlineSeconds()) * time.Second
	if deadline == 0 {
		deadline = 5*time.Minute + minReady
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	var readySince time.Time
	restarts := -1
	tick := time.NewTicker(r.cfg.PollInterval)
	defer tick.Stop()
	for {
		s, err := r.cfg.Engine.Inspect(ctx, id)
		if err != nil {
			return err
		}
		st.Health, st.RestartCount = s.Health, uint32(s.RestartCount)
		switch {
		case !s.Running && (s.Status == "exited" || s.Status == "dead"):
			st.ExitCode, st.OomKilled = int32(s.ExitCode), s.OOMKilled
			why := sprintf("the container exited with code %d", s.ExitCode)
			if s.OOMKilled {
				why = "the container was killed for exceeding its memory limit (OOM)"
			}
			return fmt.Errorf("%w: %s before it was ready", errdefs.ErrUnhealthy, why)
		case s.Health == fleetv1.HealthCheck_UNHEALTHY:
			return fmt.Errorf("%w: the container's health check failed", errdefs.ErrUnhealthy)
		case s.Running && (s.Health == fleetv1.HealthCheck_NONE || s.Health == fleetv1.HealthCheck_HEALTHY):
			if readySince.IsZero() || s.RestartCount != restarts {
				readySince, restarts = r.cfg.Now(), s.RestartCount
			}
			if r.cfg.Now().Sub(readySince) >= minReady {
				return nil
			}
		default:
			readySince = time.Time{}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) && context.Cause(ctx) == context.DeadlineExceeded {
				return fmt.Errorf("%w: not ready within progressDeadlineSeconds (%v)", errdefs.ErrUnhealthy, deadline)
			}
			return ctx.Err()
		}
	}
}
