package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleet-agent/fleet/agent/delivery"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Delivery pulls images through the agent's own store (pull mode AGENT,
// agent/delivery).
type Delivery interface {
	// Resolve returns the digest the registry resolves ref to and the
	// image's compressed size.
	Resolve(ctx context.Context, ref string) (digest string, size int64, err error)
	// Pull downloads ref (resumed, verified, bandwidth-capped) and has
	// the engine hold it under delivery.Name(ref).
	Pull(ctx context.Context, ref string, opts delivery.Options) (delivery.Image, error)
	// Local returns the registry digest of ref when the engine's image
	// imageID is the one the agent delivered for it.
	Local(ref, imageID string) (digest string, ok bool)
	// GC keeps the images of refs in the agent's store and removes the
	// rest.
	GC(ctx context.Context, refs []string) (freed int64, err error)
}

// agentPull reports whether spec's image is pulled by the agent (pull mode
// AGENT, the default when the agent can) rather than by the engine.
func (r *Reconciler) agentPull(spec *fleetv1.DeploymentSpec) bool {
	mode := spec.GetPull().GetMode()
	if mode == fleetv1.Pull_MODE_UNSPECIFIED {
		mode = r.cfg.PullMode
	}
	return r.cfg.Delivery != nil && mode != fleetv1.Pull_ENGINE
}

// engineName is the name the engine holds spec's image under.
func (r *Reconciler) engineName(spec *fleetv1.DeploymentSpec) string {
	if r.agentPull(spec) {
		return delivery.Name(spec.GetImage())
	}
	return spec.GetImage()
}

// localImage is the engine's image of spec: its ID and every registry
// digest known for it (the engine's repository digests, and the one the
// agent recorded when it delivered the image itself).
func (r *Reconciler) localImage(ctx context.Context, spec *fleetv1.DeploymentSpec) (id string, digests []string, found bool, err error) {
	id, repoDigests, found, err := r.cfg.Engine.Image(ctx, r.engineName(spec))
	if err != nil || !found {
		return id, nil, found, err
	}
	for _, d := range repoDigests {
		if i := strings.LastIndex(d, "@"); i >= 0 {
			digests = append(digests, d[i+1:])
		}
	}
	if r.cfg.Delivery != nil {
		if d, ok := r.cfg.Delivery.Local(spec.GetImage(), id); ok && !slices.Contains(digests, d) {
			digests = append(digests, d)
		}
	}
	return id, digests, true, nil
}

// remoteDigest is the digest the registry resolves spec's image to now.
func (r *Reconciler) remoteDigest(ctx context.Context, spec *fleetv1.DeploymentSpec) (string, error) {
	if r.agentPull(spec) {
		d, _, err := r.cfg.Delivery.Resolve(ctx, spec.GetImage())
		return d, err
	}
	auth, err := r.cfg.Auth(ctx, spec.GetImage())
	if err != nil {
		return "", err
	}
	return r.cfg.Engine.RemoteDigest(ctx, spec.GetImage(), auth)
}

// imageSize is the compressed size of spec's image at its registry.
func (r *Reconciler) imageSize(ctx context.Context, spec *fleetv1.DeploymentSpec) (int64, error) {
	if r.agentPull(spec) {
		_, size, err := r.cfg.Delivery.Resolve(ctx, spec.GetImage())
		return size, err
	}
	auth, err := r.cfg.Auth(ctx, spec.GetImage())
	if err != nil {
		return 0, err
	}
	return r.cfg.Engine.ImageSize(ctx, spec.GetImage(), auth)
}

// pullDefaults are spec.pull's retries, interval between them and time per
// attempt, defaults filled in.
func pullDefaults(spec *fleetv1.DeploymentSpec) (retries int, interval, timeout time.Duration) {
	p := spec.GetPull()
	retries, interval, timeout = int(p.GetRetries()), p.GetRetryInterval().AsDuration(), p.GetTimeout().AsDuration()
	if p.GetRetries() == 0 {
		retries = 3
	}
	if interval <= 0 {
		interval = 5 * time.Second
	}
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	return retries, interval, timeout
}

// progress returns the pull's progress callback: st's PULLING status with
// bytes done and total, the rate (smoothed over the last reports) and the
// time left at that rate, at most once a second (nothing for a nil st).
func (r *Reconciler) progress(ctx context.Context, st *fleetv1.DeploymentStatus) func(done, total int64) {
	var (
		last     time.Time
		lastDone int64
		rate     float64 // bytes/s, exponentially smoothed
	)
	return func(done, total int64) {
		if st == nil {
			return
		}
		now := r.cfg.Now()
		if now.Sub(last) < time.Second {
			return
		}
		p := &fleetv1.PullProgress{BytesDone: uint64(done), BytesTotal: uint64(total)}
		if !last.IsZero() && done >= lastDone {
			sample := float64(done-lastDone) / now.Sub(last).Seconds()
			if rate == 0 {
				rate = sample
			} else {
				rate = 0.5*rate + 0.5*sample
			}
			p.BytesPerSecond = uint64(rate)
			if rate >= 1 && total > done {
				p.Eta = durationpb.New(time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second))
			}
		}
		last, lastDone = now, done
		st.PullProgress = p
		r.publish(ctx, st)
	}
}

