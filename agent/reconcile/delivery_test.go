package reconcile_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleet-agent/fleet/agent/delivery"
	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// fakeDelivery is pull mode AGENT over the fake engine: a registry of
// digests, and the engine's copy put there without a repository digest.
type fakeDelivery struct {
	eng *engine.Fake

	mu       sync.Mutex
	registry map[string]string // ref -> registry digest
	local    map[string]string // ref -> image ID delivered
	pulls    []delivery.Options
	pulled   []string
	failOnce error  // the next Pull's error
	swap     string // set: Pull delivers this digest, not the registry's
	// progress, if set, reports the download's progress (else one report).
	progress func(report func(done, total int64))
	gcKeep   []string
}

func newFakeDelivery(eng *engine.Fake) *fakeDelivery {
	return &fakeDelivery{eng: eng, registry: map[string]string{}, local: map[string]string{}}
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// publish makes ref resolve to a new digest, whose config digest (the
// engine's image ID) is derived from it.
func (d *fakeDelivery) publish(ref, content string) (digest, id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	digest = digestOf(ref + "\x00" + content)
	d.registry[ref] = digest
	return digest, digestOf("config of " + digest)
}

func (d *fakeDelivery) Resolve(_ context.Context, ref string) (string, int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	dg, ok := d.registry[ref]
	if !ok {
		return "", 0, fmt.Errorf("%w: %s", errdefs.ErrNotFound, ref)
	}
	return dg, 10 << 20, nil
}

func (d *fakeDelivery) Pull(_ context.Context, ref string, opts delivery.Options) (delivery.Image, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pulls = append(d.pulls, opts)
	d.pulled = append(d.pulled, ref)
	if err := d.failOnce; err != nil {
		d.failOnce = nil
		return delivery.Image{}, err
	}
	dg, ok := d.registry[ref]
	if !ok {
		return delivery.Image{}, fmt.Errorf("%w: %s", errdefs.ErrNotFound, ref)
	}
	if d.swap != "" {
		dg = d.swap
		d.registry[ref] = dg
	}
	switch {
	case d.progress != nil && opts.Progress != nil:
		d.mu.Unlock()
		d.progress(opts.Progress)
		d.mu.Lock()
	case opts.Progress != nil:
		opts.Progress(5<<20, 10<<20)
	}
	id := digestOf("config of " + dg)
	d.eng.Deliver(delivery.Name(ref), id)
	d.local[ref] = id
	return delivery.Image{Digest: dg, ID: id, Fetched: 10 << 20}, nil
}

func (d *fakeDelivery) Local(ref, imageID string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.local[ref] != imageID || imageID == "" {
		return "", false
	}
	for r, dg := range d.registry {
		if r == ref && digestOf("config of "+dg) == imageID {
			return dg, true
		}
	}
	return "", false
}

func (d *fakeDelivery) GC(_ context.Context, refs []string) (int64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gcKeep = slices.Clone(refs)
	slices.Sort(d.gcKeep)
	return 0, nil
}

func (d *fakeDelivery) pullCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pulled)
}

func withDelivery(d *fakeDelivery, mode fleetv1.Pull_Mode) func(*reconcile.Config) {
	return func(c *reconcile.Config) { c.Delivery, c.PullMode = d, mode }
}

// TestAgentPullMode: with a Delivery the agent pulls unless the spec or
// the agent's default says ENGINE; the status carries the registry's
// digest, the container is created from the verified image ID, the
// spec's bandwidth reaches the pull, progress is published, and a second
// deploy of the same tag does not pull again.
func TestAgentPullMode(t *testing.T) {
	tests := []struct {
		name      string
		agentMode fleetv1.Pull_Mode
		specMode  fleetv1.Pull_Mode
		wantAgent bool
	}{
		{"default is AGENT", fleetv1.Pull_MODE_UNSPECIFIED, fleetv1.Pull_MODE_UNSPECIFIED, true},
		{"agent says ENGINE", fleetv1.Pull_ENGINE, fleetv1.Pull_MODE_UNSPECIFIED, false},
		{"spec says ENGINE", fleetv1.Pull_AGENT, fleetv1.Pull_ENGINE, false},
		{"spec says AGENT over the agent's ENGINE", fleetv1.Pull_ENGINE, fleetv1.Pull_AGENT, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var d *fakeDelivery
				h := newHarness(t, reconcile.Policy{}, true, func(c *reconcile.Config) {
					d = newFakeDelivery(c.Engine.(*engine.Fake))
					withDelivery(d, tt.agentMode)(c)
				})
				const ref = "registry.test/web:1"
				digest, id := d.publish(ref, "v1")
				engineDigest := h.fake.Publish(ref, "v1")
				spec := &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: ref,
					Pull: &fleetv1.Pull{Mode: tt.specMode, Bandwidth: 4096}}
				st, err := h.deploy(t, spec)
				if err != nil {
					t.Fatal(err)
				}
				cs, _ := h.fake.Inspect(context.Background(), st.GetContainerId())
				if !tt.wantAgent {
					if d.pullCount() != 0 || st.GetImageDigest() != engineDigest {
						t.Errorf("ENGINE mode: agent pulls %d, digest %s (want %s)", d.pullCount(), st.GetImageDigest(), engineDigest)
					}
					return
				}
				if st.GetImageDigest() != digest {
					t.Errorf("imageDigest = %s, want the registry's %s", st.GetImageDigest(), digest)
				}
				if cs.ImageID != id {
					t.Errorf("container holds image %q, want the verified image ID %s", cs.ImageID, id)
				}
				if len(d.pulls) != 1 || d.pulls[0].Bandwidth != 4096 {
					t.Errorf("pulls %+v, want one with the spec's bandwidth 4096", d.pulls)
				}
				if !slices.ContainsFunc(h.pub["web"], func(s *fleetv1.DeploymentStatus) bool {
					return s.GetPhase() == fleetv1.DeploymentStatus_PULLING && s.GetPullProgress().GetBytesDone() == 5<<20
				}) {
					t.Error("no PULLING status with the delivery's progress")
				}
				spec.Revision, spec.Env = 2, map[string]string{"A": "1"}
				if _, err := h.deploy(t, spec); err != nil {
					t.Fatal(err)
				}
				if d.pullCount() != 1 {
					t.Errorf("the same tag at the same digest was pulled again (%d pulls)", d.pullCount())
				}
				if want := []string{ref}; !slices.Equal(d.gcKeep, want) {
					t.Errorf("store GC kept %v, want %v", d.gcKeep, want)
				}
			})
		})
	}
}

