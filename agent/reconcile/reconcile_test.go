package reconcile_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

type harness struct {
	rec  *reconcile.Reconciler
	fake *engine.Fake
	mu   sync.Mutex
	pub  map[string][]*fleetv1.DeploymentStatus
}

func newHarness(t *testing.T, policy reconcile.Policy, imageGC bool, opts ...func(*reconcile.Config)) *harness {
	t.Helper()
	st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := &harness{fake: engine.NewFake("t/g"), pub: map[string][]*fleetv1.DeploymentStatus{}}
	cfg := reconcile.Config{Engine: h.fake, Store: st, Policy: policy, ImageGC: imageGC, PollInterval: 5 * time.Millisecond,
		Publish: func(_ context.Context, name string, s *fleetv1.DeploymentStatus) {
			h.mu.Lock()
			h.pub[name] = append(h.pub[name], s)
			h.mu.Unlock()
		}}
	for _, o := range opts {
		o(&cfg)
	}
	h.rec, err = reconcile.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.rec.Shutdown)
	return h
}

// deploy applies spec and returns the outcome of its rollout.
func (h *harness) deploy(t *testing.T, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	t.Helper()
	return h.rec.Apply(context.Background(), spec, nil)
}

func TestDeployRejects(t *testing.T) {
	good := func() *fleetv1.DeploymentSpec {
		return &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}
	}
	tests := []struct {
		name      string
		mutate    func(*fleetv1.DeploymentSpec)
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"bad name", func(s *fleetv1.DeploymentSpec) { s.Name = "Web_1" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.name"},
		{"no revision", func(s *fleetv1.DeploymentSpec) { s.Revision = 0 }, fleetv1.Reply_INVALID_ARGUMENT, "spec.revision"},
		{"no image", func(s *fleetv1.DeploymentSpec) { s.Image = "" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.image"},
		{"bad image", func(s *fleetv1.DeploymentSpec) { s.Image = "web::1" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.image"},
		{"bad port", func(s *fleetv1.DeploymentSpec) { s.Ports = []*fleetv1.Port{{ContainerPort: 0}} }, fleetv1.Reply_INVALID_ARGUMENT, "spec.ports[0]"},
		{"relative mount", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: "data", Target: "/data"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.mounts[0].source"},
		{"both cpu forms", func(s *fleetv1.DeploymentSpec) { s.Resources = &fleetv1.Resources{Cpus: 1, NanoCpus: 1} }, fleetv1.Reply_INVALID_ARGUMENT, "spec.resources"},
		{"retries without on-failure", func(s *fleetv1.DeploymentSpec) {
			s.RestartPolicy = &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_ALWAYS, MaxRetries: 3}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.restartPolicy.maxRetries"},
		{"privileged", func(s *fleetv1.DeploymentSpec) { s.Privileged = true }, fleetv1.Reply_POLICY_DENIED, "spec.privileged"},
		{"host network", func(s *fleetv1.DeploymentSpec) { s.NetworkMode = "host" }, fleetv1.Reply_POLICY_DENIED, "spec.networkMode"},
		{"cap add", func(s *fleetv1.DeploymentSpec) { s.CapAdd = []string{"NET_ADMIN"} }, fleetv1.Reply_POLICY_DENIED, "spec.capAdd"},
		{"bind outside allowed paths", func(s *fleetv1.DeploymentSpec) {
			s.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: "/etc", Target: "/host-etc"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.mounts[0].source"},
		{"device outside allowed paths", func(s *fleetv1.DeploymentSpec) {
			s.Devices = []*fleetv1.Device{{HostPath: "/dev/mem"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.devices[0].hostPath"},
	}
	h := newHarness(t, reconcile.Policy{AllowedHostPaths: []string{"/srv/data", "/dev/ttyUSB0"}}, false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := good()
			tt.mutate(spec)
			_, err := h.deploy(t, spec)
			if errdefs.Code(err) != tt.wantCode || errdefs.Field(err) != tt.wantField {
				t.Errorf("Deploy = %v (code %v, field %q), want %v on %q", err, errdefs.Code(err), errdefs.Field(err), tt.wantCode, tt.wantField)
			}
		})
	}
	t.Run("allowed bind mount and device", func(t *testing.T) {
		spec := good()
		spec.Name = "data"
		h.fake.Publish(spec.Image, "v1")
		spec.Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: "/srv/data/app", Target: "/data"}}
		spec.Devices = []*fleetv1.Device{{HostPath: "/dev/ttyUSB0"}}
		if _, err := h.deploy(t, spec); err != nil {
			t.Errorf("Deploy = %v, want success", err)
		}
	})
}

func TestRollbackOnFake(t *testing.T) { synctest.Test(t, testRollbackOnFake) }

func testRollbackOnFake(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/web:1", "good")
	h.fake.Publish("registry.test/web:2", "bad")
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}); err != nil {
		t.Fatal(err)
	}
	r, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 2, Image: "registry.test/web:2",
		Env: map[string]string{"MODE": "exit", "EXIT_CODE": "1"}})
	if errdefs.Code(err) != fleetv1.Reply_UNHEALTHY || r.GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK {
		t.Fatalf("deploy r2 = %v, %v; want UNHEALTHY and ROLLED_BACK", r, err)
	}
	cs, _ := h.fake.List(context.Background())
	if len(cs) != 1 || cs[0].Revision != 1 || !cs[0].Running {
		t.Errorf("containers after rollback = %+v, want revision 1 running", cs)
	}
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}); errdefs.Code(err) != fleetv1.Reply_STALE_REVISION {
		t.Errorf("deploy of revision 1 after 2 = %v, want STALE_REVISION", err)
	}
}

func TestImageGC(t *testing.T) { synctest.Test(t, testImageGC) }

func testImageGC(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, true)
	for rev := int64(1); rev <= 3; rev++ {
		img := fmt.Sprintf("registry.test/web:%d", rev)
		h.fake.Publish(img, img)
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: rev, Image: img}); err != nil {
			t.Fatal(err)
		}
	}
	present := func(ref string) bool { _, _, ok, _ := h.fake.Image(context.Background(), ref); return ok }
	for ref, want := range map[string]bool{"registry.test/web:1": false, "registry.test/web:2": true, "registry.test/web:3": true} {
		if got := present(ref); got != want {
			t.Errorf("after three revisions, %s present = %v, want %v (current and previous kept)", ref, got, want)
		}
	}
	if err := h.rec.Remove(context.Background(), "web", false); err != nil {
		t.Fatal(err)
	}
	if present("registry.test/web:2") || present("registry.test/web:3") {
		t.Error("images of a removed deployment kept with GC on")
	}
}

