package reconcile_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/store"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// dockerApp is a reconciler over the real engine for a unique owner, an
// in-process registry with the test images, and the run's engine events.
type dockerApp struct {
	raw   *client.Client
	eng   *engine.Docker
	st    *store.Store
	cfg   reconcile.Config
	rec   *reconcile.Reconciler
	name  string // the deployment, unique to the run
	db    string // image references
	web1  string
	web2  string
	mu    sync.Mutex
	evs   []events.Message // guarded by mu
	owner string
}

func newDockerApp(t *testing.T) *dockerApp {
	t.Helper()
	raw := testenv.DockerClient(t)
	suffix := time.Now().UnixNano() % 1e9
	a := &dockerApp{raw: raw, name: fmt.Sprintf("shop%d", suffix), owner: fmt.Sprintf("test/apps-%d", suffix)}
	reg := testimage.NewRegistry(t)
	a.db, _ = reg.Push(t, testimage.Spec{Repo: "apps/db", Tag: "1"})
	a.web1, _ = reg.Push(t, testimage.Spec{Repo: "apps/web", Tag: "1", Env: map[string]string{"MESSAGE": "v1"}})
	a.web2, _ = reg.Push(t, testimage.Spec{Repo: "apps/web", Tag: "2", Env: map[string]string{"MESSAGE": "v2"}})
	// Cleanups run last first: the containers (RemoveOwned) before the
	// networks and volumes.
	t.Cleanup(func() {
		ctx := context.Background()
		for _, n := range []string{"back", "lan"} {
			raw.NetworkRemove(ctx, "fleet-"+a.name+"-"+n)
		}
		raw.VolumeRemove(ctx, "fleet-"+a.name+"-data", true)
	})
	testenv.RemoveOwned(t, raw, a.owner, reg.Host+"/")
	var err error
	if a.eng, err = engine.NewDocker("", a.owner, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.eng.Close() })
	if a.st, err = store.Open(store.Config{Path: filepath.Join(t.TempDir(), "state.db")}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.st.Close() })
	a.cfg = reconcile.Config{Engine: a.eng, Store: a.st, PollInterval: 100 * time.Millisecond,
		Publish: func(context.Context, string, *fleetv1.DeploymentStatus) {}}
	a.rec = a.newReconciler(t)
	a.watchEvents(t)
	return a
}

func (a *dockerApp) newReconciler(t *testing.T) *reconcile.Reconciler {
	t.Helper()
	rec, err := reconcile.New(a.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rec.Shutdown)
	return rec
}

// watchEvents records the engine's container events of the run's owner.
func (a *dockerApp) watchEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	msgs, _ := a.raw.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("label", engine.LabelOwner+"="+a.owner))})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-msgs:
				a.mu.Lock()
				a.evs = append(a.evs, m)
				a.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// order is the index of each "service action" among the events, the first
// of each.
func (a *dockerApp) order() map[string]int { return a.orderSince(0) }

// events is how many events were recorded so far.
func (a *dockerApp) events() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.evs)
}

// orderSince is order among the events from the n-th on.
func (a *dockerApp) orderSince(n int) map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]int{}
	for i := n; i < len(a.evs); i++ {
		m := a.evs[i]
		k := m.Actor.Attributes[engine.LabelService] + " " + string(m.Action)
		if _, seen := out[k]; !seen {
			out[k] = i
		}
	}
	return out
}