// TestAgentPullTrust: the digest the trust policy vouched for must be the
// one delivered; a refused credential is refreshed and the pull tried once
// more.
func TestAgentPullTrust(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var d *fakeDelivery
		var vouched []string
		refreshed := 0
		h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) {
			d = newFakeDelivery(c.Engine.(*engine.Fake))
			withDelivery(d, fleetv1.Pull_MODE_UNSPECIFIED)(c)
			c.Trust = func(_ context.Context, _, digest string) error { vouched = append(vouched, digest); return nil }
			c.Refresh = func(context.Context, string) (string, bool, error) { refreshed++; return "fresh", true, nil }
		})
		const ref = "registry.test/web:1"
		digest, _ := d.publish(ref, "v1")
		d.failOnce = fmt.Errorf("%w: token expired", errdefs.ErrUnauthenticated)
		st, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: ref})
		if err != nil {
			t.Fatal(err)
		}
		if refreshed != 1 || d.pullCount() != 2 {
			t.Errorf("refreshed %d times, %d pulls; want 1 and 2", refreshed, d.pullCount())
		}
		if !slices.Equal(vouched, []string{digest}) || st.GetImageDigest() != digest {
			t.Errorf("vouched %v, status digest %s; want %s", vouched, st.GetImageDigest(), digest)
		}
		// The tag moves between the policy's check and the pull: refused,
		// and the old revision keeps running.
		d.publish(ref, "v2")
		d.mu.Lock()
		d.swap = digestOf("pushed after the check")
		d.mu.Unlock()
		st, err = h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: ref, Env: map[string]string{"A": "2"}, Pull: &fleetv1.Pull{Mode: fleetv1.Pull_AGENT}})
		if errdefs.Code(err) != fleetv1.Reply_UNTRUSTED_IMAGE || st.GetPhase() != fleetv1.DeploymentStatus_FAILED {
			t.Errorf("deploy of a tag moved during verification: %v (phase %v), want UNTRUSTED_IMAGE", err, st.GetPhase())
		}
		if cs, _ := h.fake.List(context.Background()); len(cs) != 1 || cs[0].Revision != 1 {
			t.Errorf("containers %+v, want revision 1 alone", cs)
		}
	})
}

