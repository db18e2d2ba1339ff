package scenarios

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/volume"
	dockerclient "github.com/docker/docker/client"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/fleet-agent/fleet/cloud-sim/broker/brokertest"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// appImages are the images of the three-service application: db (also
// the migration, run with MODE=exit) and two versions of web.
type appImages struct{ db, web1, web2 string }

func pushAppImages(tb testing.TB, reg *testimage.Registry) appImages {
	tb.Helper()
	var im appImages
	im.db, _ = reg.Push(tb, testimage.Spec{Repo: "apps/db", Tag: "1"})
	im.web1, _ = reg.Push(tb, testimage.Spec{Repo: "apps/web", Tag: "1", Env: map[string]string{"MESSAGE": "v1"}})
	im.web2, _ = reg.Push(tb, testimage.Spec{Repo: "apps/web", Tag: "2", Env: map[string]string{"MESSAGE": "v2"}})
	return im
}

// Health checks of db and web: every 300 ms, unhealthy after 2 failures.
const (
	appHealthInterval = 300 * time.Millisecond
	appHealthTimeout  = 2 * time.Second
	appHealthRetries  = 2
)

// threeServiceApp is the application of the agent's Docker test: db
// (health-checked, writing to the app volume data), migrate (a job after
// db is healthy), web (health-checked, after db is healthy and migrate
// completed, updated with webStrategy); network mode none.
func threeServiceApp(name string, rev int64, im appImages, web string, webStrategy fleetv1.Update_Strategy) *fleetv1.DeploymentSpec {
	hc := func() *fleetv1.HealthCheck {
		return &fleetv1.HealthCheck{Test: []string{"CMD", "/app", "probe"}, Interval: durationpb.New(appHealthInterval),
			Timeout: durationpb.New(appHealthTimeout), Retries: appHealthRetries}
	}
	update := func() *fleetv1.Update { return &fleetv1.Update{ProgressDeadlineSeconds: 60} }
	webUpdate := update()
	webUpdate.Strategy = webStrategy
	return &fleetv1.DeploymentSpec{Name: name, Revision: rev,
		Volumes: []*fleetv1.AppVolume{{Name: "data"}},
		Services: map[string]*fleetv1.Service{
			"db": {Image: im.db, NetworkMode: "none", HealthCheck: hc(), Update: update(), Env: map[string]string{"FILE_WRITE": "/data/x=rev1"},
				Mounts: []*fleetv1.Mount{{Type: fleetv1.Mount_VOLUME, Source: "data", Target: "/data"}}},
			"migrate": {Image: im.db, NetworkMode: "none", Update: update(), Env: map[string]string{"MODE": "exit", "DELAY": "300ms"},
				DependsOn: []*fleetv1.Dependency{{Service: "db", Condition: fleetv1.Dependency_HEALTHY}}},
			"web": {Image: web, NetworkMode: "none", HealthCheck: hc(), Update: webUpdate, DependsOn: []*fleetv1.Dependency{
				{Service: "db", Condition: fleetv1.Dependency_HEALTHY},
				{Service: "migrate", Condition: fleetv1.Dependency_COMPLETED_SUCCESSFULLY}}},
		}}
}

// composeApp is threeServiceApp as a Compose file (the compose spec
// format, whose depends_on conditions docker-compose 1.29 honours), every
// container labelled io.fleet-agent.bench=run unless run is empty.
func composeApp(im appImages, web, run string) string {
	hc := fmt.Sprintf(`    healthcheck:
      test: ["CMD", "/app", "probe"]
      interval: %v
      timeout: %v
      retries: %d
`, appHealthInterval, appHealthTimeout, appHealthRetries)
	labels := "    network_mode: none\n"
	if run != "" {
		labels += "    labels: {io.fleet-agent.bench: " + run + "}\n"
	}
	return "services:\n" +
		"  db:\n    image: " + im.db + "\n" + labels + hc +
		"    environment: {FILE_WRITE: /data/x=rev1}\n    volumes: [\"data:/data\"]\n" +
		"  migrate:\n    image: " + im.db + "\n" + labels +
		"    environment: {MODE: exit, DELAY: 300ms}\n    depends_on:\n      db: {condition: service_healthy}\n" +
		"  web:\n    image: " + web + "\n" + labels + hc +
		"    depends_on:\n      db: {condition: service_healthy}\n      migrate: {condition: service_completed_successfully}\n" +
		"volumes:\n  data: {}\n"
}