// spec is the three-service application: db (health-checked, the app
// volume), migrate (a job after db is healthy), web (after db is healthy
// and migrate completed); network mode none.
func (a *dockerApp) spec(rev int64, web string) *fleetv1.DeploymentSpec {
	hc := func() *fleetv1.HealthCheck {
		return &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}, Interval: durationpb.New(300 * time.Millisecond),
			Timeout: durationpb.New(2 * time.Second), Retries: 2}
	}
	update := &fleetv1.Update{ProgressDeadlineSeconds: 60}
	return &fleetv1.DeploymentSpec{Name: a.name, Revision: rev,
		Volumes: []*fleetv1.AppVolume{{Name: "data"}},
		Services: map[string]*fleetv1.Service{
			"db": {Image: a.db, NetworkMode: "none", HealthCheck: hc(), Update: update, Env: map[string]string{"FILE_WRITE": "/data/x=rev1"},
				Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "data", Target: "/data"}}},
			"migrate": {Image: a.db, NetworkMode: "none", Update: update, Env: map[string]string{"MODE": "exit", "DELAY": "300ms"},
				DependsOn: []*fleetv1.Dependency{{Service: "db", Condition: fleetv1.Dependency_HEALTHY}}},
			"web": {Image: web, NetworkMode: "none", HealthCheck: hc(), Update: update, DependsOn: []*fleetv1.Dependency{
				{Service: "db", Condition: fleetv1.Dependency_HEALTHY},
				{Service: "migrate", Condition: fleetv1.Dependency_COMPLETED_SUCCESSFULLY}}},
		}}
}

// ids is the deployment's containers by service, and whether each runs.
func (a *dockerApp) ids(t *testing.T) (map[string]string, map[string]bool) {
	t.Helper()
	cs, err := a.eng.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids, running := map[string]string{}, map[string]bool{}
	for _, c := range cs {
		if _, dup := ids[c.Service]; dup {
			t.Fatalf("two containers of service %s: %+v", c.Service, cs)
		}
		ids[c.Service], running[c.Service] = c.ID, c.Running
	}
	return ids, running
}

func (a *dockerApp) deploy(t *testing.T, spec *fleetv1.DeploymentSpec) (*fleetv1.DeploymentStatus, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	return a.rec.Apply(ctx, spec, nil)
}

func TestAppOnDocker(t *testing.T) {
	a := newDockerApp(t)
	ctx := context.Background()

	st, err := a.deploy(t, a.spec(1, a.web1))
	if err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy r1 = %v, %v; want RUNNING", st, err)
	}
	for _, ss := range st.GetServices() {
		if ss.GetName() == "db" && ss.GetHealth() != fleetv1.HealthCheck_HEALTHY || ss.GetName() == "migrate" && (ss.GetPhase() != fleetv1.DeploymentStatus_EXITED || ss.GetExitCode() != 0) {
			t.Errorf("service status %v, want db healthy and migrate exited 0", ss)
		}
	}
	a.startOrder(t)
	r1, _ := a.ids(t)

	// Revision 2: db reads what revision 1 wrote in the app volume; the
	// others keep their containers.
	s2 := a.spec(2, a.web1)
	s2.Services["db"].Env = map[string]string{"FILE_EXPECT": "/data/x=rev1"}
	if st, err := a.deploy(t, s2); err != nil {
		t.Fatalf("deploy r2 (db reads the volume) = %v, %v", st, err)
	}
	r2, _ := a.ids(t)
	if r2["db"] == r1["db"] || r2["migrate"] != r1["migrate"] || r2["web"] != r1["web"] {
		t.Errorf("r2 containers %v, want db replaced, migrate and web kept (r1 %v)", r2, r1)
	}

	// Revision 3: web's image only.
	s3 := a.spec(3, a.web2)
	s3.Services["db"].Env = s2.Services["db"].Env
	if st, err := a.deploy(t, s3); err != nil {
		t.Fatalf("deploy r3 = %v, %v", st, err)
	}
	r3, _ := a.ids(t)
	if r3["db"] != r2["db"] || r3["migrate"] != r2["migrate"] || r3["web"] == r2["web"] {
		t.Errorf("r3 containers %v, want only web replaced (r2 %v)", r3, r2)
	}

	// Revision 4: web's image again, but the migration fails: the whole
	// app is back at revision 3.
	s4 := a.spec(4, a.web1)
	s4.Services["db"].Env = s2.Services["db"].Env
	s4.Services["migrate"].Env["EXIT_CODE"] = "1"
	st, err = a.deploy(t, s4)
	if errdefs.Code(err) != fleetv1.Reply_UNHEALTHY || st.GetPhase() != fleetv1.DeploymentStatus_ROLLED_BACK {
		t.Fatalf("deploy r4 = %v, %v; want UNHEALTHY, ROLLED_BACK", st, err)
	}
	r4, running := a.ids(t)
	if !sameIDs(r4, r3) || !running["db"] || !running["web"] {
		t.Errorf("after rollback %v (running %v), want revision 3's %v, db and web running", r4, running, r3)
	}

	// Revision 5 is revision 3 again (all kept); a new reconciler over the
	// same store, as after an agent restart, adopts every service.
	s5 := a.spec(5, a.web2)
	s5.Services["db"].Env = s2.Services["db"].Env
	if _, err := a.deploy(t, s5); err != nil {
		t.Fatal(err)
	}
	a.rec.Shutdown()
	a.rec = a.newReconciler(t)
	if err := a.rec.ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "adopted status", func() bool {
		sts := a.rec.Statuses()
		return len(sts) == 1 && sts[0].GetPhase() == fleetv1.DeploymentStatus_RUNNING && len(sts[0].GetServices()) == 3
	})
	if r5, _ := a.ids(t); !sameIDs(r5, r3) {
		t.Errorf("after the restart %v, want the same containers %v", r5, r3)
	}
	for _, ss := range a.rec.Statuses()[0].GetServices() {
		if ss.GetContainerId() != r3[ss.GetName()] {
			t.Errorf("adopted service %s reports container %s, want %s", ss.GetName(), ss.GetContainerId(), r3[ss.GetName()])
		}
	}

	a.stopStartOrder(t)

	// One service stopped; the others run.
	if _, err := a.rec.StopService(ctx, a.name, "db"); err != nil {
		t.Fatal(err)
	}
	if _, running := a.ids(t); running["db"] || !running["web"] {
		t.Errorf("after stop db: running %v, want db stopped, web running", running)
	}
	if _, err := a.rec.StartService(ctx, a.name, "nosuch", nil); errdefs.Code(err) != fleetv1.Reply_NOT_FOUND || errdefs.Field(err) != "service" {
		t.Errorf("start of an unknown service = %v, want NOT_FOUND on service", err)
	}

	a.removeKeepsVolume(t, s2)
}