// TestPrefetch: a prefetch pulls and verifies, publishes no status, stores
// no desired state and creates nothing; image GC keeps the image; the
// deploy that follows does not pull again and then no longer keeps the
// prefetched image for its own sake.
func TestPrefetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var d *fakeDelivery
		h := newHarness(t, reconcile.Policy{}, true, func(c *reconcile.Config) {
			d = newFakeDelivery(c.Engine.(*engine.Fake))
			withDelivery(d, fleetv1.Pull_MODE_UNSPECIFIED)(c)
		})
		ctx := context.Background()
		const ref = "registry.test/web:2"
		digest, id := d.publish(ref, "v2")
		spec := &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: ref}
		accepted := 0
		st, err := h.rec.Prefetch(ctx, spec, func() { accepted++ })
		if err != nil {
			t.Fatal(err)
		}
		if accepted != 1 || st.GetImageDigest() != digest {
			t.Errorf("accepted %d, digest %s; want 1, %s", accepted, st.GetImageDigest(), digest)
		}
		if len(h.pub["web"]) != 0 {
			t.Errorf("prefetch published statuses: %v", h.pub["web"])
		}
		if cs, _ := h.fake.List(ctx); len(cs) != 0 {
			t.Errorf("prefetch created containers: %v", cs)
		}
		// Image GC runs with another deployment's rollout: the prefetched image stays.
		d.publish("registry.test/other:1", "x")
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "other", Revision: 1, Image: "registry.test/other:1"}); err != nil {
			t.Fatal(err)
		}
		if got, _, ok, _ := h.fake.Image(ctx, ref); !ok || got != id {
			t.Fatalf("prefetched image gone after image GC (found %v, id %s)", ok, got)
		}
		if !slices.Contains(d.gcKeep, ref) {
			t.Errorf("store GC kept %v, want the prefetched %s among them", d.gcKeep, ref)
		}
		if _, err := h.deploy(t, spec); err != nil {
			t.Fatal(err)
		}
		if n := d.pullCount(); n != 2 {
			t.Errorf("%d pulls, want 2 (the prefetch and other's): the deploy pulled again", n)
		}
		// Once replaced, the prefetched image is the agent's to collect.
		d.publish("registry.test/web:3", "v3")
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 3, Image: "registry.test/web:3"}); err != nil {
			t.Fatal(err)
		}
		d.publish("registry.test/web:4", "v4")
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 4, Image: "registry.test/web:4"}); err != nil {
			t.Fatal(err)
		}
		if _, _, ok, _ := h.fake.Image(ctx, ref); ok {
			t.Error("the prefetched image outlived the two images that replaced it: image GC never collects it")
		}
		// Bad input is refused before anything happens, naming the field.
		_, err = h.rec.Prefetch(ctx, &fleetv1.DeploymentSpec{Name: "Bad Name", Revision: 1, Image: ref}, nil)
		if fe, ok := errors.AsType[*errdefs.FieldError](err); !ok || fe.Field != "spec.name" {
			t.Errorf("Prefetch of a bad name: %v, want a field error on spec.name", err)
		}
	})
}

// retagger is the fake engine with a name retagged to another image just
// before each container is created.
type retagger struct {
	*engine.Fake
	name string
}

func (r retagger) Create(ctx context.Context, name string, spec *fleetv1.DeploymentSpec, h engine.Host) (string, error) {
	r.Fake.Load(r.name, "pushed by someone else")
	return r.Fake.Create(ctx, name, spec, h)
}

// TestRetaggedBeforeCreate: a name retagged between the pull's
// verification and the container's creation is refused, not run.
func TestRetaggedBeforeCreate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ref = "registry.test/web:1"
		var d *fakeDelivery
		h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) {
			fake := c.Engine.(*engine.Fake)
			d = newFakeDelivery(fake)
			withDelivery(d, fleetv1.Pull_AGENT)(c)
			c.Engine = retagger{fake, ref}
		})
		d.publish(ref, "v1")
		st, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: ref})
		if errdefs.Code(err) != fleetv1.Reply_UNTRUSTED_IMAGE || st.GetPhase() != fleetv1.DeploymentStatus_FAILED {
			t.Errorf("deploy with the name retagged before create: %v (phase %v), want UNTRUSTED_IMAGE", err, st.GetPhase())
		}
		if cs, _ := h.fake.List(context.Background()); len(cs) != 0 {
			t.Errorf("containers %+v left, want none", cs)
		}
	})
}

// TestPullProgressRateAndETA: the PULLING status carries bytes done and
// total, and from the second report on the rate and the time left.
func TestPullProgressRateAndETA(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var d *fakeDelivery
		h := newHarness(t, reconcile.Policy{}, false, func(c *reconcile.Config) {
			d = newFakeDelivery(c.Engine.(*engine.Fake))
			withDelivery(d, fleetv1.Pull_AGENT)(c)
		})
		const ref = "registry.test/web:1"
		d.publish(ref, "v1")
		d.progress = func(report func(done, total int64)) {
			for i := int64(1); i <= 4; i++ {
				time.Sleep(time.Second) // the bubble's clock: 1 MiB a second
				report(i<<20, 10<<20)
			}
		}
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: ref}); err != nil {
			t.Fatal(err)
		}
		var got []*fleetv1.PullProgress
		for _, s := range h.pub["web"] {
			if p := s.GetPullProgress(); p != nil && (len(got) == 0 || got[len(got)-1].GetBytesDone() != p.GetBytesDone()) {
				got = append(got, p)
			}
		}
		if len(got) != 4 {
			t.Fatalf("progress reports %v, want 4", got)
		}
		if got[0].GetBytesPerSecond() != 0 || got[0].GetEta() != nil {
			t.Errorf("first report %v has a rate before there is one", got[0])
		}
		last := got[3]
		if last.GetBytesPerSecond() != 1<<20 || last.GetEta().AsDuration() != 6*time.Second {
			t.Errorf("last report %v, want 1 MiB/s and 6s left", last)
		}
	})
}