// composeProject is a docker-compose project of its own directory, taken
// down with its volumes at cleanup unless it was already.
type composeProject struct {
	name, file string
	down       bool
}

func newComposeProject(tb testing.TB, name string) *composeProject {
	tb.Helper()
	p := &composeProject{name: name, file: filepath.Join(tb.TempDir(), "docker-compose.yml")}
	tb.Cleanup(func() {
		if _, err := os.Stat(p.file); err == nil && !p.down {
			if out, err := p.run(context.Background(), "down", "-v", "--remove-orphans"); err != nil {
				tb.Logf("compose down %s: %v\n%s", name, err, out)
			}
		}
	})
	return p
}

// takeDown removes the project's containers and volumes.
func (p *composeProject) takeDown(tb testing.TB) {
	tb.Helper()
	if out, err := p.run(context.Background(), "down", "-v", "--remove-orphans"); err != nil {
		tb.Fatalf("compose down %s: %v\n%s", p.name, err, out)
	}
	p.down = true
}

// up writes the file and runs up -d, which returns once every service was
// started after the conditions of its dependencies.
func (p *composeProject) up(tb testing.TB, yaml string) {
	tb.Helper()
	if err := os.WriteFile(p.file, []byte(yaml), 0o600); err != nil {
		tb.Fatal(err)
	}
	if out, err := p.run(context.Background(), "up", "-d"); err != nil {
		tb.Fatalf("compose up %s: %v\n%s", p.name, err, out)
	}
}

func (p *composeProject) run(ctx context.Context, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, "docker-compose", append([]string{"-p", p.name, "-f", p.file}, args...)...).CombinedOutput()
}

// containerEvents follows the engine's container events matching labels
// from now on, until cleanup.
func containerEvents(tb testing.TB, cli *dockerclient.Client, labels ...string) <-chan events.Message {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	args := filters.NewArgs(filters.Arg("type", string(events.ContainerEventType)))
	for _, l := range labels {
		args.Add("label", l)
	}
	msgs, _ := cli.Events(ctx, events.ListOptions{Since: time.Now().Format(time.RFC3339Nano), Filters: args})
	return msgs
}

// awaitEvent returns the first event of msgs that ok accepts.
func awaitEvent(tb testing.TB, msgs <-chan events.Message, what string, ok func(events.Message) bool) events.Message {
	tb.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case m := <-msgs:
			if ok(m) {
				return m
			}
		case <-deadline:
			tb.Fatalf("no event: %s", what)
		}
	}
}

func serviceStatus(st *fleetv1.DeploymentStatus, name string) *fleetv1.ServiceStatus {
	for _, s := range st.GetServices() {
		if s.GetName() == name {
			return s
		}
	}
	return nil
}

// removeOwnedVolumes removes, at cleanup, the volumes labelled with the
// owner (an application's that a failed run left).
func removeOwnedVolumes(tb testing.TB, cli *dockerclient.Client, owner string) {
	tb.Cleanup(func() {
		ctx := context.Background()
		cs, _ := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.owner="+owner))})
		for _, c := range cs {
			cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
		vs, _ := cli.VolumeList(ctx, volume.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "io.fleet-agent.owner="+owner))})
		for _, v := range vs.Volumes {
			cli.VolumeRemove(ctx, v.Name, true)
		}
	})
}