// removeKeepsVolume: remove keeps the app volume, and a new deployment
// (spec, whose db reads the volume) finds its data; remove with
// removeVolumes deletes it.
func (a *dockerApp) removeKeepsVolume(t *testing.T, spec *fleetv1.DeploymentSpec) {
	t.Helper()
	ctx := context.Background()
	vol := "fleet-" + a.name + "-data"
	if err := a.rec.Remove(ctx, a.name, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.raw.VolumeInspect(ctx, vol); err != nil {
		t.Errorf("volume after remove: %v, want kept", err)
	}
	if ids, _ := a.ids(t); len(ids) != 0 {
		t.Errorf("containers after remove: %v", ids)
	}
	if _, err := a.deploy(t, spec); err != nil {
		t.Fatalf("deploy after remove (db reads the volume) = %v", err)
	}
	if err := a.rec.RemoveWith(ctx, a.name, false, true); err != nil {
		t.Fatal(err)
	}
	if _, err := a.raw.VolumeInspect(ctx, vol); err == nil {
		t.Error("volume after remove with removeVolumes is still there")
	}
}

// startOrder: the first start went in dependency order, each waiting for
// its dependencies' conditions (from the engine's events).
func (a *dockerApp) startOrder(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, "web's start event", func() bool { _, ok := a.order()["web start"]; return ok })
	o := a.order()
	for _, k := range []string{"db start", "db health_status: healthy", "migrate start", "migrate die", "web start"} {
		if _, ok := o[k]; !ok {
			t.Fatalf("no event %q among %v", k, o)
		}
	}
	if !(o["db health_status: healthy"] < o["migrate start"] && o["migrate die"] < o["web start"] && o["db start"] < o["db health_status: healthy"]) {
		t.Errorf("events in order %v; want db healthy before migrate starts, migrate done before web starts", o)
	}
}

