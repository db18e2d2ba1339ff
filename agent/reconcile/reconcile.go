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
	// An application's networks and volumes (the engine labels what it
	// creates with the owner and refuses to remove what it did not).
	EnsureNetwork(ctx context.Context, name string, internal bool) error
	RemoveNetwork(ctx context.Context, name string) error
	RemoveVolume(ctx context.Context, name string) error
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
	// ResourcePrefix begins the engine names of the containers, and of the
	// applications' networks and volumes, the agent creates
	// ("{prefix}-{deployment}-r{revision}"); "fleet" when empty. Two agents
	// sharing one engine need two (their owner labels keep them apart
	// otherwise, but the engine's names are one namespace).
	ResourcePrefix string
	Logger         *slog.Logger
	Now            func() time.Time
}

// DefaultResourcePrefix is Config.ResourcePrefix when it is empty.
const DefaultResourcePrefix = "fleet"

// Reconciler runs deployments.
type Reconciler struct {
	cfg Config
	log *slog.Logger

	running sync.WaitGroup // every begun operation, until it ends

	// imageUse orders image GC after the images being pulled: a rollout or
	// a prefetch holds it for reading from its first pull until the store
	// records what it uses, GC for writing. Without it GC after one
	// deployment's removal deleted the image another had just found
	// present, before its container was created ("No such image").
	imageUse sync.RWMutex

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
	if cfg.ResourcePrefix == "" {
		cfg.ResourcePrefix = DefaultResourcePrefix
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
	summarize(st)
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
		for _, id := range slices.Concat(d.ImageIDs, d.PreviousImageIDs) {
			keep[id] = true
		}
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
	r.imageUse.Lock()
	defer r.imageUse.Unlock()
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

// resourceName is a name the reconciler gives an engine resource ("fleet-…":
// a container, an application's network or volume) as the engine holds
// it: with Config.ResourcePrefix in place of "fleet".
func (r *Reconciler) resourceName(name string) string {
	if rest, ok := strings.CutPrefix(name, DefaultResourcePrefix+"-"); ok && r.cfg.ResourcePrefix != DefaultResourcePrefix {
		return r.cfg.ResourcePrefix + "-" + rest
	}
	return name
}