func TestNoSpaceFailsBeforePulling(t *testing.T) { synctest.Test(t, testNoSpaceFailsBeforePulling) }

func testNoSpaceFailsBeforePulling(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/big:1", "big")
	h.fake.Size, h.fake.Free = 100<<20, 200<<20
	pulled := false
	h.fake.FailPull = func(context.Context, string) error { pulled = true; return nil }
	_, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "big", Revision: 1, Image: "registry.test/big:1"})
	if errdefs.Code(err) != fleetv1.Reply_NO_SPACE || pulled {
		t.Errorf("deploy = %v (pulled %v), want NO_SPACE without a pull", err, pulled)
	}
}

func TestPullProgressIsRateLimited(t *testing.T) {
	synctest.Test(t, testPullProgressIsRateLimited)
}

func testPullProgressIsRateLimited(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/app:1", "x")
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: "registry.test/app:1"}); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	withProgress := 0
	for _, st := range h.pub["app"] {
		if st.GetPullProgress() != nil {
			withProgress++
		}
	}
	// The fake reports progress 101 times at once (no time passes in the
	// bubble but for waits).
	if withProgress != 1 {
		t.Errorf("statuses with pull progress = %d, want 1 (at most one a second)", withProgress)
	}
}

func TestHigherRevisionSupersedesAStuckOne(t *testing.T) {
	synctest.Test(t, testHigherRevisionSupersedesAStuckOne)
}

func testHigherRevisionSupersedesAStuckOne(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/app:1", "1")
	h.fake.Publish("registry.test/app:2", "2")
	release := make(chan struct{})
	h.fake.FailPull = func(ctx context.Context, ref string) error {
		if ref == "registry.test/app:1" {
			select { // revision 1's pull hangs until canceled
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	defer close(release)
	accepted, done1 := make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := h.rec.Apply(context.Background(), &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: "registry.test/app:1"}, func() { close(accepted) })
		done1 <- err
	}()
	<-accepted
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 2, Image: "registry.test/app:2"}); err != nil {
		t.Fatalf("revision 2 = %v, want success despite the stuck revision 1", err)
	}
	if err1 := <-done1; errdefs.Code(err1) != fleetv1.Reply_SUPERSEDED {
		t.Errorf("revision 1 outcome = %v, want SUPERSEDED", err1)
	}
}