// BenchmarkAppUpdate measures the three-service application (db with a
// health check, a one-shot migrate, web after db HEALTHY and migrate
// COMPLETED_SUCCESSFULLY) on the real agent beside docker-compose 1.29
// running the equivalent Compose file, images from the same loopback
// registry, already on the engine for both:
//
//   - fresh: a new application until every service is running, healthy or
//     completed (the agent: deploy command → SUCCEEDED reply; compose: up -d
//     → web's health_status healthy event);
//   - update: web's downtime when only its image changes, from the engine's
//     event timestamps (old web's die → new web's start, 0 when the new one
//     started first), the agent with each strategy and compose's up -d
//     (which starts the exited migrate again, web waiting for it:
//     migrate-runs/op).
//
// db-start-ms, migrate-start-ms and web-start-ms are the mean time from
// the command to each one's start event: where the waits go.
func BenchmarkAppUpdate(b *testing.B) {
	e := newDeployEnv(b, "gw-app", brokertest.EmbeddedInMemory, "--log-level", "warn")
	removeOwnedVolumes(b, e.cli, e.owner)
	im := pushAppImages(b, e.reg)
	run := fmt.Sprintf("appbench%d", time.Now().UnixNano()%1e9)
	// Both start from images on the engine: one deploy pulls them.
	warm := threeServiceApp("warm", 1, im, im.web1, fleetv1.Update_STOP_FIRST)
	if r := sendLong(b, e.rec, e.gw, deploy(warm)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		b.Fatalf("warm-up deploy = %v", r)
	}
	warm.Services["web"].Image = im.web2
	warm.Revision = 2
	if r := sendLong(b, e.rec, e.gw, deploy(warm)); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		b.Fatalf("warm-up update = %v", r)
	}
	removeApp(b, e, "warm")

	b.Run("fresh/agent", func(b *testing.B) {
		var starts startOffsets
		i := 0
		for b.Loop() {
			i++
			name := fmt.Sprintf("fresh%d", i)
			b.StopTimer()
			msgs := containerEvents(b, e.cli, "io.fleet-agent.owner="+e.owner, "io.fleet-agent.deployment="+name)
			t0 := time.Now()
			b.StartTimer()
			r := sendLong(b, e.rec, e.gw, deploy(threeServiceApp(name, 1, im, im.web1, fleetv1.Update_STOP_FIRST)))
			if r.GetResult() != fleetv1.Reply_SUCCEEDED || r.GetStatus().GetPhase() != fleetv1.DeploymentStatus_RUNNING {
				b.Fatalf("deploy %s = %v", name, r)
			}
			b.StopTimer()
			starts.add(b, nil, msgs, t0, "io.fleet-agent.service")
			removeApp(b, e, name)
			b.StartTimer()
		}
		starts.report(b)
	})
	b.Run("fresh/compose", func(b *testing.B) {
		var starts startOffsets
		i := 0
		for b.Loop() {
			i++
			b.StopTimer()
			p := newComposeProject(b, fmt.Sprintf("%s-fresh%d", run, i))
			msgs := containerEvents(b, e.cli, "com.docker.compose.project="+p.name)
			t0 := time.Now()
			b.StartTimer()
			p.up(b, composeApp(im, im.web1, run))
			var seen []events.Message
			awaitEvent(b, msgs, "web healthy", func(m events.Message) bool {
				seen = append(seen, m)
				return m.Actor.Attributes["com.docker.compose.service"] == "web" && strings.HasPrefix(string(m.Action), "health_status: healthy")
			})
			b.StopTimer()
			starts.add(b, seen, msgs, t0, "com.docker.compose.service")
			p.takeDown(b)
			b.StartTimer()
		}
		starts.report(b)
	})
	for _, strategy := range []fleetv1.Update_Strategy{fleetv1.Update_STOP_FIRST, fleetv1.Update_START_FIRST} {
		b.Run("update/agent-"+strategy.String(), func(b *testing.B) { benchAgentAppUpdate(b, e, im, strategy) })
	}
	b.Run("update/compose", func(b *testing.B) { benchComposeAppUpdate(b, e.cli, im, run) })
}

// startOffsets sums, over the iterations, the time from the command to
// the start of each service.
type startOffsets struct {
	db, migrate, web time.Duration
	n                int
}

// add finds the start events of db, migrate and web (labelled with their
// service under key) among the events seen, then msgs.
func (s *startOffsets) add(tb testing.TB, seen []events.Message, msgs <-chan events.Message, t0 time.Time, key string) {
	tb.Helper()
	var db, migrate, web time.Time
	for db.IsZero() || migrate.IsZero() || web.IsZero() {
		var m events.Message
		if len(seen) > 0 {
			m, seen = seen[0], seen[1:]
		} else {
			m = awaitEvent(tb, msgs, "db's, migrate's and web's start", func(events.Message) bool { return true })
		}
		if m.Action != events.ActionStart {
			continue
		}
		switch m.Actor.Attributes[key] {
		case "db":
			db = time.Unix(0, m.TimeNano)
		case "migrate":
			migrate = time.Unix(0, m.TimeNano)
		case "web":
			web = time.Unix(0, m.TimeNano)
		}
	}
	s.db += db.Sub(t0)
	s.migrate += migrate.Sub(t0)
	s.web += web.Sub(t0)
	s.n++
}

func (s *startOffsets) report(b *testing.B) {
	if s.n > 0 {
		b.ReportMetric(float64(s.db.Microseconds())/1000/float64(s.n), "db-start-ms")
		b.ReportMetric(float64(s.migrate.Microseconds())/1000/float64(s.n), "migrate-start-ms")
		b.ReportMetric(float64(s.web.Microseconds())/1000/float64(s.n), "web-start-ms")
	}
}

