package reconcile_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/internal/errdefs"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// shop is a three-service application: db (health-checked), migrate (a
// job that must complete) and web (waits for both), on one network, db
// with an app volume.
func shop(rev int64, webImage string) *fleetv1.DeploymentSpec {
	hc := &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}}
	return &fleetv1.DeploymentSpec{Name: "shop", Revision: rev,
		Networks: []*fleetv1.AppNetwork{{Name: "back"}},
		Volumes:  []*fleetv1.AppVolume{{Name: "data"}},
		Services: map[string]*fleetv1.Service{
			"db": {Image: "registry.test/db:1", HealthCheck: hc, Networks: []string{"back"},
				Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "data", Target: "/data"}}},
			"migrate": {Image: "registry.test/db:1", Env: map[string]string{"MODE": "exit"}, Networks: []string{"back"},
				DependsOn: []*fleetv1.Dependency{{Service: "db", Condition: fleetv1.Dependency_HEALTHY}}},
			"web": {Image: webImage, Networks: []string{"back"}, DependsOn: []*fleetv1.Dependency{
				{Service: "db", Condition: fleetv1.Dependency_HEALTHY},
				{Service: "migrate", Condition: fleetv1.Dependency_COMPLETED_SUCCESSFULLY}}},
		}}
}

func TestAppRejects(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(*fleetv1.DeploymentSpec)
		wantCode  fleetv1.Reply_Code
		wantField string
	}{
		{"container field beside services", func(s *fleetv1.DeploymentSpec) { s.Image = "registry.test/x:1" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.image"},
		{"env beside services", func(s *fleetv1.DeploymentSpec) { s.Env = map[string]string{"A": "1"} }, fleetv1.Reply_INVALID_ARGUMENT, "spec.env"},
		{"bad service name", func(s *fleetv1.DeploymentSpec) { s.Services["Web_1"] = &fleetv1.Service{Image: "registry.test/x:1"} }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services"},
		{"long service name", func(s *fleetv1.DeploymentSpec) { s.Services[string(make([]byte, 64))] = nil }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services"},
		{"service without image", func(s *fleetv1.DeploymentSpec) { s.Services["web"].Image = "" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.image"},
		{"unknown network", func(s *fleetv1.DeploymentSpec) { s.Services["web"].Networks = []string{"back", "front"} }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.networks[1]"},
		{"bad network name", func(s *fleetv1.DeploymentSpec) { s.Networks[0].Name = "Back" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.networks[0].name"},
		{"duplicate volume", func(s *fleetv1.DeploymentSpec) { s.Volumes = append(s.Volumes, &fleetv1.AppVolume{Name: "data"}) }, fleetv1.Reply_INVALID_ARGUMENT, "spec.volumes[1].name"},
		{"unknown dependency", func(s *fleetv1.DeploymentSpec) { s.Services["web"].DependsOn[0].Service = "cache" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.dependsOn[0].service"},
		{"cycle", func(s *fleetv1.DeploymentSpec) {
			s.Services["db"].DependsOn = []*fleetv1.Dependency{{Service: "web"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.db.dependsOn"},
		{"self dependency", func(s *fleetv1.DeploymentSpec) {
			s.Services["migrate"].DependsOn = []*fleetv1.Dependency{{Service: "migrate"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.migrate.dependsOn"},
		{"healthy without health check", func(s *fleetv1.DeploymentSpec) { s.Services["db"].HealthCheck = nil }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.migrate.dependsOn[0].condition"},
		{"completed on a restarting service", func(s *fleetv1.DeploymentSpec) {
			s.Services["migrate"].RestartPolicy = &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_UNLESS_STOPPED}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.dependsOn[1].condition"},
		{"network mode with networks", func(s *fleetv1.DeploymentSpec) { s.Services["web"].NetworkMode = "none" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.networkMode"},
		{"networks without services", func(s *fleetv1.DeploymentSpec) { s.Services = nil; s.Image = "registry.test/x:1" }, fleetv1.Reply_INVALID_ARGUMENT, "spec.networks"},
		{"service's relative mount", func(s *fleetv1.DeploymentSpec) {
			s.Services["web"].Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: "data", Target: "/data"}}
		}, fleetv1.Reply_INVALID_ARGUMENT, "spec.services.web.mounts[0].source"},
		{"service's bind outside allowed paths", func(s *fleetv1.DeploymentSpec) {
			s.Services["web"].Mounts = []*fleetv1.Mount{{Type: fleetv1.Mount_BIND, Source: "/etc", Target: "/host-etc"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.services.web.mounts[0].source"},
		{"privileged service", func(s *fleetv1.DeploymentSpec) { s.Services["migrate"].Privileged = true }, fleetv1.Reply_POLICY_DENIED, "spec.services.migrate.privileged"},
		{"service on the host network", func(s *fleetv1.DeploymentSpec) {
			s.Services["migrate"].Networks, s.Services["migrate"].NetworkMode = nil, "host"
		}, fleetv1.Reply_POLICY_DENIED, "spec.services.migrate.networkMode"},
		{"service's published address", func(s *fleetv1.DeploymentSpec) {
			s.Services["web"].Ports = []*fleetv1.Port{{ContainerPort: 80, HostIp: "0.0.0.0"}}
		}, fleetv1.Reply_POLICY_DENIED, "spec.services.web.ports[0].hostIp"},
	}
	h := newHarness(t, reconcile.Policy{}, false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := shop(1, "registry.test/web:1")
			tt.mutate(spec)
			_, err := h.deploy(t, spec)
			if errdefs.Code(err) != tt.wantCode || errdefs.Field(err) != tt.wantField {
				t.Errorf("Deploy = %v (code %v, field %q), want %v on %q", err, errdefs.Code(err), errdefs.Field(err), tt.wantCode, tt.wantField)
			}
		})
	}
	t.Run("cycle named", func(t *testing.T) {
		spec := shop(1, "registry.test/web:1")
		spec.Services["db"].DependsOn = []*fleetv1.Dependency{{Service: "web"}}
		_, err := h.deploy(t, spec)
		if want := "db → web → db"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Deploy = %v, want the cycle %q named", err, want)
		}
	})
}

// byService is the deployment's containers by service label.
func byService(t *testing.T, f *engine.Fake, deployment string) map[string]engine.Container {
	t.Helper()
	cs, err := f.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]engine.Container{}
	for _, c := range cs {
		if c.Deployment == deployment {
			if _, dup := out[c.Service]; dup {
				t.Fatalf("two containers of service %s: %+v", c.Service, cs)
			}
			out[c.Service] = c
		}
	}
	return out
}

func TestAppOnFake(t *testing.T) { synctest.Test(t, testAppOnFake) }

func testAppOnFake(t *testing.T) {
	h := newHarness(t, reconcile.Policy{}, false)
	for _, ref := range []string{"registry.test/db:1", "registry.test/web:1", "registry.test/web:2"} {
		h.fake.Publish(ref, ref)
	}
	st, err := h.deploy(t, shop(1, "registry.test/web:1"))
	if err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy r1 = %v, %v; want RUNNING", st, err)
	}
	r1 := byService(t, h.fake, "shop")
	names := map[string]string{}
	for svc, c := range r1 {
		names[svc] = c.Name
	}
	if diff := cmp.Diff(map[string]string{"db": "fleet-shop-db-r1", "migrate": "fleet-shop-migrate-r1", "web": "fleet-shop-web-r1"}, names); diff != "" {
		t.Errorf("container names (-want +got):\n%s", diff)
	}
	if !r1["db"].Running || r1["migrate"].Running || !r1["web"].Running {
		t.Errorf("r1 containers = %+v, want db and web running, migrate done", r1)
	}
	if got := h.fake.Networks(); !slices.Equal(got, []string{"fleet-shop-back"}) {
		t.Errorf("networks = %v, want fleet-shop-back", got)
	}
	if got := h.fake.Volumes(); !slices.Equal(got, []string{"fleet-shop-data"}) {
		t.Errorf("volumes = %v, want fleet-shop-data", got)
	}
	if host, _ := h.fake.HostOf("fleet-shop-web-r1"); len(host.Networks) != 1 || host.Networks[0].Name != "fleet-shop-back" || !slices.Equal(host.Networks[0].Aliases, []string{"web"}) {
		t.Errorf("web's networks = %+v, want fleet-shop-back with the alias web", host.Networks)
	}
	checkServices(t, st, map[string]fleetv1.DeploymentStatus_Phase{"db": fleetv1.DeploymentStatus_RUNNING,
		"migrate": fleetv1.DeploymentStatus_EXITED, "web": fleetv1.DeploymentStatus_RUNNING})
	if st.GetContainerId() != "" || st.GetImage() != "" {
		t.Errorf("app status names a container or image (%q, %q), want none for several services", st.GetContainerId(), st.GetImage())
	}

	// Revision 2 changes web's image only: db and migrate keep theirs.
	if _, err := h.deploy(t, shop(2, "registry.test/web:2")); err != nil {
		t.Fatal(err)
	}
	r2 := byService(t, h.fake, "shop")
	if r2["db"].ID != r1["db"].ID || r2["migrate"].ID != r1["migrate"].ID || r2["web"].ID == r1["web"].ID || r2["web"].Name != "fleet-shop-web-r2" {
		t.Errorf("r2 containers = %+v, want db and migrate kept, web replaced (r1: %+v)", r2, r1)
	}

	// Revision 3's migration fails: the whole app goes back to revision 2.
	bad := shop(3, "registry.test/web:1")
	bad.Services["migrate"].Env["EXIT_CODE"] = "1"
	st, err = h.deploy(t, bad)
	if errdefs.Code(err) != fleetv1.Reply_UNHEALTHY || st.GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK || !strings.Contains(err.Error(), "service migrate") {
		t.Fatalf("deploy r3 = %v, %v; want UNHEALTHY, ROLLED_BACK, naming migrate", st, err)
	}
	r3 := byService(t, h.fake, "shop")
	if r3["db"].ID != r2["db"].ID || r3["web"].ID != r2["web"].ID || !r3["web"].Running || r3["migrate"].ID != r2["migrate"].ID {
		t.Errorf("after rollback = %+v, want revision 2's containers (%+v)", r3, r2)
	}

	// Revision 4 is revision 2 again: every container is kept.
	if _, err := h.deploy(t, shop(4, "registry.test/web:2")); err != nil {
		t.Fatal(err)
	}
	if r4 := byService(t, h.fake, "shop"); !cmp.Equal(r4, r2) {
		t.Errorf("r4 containers = %+v, want revision 2's kept (%+v)", r4, r2)
	}

	// Stop one service, then a new reconciler over the same store adopts
	// every service and keeps that one stopped.
	if _, err := h.rec.StopService(context.Background(), "shop", "web"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.rec.StopService(context.Background(), "shop", "cache"); errdefs.Code(err) != fleetv1.Reply_NOT_FOUND || errdefs.Field(err) != "service" {
		t.Errorf("stop of an unknown service = %v, want NOT_FOUND on service", err)
	}
	if err := h.rec.ReconcileAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	synctest.Wait()
	after := byService(t, h.fake, "shop")
	if after["web"].Running || after["web"].ID != r2["web"].ID || !after["db"].Running || after["db"].ID != r2["db"].ID {
		t.Errorf("after reconcile = %+v, want the same containers, web stopped", after)
	}
	if st, err := h.rec.StartService(context.Background(), "shop", "web", nil); err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Errorf("start web = %v, %v; want RUNNING", st, err)
	}

	// Remove keeps the volume unless asked; the network goes.
	if err := h.rec.Remove(context.Background(), "shop", false); err != nil {
		t.Fatal(err)
	}
	if len(h.fake.Networks()) != 0 || !slices.Equal(h.fake.Volumes(), []string{"fleet-shop-data"}) {
		t.Errorf("after remove: networks %v, volumes %v; want none, the volume kept", h.fake.Networks(), h.fake.Volumes())
	}
	if _, err := h.deploy(t, shop(5, "registry.test/web:1")); err != nil {
		t.Fatal(err)
	}
	if err := h.rec.RemoveWith(context.Background(), "shop", false, true); err != nil {
		t.Fatal(err)
	}
	if len(h.fake.Volumes()) != 0 || len(byService(t, h.fake, "shop")) != 0 {
		t.Errorf("after remove with volumes: volumes %v, containers %v", h.fake.Volumes(), byService(t, h.fake, "shop"))
	}
}

func checkServices(t *testing.T, st *fleetv1.DeploymentStatus, want map[string]fleetv1.DeploymentStatus_Phase) {
	t.Helper()
	got := map[string]fleetv1.DeploymentStatus_Phase{}
	for _, ss := range st.GetServices() {
		got[ss.GetName()] = ss.GetPhase()
		if ss.GetContainerId() == "" || ss.GetImage() == "" {
			t.Errorf("service %s: container %q, image %q; want both", ss.GetName(), ss.GetContainerId(), ss.GetImage())
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("service phases (-want +got):\n%s", diff)
	}
}

// TestSingleContainerIsOneService: a spec without services is one service
// named after the deployment; its container keeps its name, its status
// carries that one service, and an app of that name replaces it.
func TestSingleContainerIsOneService(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, reconcile.Policy{}, false)
		h.fake.Publish("registry.test/web:1", "1")
		spec := &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}
		st, err := h.deploy(t, spec)
		if err != nil {
			t.Fatal(err)
		}
		cs := byService(t, h.fake, "web")
		c, ok := cs["web"]
		if !ok || c.Name != "fleet-web-r1" || c.SpecHash != engine.SpecHash(spec) {
			t.Fatalf("containers = %+v, want fleet-web-r1 of service web with the spec's hash", cs)
		}
		if len(st.GetServices()) != 1 || st.Services[0].GetName() != "web" || st.Services[0].GetContainerId() != st.GetContainerId() || st.GetContainerId() != c.ID {
			t.Errorf("status = %v, want one service web with the deployment's container", st)
		}
		if _, err := h.rec.StopService(context.Background(), "web", "web"); err != nil {
			t.Errorf("stop service web of a single container = %v", err)
		}
		if st := h.last("web"); st.GetPhase() != fleetv1.DeploymentStatus_STOPPED {
			t.Errorf("after stop = %v, want STOPPED", st)
		}
	})
}

// TestAppStoreRecordsImages: image GC keeps every service's image.
func TestAppStoreRecordsImages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, err := store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		h := newHarness(t, reconcile.Policy{}, true, func(c *reconcile.Config) { c.Store = st })
		for _, ref := range []string{"registry.test/db:1", "registry.test/web:1", "registry.test/web:2", "registry.test/web:3"} {
			h.fake.Publish(ref, ref)
		}
		for rev, img := range []string{"registry.test/web:1", "registry.test/web:2", "registry.test/web:3"} {
			if _, err := h.deploy(t, shop(int64(rev+1), img)); err != nil {
				t.Fatal(err)
			}
		}
		present := func(ref string) bool { _, _, ok, _ := h.fake.Image(context.Background(), ref); return ok }
		for ref, want := range map[string]bool{"registry.test/db:1": true, "registry.test/web:1": false, "registry.test/web:2": true, "registry.test/web:3": true} {
			if got := present(ref); got != want {
				t.Errorf("%s present = %v, want %v", ref, got, want)
			}
		}
	})
}

// TestAppUnhealthyServiceRollsBack: a service whose health check fails in
// the new revision rolls every service back; the status names it.
func TestAppUnhealthyServiceRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, reconcile.Policy{}, false)
		for _, ref := range []string{"registry.test/db:1", "registry.test/db:2", "registry.test/web:1", "registry.test/web:2"} {
			h.fake.Publish(ref, ref)
		}
		if _, err := h.deploy(t, shop(1, "registry.test/web:1")); err != nil {
			t.Fatal(err)
		}
		before := byService(t, h.fake, "shop")
		bad := shop(2, "registry.test/web:2")
		bad.Services["db"].Image = "registry.test/db:2" // replaced first, then rolled back too
		bad.Services["web"].HealthCheck = &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}}
		bad.Services["web"].Env = map[string]string{"MODE": "unhealthy"}
		st, err := h.deploy(t, bad)
		if errdefs.Code(err) != fleetv1.Reply_UNHEALTHY || st.GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK ||
			!strings.Contains(st.GetMessage(), "service web") || !strings.Contains(st.GetMessage(), "health check") {
			t.Fatalf("deploy r2 = %v, %v; want ROLLED_BACK naming web's health check", st, err)
		}
		after := byService(t, h.fake, "shop")
		if !cmp.Equal(before, after) {
			t.Errorf("containers after rollback %+v, want revision 1's %+v", after, before)
		}
		if st.GetHealth() != fleetv1.HealthCheck_HEALTHY {
			t.Errorf("app health after rollback = %v, want HEALTHY (db's; web r1 has no check)", st.GetHealth())
		}
	})
}

// TestAppWatchFollowsEveryService: an engine event on any service's
// container updates that service's status and the application's phase.
func TestAppWatchFollowsEveryService(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, reconcile.Policy{}, false)
		for _, ref := range []string{"registry.test/db:1", "registry.test/web:1"} {
			h.fake.Publish(ref, ref)
		}
		if _, err := h.deploy(t, shop(1, "registry.test/web:1")); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go h.rec.Watch(ctx)
		synctest.Wait()
		db := byService(t, h.fake, "shop")["db"]
		if err := h.fake.Stop(ctx, db.ID, nil); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		st := h.last("shop")
		var dbPhase fleetv1.DeploymentStatus_Phase
		for _, ss := range st.GetServices() {
			if ss.GetName() == "db" {
				dbPhase = ss.GetPhase()
			}
		}
		if dbPhase != fleetv1.DeploymentStatus_EXITED || st.GetPhase() != fleetv1.DeploymentStatus_EXITED {
			t.Errorf("after db exited: db %v, app %v; want both EXITED", dbPhase, st.GetPhase())
		}
		cancel()
		synctest.Wait()
	})
}

// TestResourcePrefix: with Config.ResourcePrefix the containers, the
// application's networks and volumes are named with it, a second
// deployment of the same revision keeps its container, and removal finds
// them all; the engine sees no "fleet-" name.
func TestResourcePrefix(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, reconcile.Policy{}, true, func(c *reconcile.Config) { c.ResourcePrefix = "edge2" })
		ctx := context.Background()
		for _, ref := range []string{"registry.test/db:1", "registry.test/web:1", "registry.test/web:2"} {
			h.fake.Publish(ref, ref)
		}
		if _, err := h.deploy(t, shop(1, "registry.test/web:1")); err != nil {
			t.Fatal(err)
		}
		if _, err := h.deploy(t, &fleetv1.DeploymentSpec{Name: "web", Revision: 1, Image: "registry.test/web:1"}); err != nil {
			t.Fatal(err)
		}
		names := func() []string {
			cs, _ := h.fake.List(ctx)
			var out []string
			for _, c := range cs {
				out = append(out, c.Name)
			}
			slices.Sort(out)
			return out
		}
		before := names()
		want := []string{"edge2-shop-db-r1", "edge2-shop-migrate-r1", "edge2-shop-web-r1", "edge2-web-r1"}
		if diff := cmp.Diff(want, before); diff != "" {
			t.Errorf("containers (-want +got):\n%s", diff)
		}
		if got := h.fake.Networks(); !slices.Equal(got, []string{"edge2-shop-back"}) {
			t.Errorf("networks %v, want [edge2-shop-back]", got)
		}
		if got := h.fake.Volumes(); !slices.Equal(got, []string{"edge2-shop-data"}) {
			t.Errorf("volumes %v, want [edge2-shop-data]", got)
		}
		if _, err := h.deploy(t, shop(2, "registry.test/web:2")); err != nil {
			t.Fatal(err)
		}
		if got := names(); !slices.Contains(got, "edge2-shop-db-r1") || !slices.Contains(got, "edge2-shop-web-r2") {
			t.Errorf("after revision 2 of web only: %v", got)
		}
		if err := h.rec.RemoveWith(ctx, "shop", false, true); err != nil {
			t.Fatal(err)
		}
		if got := names(); !slices.Equal(got, []string{"edge2-web-r1"}) {
			t.Errorf("after removing shop: %v", got)
		}
		if n, v := h.fake.Networks(), h.fake.Volumes(); len(n)+len(v) != 0 {
			t.Errorf("after removing shop with its volumes: networks %v, volumes %v", n, v)
		}
	})
}