func TestReconcileAllOnFake(t *testing.T) { synctest.Test(t, testReconcileAllOnFake) }

func testReconcileAllOnFake(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/app:1", "1")
	ctx := context.Background()
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: "registry.test/app:1"}); err != nil {
		t.Fatal(err)
	}
	// A managed container of a deployment that is no longer desired.
	orphan, err := h.fake.Create(ctx, "fleet-gone-r1", &fleetv1.DeploymentSpec{Name: "gone", Revision: 1, Image: "registry.test/app:1"}, engine.Host{})
	if err != nil {
		t.Fatal(err)
	}
	// And the desired one deleted behind the agent's back.
	cs, _ := h.fake.List(ctx)
	for _, c := range cs {
		if c.Deployment == "app" {
			h.fake.Remove(ctx, c.ID)
		}
	}
	if err := h.rec.ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute) // the pass's rollout, in fake time
	if cs, _ := h.fake.List(ctx); len(cs) != 1 || cs[0].Deployment != "app" || !cs[0].Running || cs[0].ID == orphan {
		t.Errorf("containers after the pass = %+v, want app recreated and the orphan removed", cs)
	}
}

func TestOfflineFallbackToLocalImage(t *testing.T) { synctest.Test(t, testOfflineFallbackToLocalImage) }

func testOfflineFallbackToLocalImage(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	var events []*fleetv1.Event
	var mu sync.Mutex
	st, _ := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "s.db")})
	t.Cleanup(func() { st.Close() })
	rec, err := reconcile.New(reconcile.Config{Engine: h.fake, Store: st, PollInterval: 5 * time.Millisecond,
		Publish: func(context.Context, string, *fleetv1.DeploymentStatus) {},
		Event:   func(e *fleetv1.Event) { mu.Lock(); events = append(events, e); mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rec.Shutdown)
	h.rec = rec
	h.fake.Publish("registry.test/app:1", "1")
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: "registry.test/app:1"}); err != nil {
		t.Fatal(err)
	}
	// The registry goes away: forget the image there, fail pulls as unreachable.
	h.fake.Unpublish("registry.test/app:1")
	h.fake.FailPull = func(context.Context, string) error { return fmt.Errorf("dial: %w", errdefs.ErrRegistryUnreachable) }
	if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 2, Image: "registry.test/app:1", Env: map[string]string{"A": "b"}}); err != nil {
		t.Fatalf("deploy with the registry away = %v, want the local image used", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 1 || events[0].GetKind() != "pull.offline-fallback" || events[0].GetSeverity() != fleetv1.Event_WARNING {
		t.Errorf("events = %v, want one pull.offline-fallback warning", events)
	}
}

// TestMinReadySeconds: a rollout is RUNNING only once the container has
// been ready for minReadySeconds, by the reconciler's clock.
func TestMinReadySeconds(t *testing.T) { synctest.Test(t, testMinReadySeconds) }

func testMinReadySeconds(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	h.fake.Publish("registry.test/app:1", "1")
	done := make(chan error, 1)
	go func() {
		_, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "app", Revision: 1, Image: "registry.test/app:1",
			Update: &fleetv1.Update{MinReadySeconds: 30}})
		done <- err
	}()
	time.Sleep(29 * time.Second)
	select {
	case err := <-done:
		t.Fatalf("deploy finished after 29 s (%v), want it to wait for minReadySeconds 30", err)
	default:
	}
	if st := h.last("app"); st.GetPhase() != fleetv1.DeploymentStatus_STARTING {
		t.Errorf("phase after 29 s = %v, want STARTING", st.GetPhase())
	}
	time.Sleep(2 * time.Second)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("deploy = %v, want success", err)
		}
	default:
		t.Fatal("deploy still running 31 s in, want RUNNING after minReadySeconds 30")
	}
}

// last is the last status published for name.
func (h *harness) last(name string) *fleetv1.DeploymentStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	if ps := h.pub[name]; len(ps) > 0 {
		return ps[len(ps)-1]
	}
	return nil
}