// removeApp removes an application with its volumes.
func removeApp(tb testing.TB, e deployEnv, name string) {
	tb.Helper()
	cmd := ref(topic.Remove, name)
	cmd.GetRemove().RemoveVolumes = true
	if r := sendLong(tb, e.rec, e.gw, cmd); r.GetResult() != fleetv1.Reply_SUCCEEDED {
		tb.Fatalf("remove %s = %v", name, r)
	}
}

// reportDowntimes reports the median and the worst of downs.
func reportDowntimes(b *testing.B, downs []time.Duration) {
	sort.Slice(downs, func(i, j int) bool { return downs[i] < downs[j] })
	b.ReportMetric(float64(downs[len(downs)/2].Microseconds())/1000, "downtime-p50-ms")
	b.ReportMetric(float64(downs[len(downs)-1].Microseconds())/1000, "downtime-max-ms")
}

func benchAgentAppUpdate(b *testing.B, e deployEnv, im appImages, strategy fleetv1.Update_Strategy) {
	name := "upd" + fmt.Sprint(int(strategy))
	rev, web := int64(1), im.web1
	r := sendLong(b, e.rec, e.gw, deploy(threeServiceApp(name, rev, im, web, strategy)))
	if r.GetResult() != fleetv1.Reply_SUCCEEDED {
		b.Fatalf("deploy %s = %v", name, r)
	}
	prevID := serviceStatus(r.GetStatus(), "web").GetContainerId()
	var downs []time.Duration
	for b.Loop() {
		rev++
		if web = im.web1; rev%2 == 0 {
			web = im.web2
		}
		msgs := containerEvents(b, e.cli, "io.fleet-agent.owner="+e.owner, "io.fleet-agent.deployment="+name, "io.fleet-agent.service=web")
		r := sendLong(b, e.rec, e.gw, deploy(threeServiceApp(name, rev, im, web, strategy)))
		if r.GetResult() != fleetv1.Reply_SUCCEEDED {
			b.Fatalf("update %s r%d = %v", name, rev, r)
		}
		newID := serviceStatus(r.GetStatus(), "web").GetContainerId()
		downs = append(downs, downtime(b, msgs, prevID, newID))
		prevID = newID
	}
	b.StopTimer()
	reportDowntimes(b, downs)
	removeApp(b, e, name)
}

// downtime is the time from oldID's die to newID's start among msgs, 0
// when the new one started first.
func downtime(tb testing.TB, msgs <-chan events.Message, oldID, newID string) time.Duration {
	tb.Helper()
	var died, started time.Time
	for died.IsZero() || started.IsZero() {
		m := awaitEvent(tb, msgs, "old web's die and new web's start", func(m events.Message) bool {
			return m.Action == events.ActionDie && m.Actor.ID == oldID || m.Action == events.ActionStart && m.Actor.ID == newID
		})
		if m.Action == events.ActionDie {
			died = time.Unix(0, m.TimeNano)
		} else {
			started = time.Unix(0, m.TimeNano)
		}
	}
	return max(0, started.Sub(died))
}

func benchComposeAppUpdate(b *testing.B, cli *dockerclient.Client, im appImages, run string) {
	p := newComposeProject(b, run+"-update")
	p.up(b, composeApp(im, im.web1, run))
	one := func(service string) container.InspectResponse {
		cs, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(
			filters.Arg("label", "com.docker.compose.project="+p.name), filters.Arg("label", "com.docker.compose.service="+service))})
		if err != nil || len(cs) != 1 {
			b.Fatalf("%s containers of %s: %v, %v", service, p.name, cs, err)
		}
		ci, err := cli.ContainerInspect(context.Background(), cs[0].ID)
		if err != nil {
			b.Fatal(err)
		}
		return ci
	}
	prevID := one("web").ID
	// up -d starts the exited migrate again, and web waits for it: counted.
	runs := 0
	var downs []time.Duration
	n := 0
	for b.Loop() {
		n++
		web := im.web2
		if n%2 == 0 {
			web = im.web1
		}
		msgs := containerEvents(b, cli, "com.docker.compose.project="+p.name, "com.docker.compose.service=web")
		migrated := one("migrate").State.StartedAt
		p.up(b, composeApp(im, web, run))
		if one("migrate").State.StartedAt != migrated {
			runs++
		}
		newID := one("web").ID
		downs = append(downs, downtime(b, msgs, prevID, newID))
		prevID = newID
	}
	b.StopTimer()
	reportDowntimes(b, downs)
	b.ReportMetric(float64(runs)/float64(n), "migrate-runs/op")
}