// stopStartOrder: a stop of the whole app goes in reverse dependency
// order, a start in order again (from the engine's events).
func (a *dockerApp) stopStartOrder(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	n := a.events()
	if _, err := a.rec.Stop(ctx, a.name); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "db's die event", func() bool { _, ok := a.orderSince(n)["db die"]; return ok })
	if o := a.orderSince(n); o["web die"] > o["db die"] {
		t.Errorf("stop events %v, want web stopped before db", o)
	}
	n = a.events()
	if st, err := a.rec.Start(ctx, a.name, nil); err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("start = %v, %v; want RUNNING", st, err)
	}
	testenv.Eventually(t, "web's start event", func() bool { _, ok := a.orderSince(n)["web start"]; return ok })
	if o := a.orderSince(n); !(o["db start"] < o["migrate start"] && o["migrate die"] < o["web start"]) {
		t.Errorf("start events %v, want db, migrate (done), then web", o)
	}
}

func sameIDs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestAppNetworkOnDocker: two services reach each other by service name
// on the application's network, which the agent creates, labels and
// removes.
func TestAppNetworkOnDocker(t *testing.T) {
	a := newDockerApp(t)
	ctx := context.Background()
	hc := &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}, Interval: durationpb.New(300 * time.Millisecond), Retries: 3}
	spec := &fleetv1.DeploymentSpec{Name: a.name, Revision: 1,
		Networks: []*fleetv1.AppNetwork{{Name: "lan", Internal: true}},
		Services: map[string]*fleetv1.Service{
			"web": {Image: a.web1, Networks: []string{"lan"}},
			// client serves only once it fetched web's page by name.
			"client": {Image: a.web2, Networks: []string{"lan"}, HealthCheck: hc, Env: map[string]string{"FETCH": "http://web:8080/", "PORT": "8081"},
				DependsOn: []*fleetv1.Dependency{{Service: "web"}}},
		}}
	if st, err := a.deploy(t, spec); err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy = %v, %v; want RUNNING (client fetched http://web:8080/)", st, err)
	}
	netName := "fleet-" + a.name + "-lan"
	n, err := a.raw.NetworkInspect(ctx, netName, network.InspectOptions{})
	if err != nil || n.Labels[engine.LabelOwner] != a.owner || !n.Internal || len(n.Containers) != 2 {
		t.Fatalf("network %s = %+v, %v; want internal, the owner's, with both containers", netName, n, err)
	}
	if err := a.rec.Remove(ctx, a.name, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.raw.NetworkInspect(ctx, netName, network.InspectOptions{}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("network after remove: %v, want not found", err)
	}
}

// TestOneShotOnDocker: on a real engine, a service with restart "no" that
// exits 0 and that no service waits for (a seeding task beside web) has
// completed once it has exited: a revision that changes no service keeps
// its container (before, it was made and run again), and the application
// is RUNNING with the task EXITED 0.
func TestOneShotOnDocker(t *testing.T) {
	a := newDockerApp(t)
	spec := &fleetv1.DeploymentSpec{Name: a.name, Revision: 1,
		Services: map[string]*fleetv1.Service{
			"web": {Image: a.web1, NetworkMode: "none"},
			"seed": {Image: a.db, NetworkMode: "none", Env: map[string]string{"MODE": "exit", "DELAY": "300ms"},
				RestartPolicy: &fleetv1.RestartPolicy{Mode: fleetv1.RestartPolicy_NO}},
		}}
	if st, err := a.deploy(t, spec); err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING {
		t.Fatalf("deploy = %v, %v; want RUNNING", st, err)
	}
	var before map[string]string
	testenv.Eventually(t, "the seed task exited", func() bool {
		var running map[string]bool
		before, running = a.ids(t)
		return !running["seed"] && running["web"]
	})
	spec.Revision = 2 // the same services: each keeps its container if it is what it should be
	st, err := a.deploy(t, spec)
	if err != nil || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING || st.GetCode() != fleetv1.Reply_OK {
		t.Fatalf("deploy r2 = %v, %v; want RUNNING, OK", st, err)
	}
	for _, ss := range st.GetServices() {
		if ss.GetName() == "seed" && (ss.GetPhase() != fleetv1.DeploymentStatus_EXITED || ss.GetExitCode() != 0) {
			t.Errorf("service status %v, want seed exited 0", ss)
		}
	}
	if after, _ := a.ids(t); !sameIDs(after, before) {
		t.Errorf("containers after revision 2 %v, want revision 1's %v kept", after, before)
	}
}