// deliver has the agent pull spec's image. The download resumes across
// cuts, so there is one attempt, given the time of all of spec.pull's
// attempts; a credential the registry refused is refreshed (an ECR
// token) and the pull tried once more.
func (r *Reconciler) deliver(ctx context.Context, spec *fleetv1.DeploymentSpec, st *fleetv1.DeploymentStatus) (delivery.Image, error) {
	retries, _, timeout := pullDefaults(spec)
	ctx, cancel := context.WithTimeout(ctx, timeout*time.Duration(retries+1))
	defer cancel()
	opts := delivery.Options{Bandwidth: int64(spec.GetPull().GetBandwidth()), Progress: r.progress(ctx, st)}
	img, err := r.cfg.Delivery.Pull(ctx, spec.GetImage(), opts)
	if errdefs.Code(err) == fleetv1.Reply_UNAUTHENTICATED && r.cfg.Refresh != nil {
		if _, ok, rerr := r.cfg.Refresh(ctx, spec.GetImage()); rerr != nil {
			return img, rerr
		} else if ok {
			r.log.Info("registry refused the credential; pulling once more with a fresh token", "deployment", spec.GetName())
			img, err = r.cfg.Delivery.Pull(ctx, spec.GetImage(), opts)
		}
	}
	if err == nil {
		r.log.Info("image delivered by the agent", "deployment", spec.GetName(), "image", spec.GetImage(), "digest", img.Digest, "id", img.ID, "fetched", img.Fetched)
	}
	return img, err
}

// Prefetch downloads and verifies spec's image as a deploy would (spec
// and local policy checked, trust policy, credentials, pull settings) and
// touches nothing else: no container, no desired state, no status. The
// image is kept from image GC until a deploy of spec's deployment has run.
// accepted, if not nil, is called once the spec is checked.
func (r *Reconciler) Prefetch(ctx context.Context, spec *fleetv1.DeploymentSpec, accepted func()) (*fleetv1.DeploymentStatus, error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	if err := r.cfg.Policy.check(spec); err != nil {
		return nil, err
	}
	notify(accepted)
	st := &fleetv1.DeploymentStatus{Name: spec.GetName(), Revision: spec.GetRevision(), Image: spec.GetImage()}
	for _, s := range services(spec) {
		digest, err := r.prefetch(ctx, s)
		if err != nil {
			return st, s.wrap(s.under(err))
		}
		if !s.app {
			st.ImageDigest = digest
			continue
		}
		st.Services = append(st.Services, &fleetv1.ServiceStatus{Name: s.name, Image: s.spec.GetImage(), ImageDigest: digest})
	}
	return st, nil
}

// prefetch fetches one service's image and records it as staged.
func (r *Reconciler) prefetch(ctx context.Context, s *service) (string, error) {
	spec := s.spec
	vouched, err := r.trusted(ctx, spec)
	if err != nil {
		return "", err
	}
	r.imageUse.RLock() // until the image is staged (see imageUse)
	defer r.imageUse.RUnlock()
	digest, pulled, err := r.ensureImage(ctx, spec, nil)
	if err != nil {
		return "", err
	}
	id, digests, found, err := r.localImage(ctx, spec)
	if err != nil {
		return "", err
	}
	if !found {
		return "", fmt.Errorf("%w: %s is not in the engine after the pull", errdefs.ErrNotFound, spec.GetImage())
	}
	if vouched != "" {
		if !slices.Contains(digests, vouched) {
			return "", changedErr(spec, vouched, digests)
		}
		digest = vouched
	}
	if err := r.cfg.Store.StageImage(stagedKey(spec.GetName(), s), store.Staged{ID: id, Ref: spec.GetImage()}); err != nil {
		return "", fmt.Errorf("record the prefetched image: %w", err)
	}
	if pulled {
		// Image GC may remove it once no deployment keeps it.
		if err := r.cfg.Store.TrackPulledImage(id, spec.GetImage()); err != nil {
			r.log.Warn("track pulled image", "image", spec.GetImage(), "err", err)
		}
	}
	r.log.Info("image prefetched", "deployment", spec.GetName(), "service", s.name, "image", spec.GetImage(), "digest", digest, "id", id)
	return digest, nil
}

func changedErr(spec *fleetv1.DeploymentSpec, vouched string, digests []string) error {
	return fmt.Errorf("%w: %s changed while it was verified (the policy vouched for %s, the engine has %s); deploy again",
		errdefs.ErrUntrustedImage, spec.GetImage(), vouched, strings.Join(digests, ", "))
}

// gcStore keeps in the agent's image store the images deployments run and
// have prefetched, and removes the rest.
func (r *Reconciler) gcStore(ctx context.Context) {
	if r.cfg.Delivery == nil {
		return
	}
	all, err := r.cfg.Store.Deployments()
	if err != nil {
		return
	}
	var refs []string
	for _, d := range all {
		spec := new(fleetv1.DeploymentSpec)
		if proto.Unmarshal(d.Spec, spec) == nil {
			for _, s := range services(spec) {
				refs = append(refs, s.spec.GetImage())
			}
		}
	}
	staged, err := r.cfg.Store.StagedImages()
	if err != nil {
		return
	}
	for _, s := range staged {
		refs = append(refs, s.Ref)
	}
	freed, err := r.cfg.Delivery.GC(ctx, refs)
	switch {
	case err != nil && !errors.Is(err, context.Canceled):
		r.log.Warn("image store GC", "err", err)
	case freed > 0:
		r.log.Info("image store GC", "freed_bytes", freed)
	}
}
