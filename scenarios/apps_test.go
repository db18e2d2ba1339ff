package scenarios

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	dockerclient "github.com/docker/docker/client"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// appCloud is cloud-sim serve without simulated gateways and one real
// agent on Docker provisioned through its API, the application's images
// in a loopback registry. Gateway and application names are the run's
// own (container names are the Docker host's).
type appCloud struct {
	*cloud
	docker         *dockerclient.Client
	reg            *testimage.Registry
	im             appImages
	tenant, gw     string
	name           string // the application
	owner          string
	hostPathPolicy string // the agent's --allow-host-path
	prefix         string // the agent's --resource-prefix
}

// newAppCloud starts the cloud on its embedded broker, or with mosquitto
// on a Mosquitto with dynamic security (the gateways' identities kept
// there by cloud-sim).
func newAppCloud(t *testing.T, mosquitto bool) *appCloud {
	t.Helper()
	run := time.Now().UnixNano() % 1e9
	a := &appCloud{docker: testenv.DockerClient(t), reg: testimage.NewRegistry(t), tenant: "acme",
		gw: fmt.Sprintf("gw-apps-%d", run), name: fmt.Sprintf("shop%d", run), hostPathPolicy: t.TempDir()}
	a.owner = a.tenant + "/" + a.gw
	a.im = pushAppImages(t, a.reg)
	// Registered before the agent's, so they run after it stopped:
	// containers, then the application's volumes, then the images.
	testenv.RemoveOwned(t, a.docker, a.owner, a.reg.Host+"/")
	removeOwnedVolumes(t, a.docker, a.owner)
	if mosquitto {
		m, c := dynsecCloud(t)
		u, err := url.Parse(m.URL())
		if err != nil {
			t.Fatal(err)
		}
		c.mqtt, a.cloud = u.Host, c // where provisionAgent points the agent
	} else {
		a.cloud = newCloud(t, simfleet.Config{})
	}
	a.prefix = a.provisionAgent(t, a.tenant, a.gw, "--allow-host-path", a.hostPathPolicy).ResourcePrefix
	testenv.Eventually(t, a.gw+" online", func() bool {
		g := a.gateway(t, a.tenant, a.gw)
		return g != nil && g.Online
	})
	return a
}

// appJSON is the three-service application of threeServiceApp as an
// operator writes it: a JSON DeploymentSpec with services.
// Its health checks have margins for a loaded machine: probe failures in
// the first 10 s do not count (a success ends that period), and a probe
// may take 10 s.
func (a *appCloud) appJSON(rev int64, web string) string {
	hc := `"healthCheck": {"test": ["CMD", "/app", "probe"], "interval": "0.3s", "timeout": "10s", "retries": 2, "startPeriod": "10s"}`
	return fmt.Sprintf(`{"name": %q, "revision": %d, "volumes": [{"name": "data"}], "services": {
  "db": {"image": %q, "networkMode": "none", %s, "env": {"FILE_WRITE": "/data/x=rev1"},
         "mounts": [{"type": "VOLUME", "source": "data", "target": "/data"}]},
  "migrate": {"image": %q, "networkMode": "none", "env": {"MODE": "exit", "DELAY": "300ms"},
              "dependsOn": [{"service": "db", "condition": "HEALTHY"}]},
  "web": {"image": %q, "networkMode": "none", %s, "update": {"strategy": "START_FIRST", "progressDeadlineSeconds": 60},
          "dependsOn": [{"service": "db", "condition": "HEALTHY"}, {"service": "migrate", "condition": "COMPLETED_SUCCESSFULLY"}]}}}`,
		a.name, rev, a.im.db, hc, a.im.db, web, hc)
}

// command posts fields (JSON members of POST /v1/commands beside the
// target, the wait and skipRegistryCheck: the registry is on loopback) to
// the agent and returns its one command, final.
func (a *appCloud) command(t *testing.T, fields string) *api.Command {
	t.Helper()
	b := a.sendJSON(t, fmt.Sprintf(`{"target": {"tenant": %q, "gateways": [%q]}, "skipRegistryCheck": true, "wait": "90s", %s}`, a.tenant, a.gw, fields))
	if len(b.Commands) != 1 || !b.Commands[0].Final() {
		t.Fatalf("batch %+v: want one final command", b)
	}
	return b.Commands[0]
}

// replyOf decodes the command's final reply.
func replyOf(t *testing.T, c *api.Command) *fleetv1.Reply {
	t.Helper()
	var r fleetv1.Reply
	if err := protojson.Unmarshal(c.Reply, &r); err != nil {
		t.Fatalf("reply of %s (%s %s %s): %v", c.ID, c.State, c.Code, c.Message, err)
	}
	return &r
}

// containers is the deployment's containers by service.
func (a *appCloud) containers(t *testing.T, name string) map[string]container.Summary {
	t.Helper()
	cs, err := a.docker.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", "io.fleet-agent.owner="+a.owner), filters.Arg("label", "io.fleet-agent.deployment="+name))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]container.Summary{}
	for _, c := range cs {
		if _, dup := out[c.Labels["io.fleet-agent.service"]]; dup {
			t.Fatalf("two containers of service %s", c.Labels["io.fleet-agent.service"])
		}
		out[c.Labels["io.fleet-agent.service"]] = c
	}
	return out
}

// checkServices checks the reply's per-service statuses: db and web
// running and healthy on the images given, migrate exited 0; it returns
// their containers.
func checkServices(t *testing.T, r *fleetv1.Reply, rev int64, db, web string) map[string]string {
	t.Helper()
	st := r.GetStatus()
	if r.GetResult() != fleetv1.Reply_SUCCEEDED || st.GetPhase() != fleetv1.DeploymentStatus_RUNNING || st.GetRevision() != rev || len(st.GetServices()) != 3 {
		t.Fatalf("reply = %v, want SUCCEEDED, RUNNING at revision %d with 3 services", r, rev)
	}
	ids := map[string]string{}
	for _, want := range []struct {
		name, image string
		phase       fleetv1.DeploymentStatus_Phase
		health      fleetv1.HealthCheck_Status
	}{
		{"db", db, fleetv1.DeploymentStatus_RUNNING, fleetv1.HealthCheck_HEALTHY},
		{"migrate", db, fleetv1.DeploymentStatus_EXITED, fleetv1.HealthCheck_NONE},
		{"web", web, fleetv1.DeploymentStatus_RUNNING, fleetv1.HealthCheck_HEALTHY},
	} {
		s := serviceStatus(st, want.name)
		if s.GetPhase() != want.phase || s.GetHealth() != want.health || s.GetImage() != want.image || s.GetExitCode() != 0 || s.GetContainerId() == "" || s.GetImageDigest() == "" {
			t.Errorf("service %s = %v, want %v %v on %s, exit 0, with container and digest", want.name, s, want.phase, want.health, want.image)
		}
		ids[want.name] = s.GetContainerId()
	}
	return ids
}

// apiDeployment waits for the gateway's deployment name in the API at
// revision rev and phase (for gone, rev 0: then nil).
func (a *appCloud) apiDeployment(t *testing.T, name string, rev int64, phase string) *api.Deployment {
	t.Helper()
	var d *api.Deployment
	testenv.Eventually(t, fmt.Sprintf("the API's deployment %s at revision %d %s", name, rev, phase), func() bool {
		g := a.gateway(t, a.tenant, a.gw)
		if g == nil {
			return false
		}
		d = g.Deployments[name]
		if rev == 0 {
			return d == nil
		}
		return d != nil && d.Revision == rev && d.Phase == phase
	})
	return d
}

// checkAPIServices checks the per-service statuses of the gateway's
// deployment in the API against the containers of the reply (ids).
func checkAPIServices(t *testing.T, d *api.Deployment, ids map[string]string, web string) {
	t.Helper()
	want := []api.Service{
		{Name: "db", Phase: "RUNNING", Health: "healthy", ContainerID: ids["db"]},
		{Name: "migrate", Phase: "EXITED", ContainerID: ids["migrate"]},
		{Name: "web", Phase: "RUNNING", Health: "healthy", Image: web, ContainerID: ids["web"]},
	}
	if len(d.Services) != len(want) {
		t.Fatalf("API deployment %s services = %+v, want db, migrate, web", d.Name, d.Services)
	}
	for _, w := range want {
		i := slices.IndexFunc(d.Services, func(s api.Service) bool { return s.Name == w.Name })
		if i < 0 {
			t.Errorf("API deployment %s services = %+v, want %s", d.Name, d.Services, w.Name)
			continue
		}
		got := d.Services[i]
		if got.Phase != w.Phase || got.Health != w.Health || got.ContainerID != w.ContainerID ||
			got.ExitCode != 0 || got.Digest == "" || w.Image != "" && got.Image != w.Image {
			t.Errorf("API service %s = %+v, want %+v with a digest", w.Name, got, w)
		}
	}
}

// remove removes the deployment name with its volumes through the API and
// checks that nothing of it is left.
func (a *appCloud) remove(t *testing.T, name string) {
	t.Helper()
	vol := a.prefix + "-" + name + "-data"
	if _, err := a.docker.VolumeInspect(context.Background(), vol); err != nil {
		t.Fatalf("app volume %s before remove: %v", vol, err)
	}
	c := a.command(t, fmt.Sprintf(`"command": {"remove": {"name": %q, "removeVolumes": true}}`, name))
	if c.State != api.StateSucceeded {
		t.Fatalf("remove = %+v, want SUCCEEDED", c)
	}
	if cs := a.containers(t, name); len(cs) != 0 {
		t.Errorf("containers after remove = %+v, want none", cs)
	}
	if _, err := a.docker.VolumeInspect(context.Background(), vol); err == nil {
		t.Errorf("app volume %s still there after remove with removeVolumes", vol)
	}
	a.apiDeployment(t, name, 0, "")
}

// TestAppsThroughAPI deploys the three-service application (db with a
// health check, the one-shot migrate after it, web after db HEALTHY and
// migrate COMPLETED_SUCCESSFULLY) through cloud-sim's API to a real agent
// on Docker, first as a JSON DeploymentSpec with services, then from the
// equivalent Compose file; the reply the API returns and the gateway's
// deployment in the inventory carry every service's status; an update of
// web replaces web only; remove with removeVolumes leaves no container,
// volume or deployment behind. A Compose file with build is refused by
// the API naming services.web.build, and one binding a host path outside
// the agent's policy is refused by the agent naming the field and the path.
// On the embedded broker and on Mosquitto.
func TestAppsThroughAPI(t *testing.T) {
	for _, broker := range []string{"embedded", "mosquitto"} {
		t.Run(broker, func(t *testing.T) {
			a := newAppCloud(t, broker == "mosquitto")
			t.Run("spec", a.specLifecycle)
			t.Run("compose", a.composeLifecycle)
			t.Run("compose build refused", a.composeBuildRefused)
			t.Run("compose host bind outside policy", a.composeBindRefused)
		})
	}
}

func (a *appCloud) specLifecycle(t *testing.T) {
	r := replyOf(t, a.command(t, `"command": {"deploy": {"spec": `+a.appJSON(1, a.im.web1)+`}}`))
	r1 := checkServices(t, r, 1, a.im.db, a.im.web1)
	cs := a.containers(t, a.name)
	for svc, id := range r1 {
		if c, ok := cs[svc]; !ok || c.ID != id || c.Names[0] != fmt.Sprintf("/%s-%s-%s-r1", a.prefix, a.name, svc) || c.HostConfig.NetworkMode != "none" {
			t.Errorf("container of %s = %+v, want %s named %s-%s-%s-r1", svc, c, id, a.prefix, a.name, svc)
		}
	}
	d := a.apiDeployment(t, a.name, 1, "RUNNING")
	if d.Image != "" || d.ContainerID != "" {
		t.Errorf("API deployment = %+v, want no single image or container for 3 services", d)
	}
	checkAPIServices(t, d, r1, a.im.web1)

	// Revision 2 changes web's image: web replaced (START_FIRST), db and
	// migrate keep their containers.
	r = replyOf(t, a.command(t, `"command": {"deploy": {"spec": `+a.appJSON(2, a.im.web2)+`}}`))
	r2 := checkServices(t, r, 2, a.im.db, a.im.web2)
	if r2["db"] != r1["db"] || r2["migrate"] != r1["migrate"] || r2["web"] == r1["web"] {
		t.Errorf("containers r1 %v → r2 %v, want only web replaced", r1, r2)
	}
	cs = a.containers(t, a.name)
	if len(cs) != 3 || cs["web"].ID != r2["web"] || cs["web"].Names[0] != fmt.Sprintf("/%s-%s-web-r2", a.prefix, a.name) || cs["db"].Names[0] != fmt.Sprintf("/%s-%s-db-r1", a.prefix, a.name) {
		t.Errorf("containers after r2 = %+v, want db at r1, web at r2, the old web gone", cs)
	}
	checkAPIServices(t, a.apiDeployment(t, a.name, 2, "RUNNING"), r2, a.im.web2)
	a.remove(t, a.name)
}

// composeDeploy posts file as the Compose file of a deploy of name at
// revision rev, returning the batch or the API's refusal.
func (a *appCloud) composeDeploy(t *testing.T, name string, rev int64, file string) (*api.BatchView, error) {
	t.Helper()
	req := api.CommandRequest{Target: api.Target{Tenant: a.tenant, Gateways: []string{a.gw}}, Wait: "90s", SkipRegistryCheck: true,
		Command: []byte(fmt.Sprintf(`{"deploy": {"spec": {"name": %q, "revision": %d}}}`, name, rev)), Compose: file}
	var b api.BatchView
	err := a.api.Do(context.Background(), "POST", "/v1/commands", req, &b, nil)
	return &b, err
}

func (a *appCloud) composeLifecycle(t *testing.T) {
	name := a.name + "-c"
	b, err := a.composeDeploy(t, name, 1, composeApp(a.im, a.im.web1, ""))
	if err != nil || len(b.Commands) != 1 || !b.Commands[0].Final() {
		t.Fatalf("deploy of the Compose file = %+v, %v; want one final command", b, err)
	}
	ids := checkServices(t, replyOf(t, b.Commands[0]), 1, a.im.db, a.im.web1)
	checkAPIServices(t, a.apiDeployment(t, name, 1, "RUNNING"), ids, a.im.web1)
	if cs := a.containers(t, name); len(cs) != 3 || cs["web"].Names[0] != fmt.Sprintf("/%s-%s-web-r1", a.prefix, name) {
		t.Errorf("containers of the Compose file's application = %+v, want db, migrate, web at r1", cs)
	}
	a.remove(t, name)
}

func (a *appCloud) composeBuildRefused(t *testing.T) {
	name := a.name + "-b"
	web := "  web:\n    image: " + a.im.web1 + "\n"
	file := strings.Replace(composeApp(a.im, a.im.web1, ""), web, "  web:\n    build: .\n", 1)
	if file == composeApp(a.im, a.im.web1, "") {
		t.Fatal("the file has no web image to replace")
	}
	batches := a.batchCount(t)
	_, err := a.composeDeploy(t, name, 1, file)
	var apiErr *apiclient.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || apiErr.Body.Field != "compose" ||
		!slices.ContainsFunc(apiErr.Body.Errors, func(e string) bool { return strings.HasPrefix(e, "services.web.build") }) {
		t.Fatalf("deploy of a Compose file with build = %v, want 400 on compose naming services.web.build", err)
	}
	if n := a.batchCount(t); n != batches {
		t.Errorf("batches after the refusal = %d, want %d: nothing sent", n, batches)
	}
	if cs := a.containers(t, name); len(cs) != 0 {
		t.Errorf("containers after the refusal = %+v, want none", cs)
	}
}

func (a *appCloud) composeBindRefused(t *testing.T) {
	name := a.name + "-h"
	file := strings.Replace(composeApp(a.im, a.im.web1, ""), "  web:\n", "  web:\n    volumes: [\"/etc:/host-etc:ro\"]\n", 1)
	b, err := a.composeDeploy(t, name, 1, file)
	if err != nil || len(b.Commands) != 1 || !b.Commands[0].Final() {
		t.Fatalf("deploy of a Compose file binding /etc = %+v, %v; want one final command", b, err)
	}
	c := b.Commands[0]
	r := replyOf(t, c)
	const field = "deploy.spec.services.web.mounts[0].source"
	if c.Code != "POLICY_DENIED" || c.Field != field || !strings.Contains(c.Message, "/etc") ||
		r.GetCode() != fleetv1.Reply_POLICY_DENIED || r.GetField() != field || !strings.Contains(r.GetMessage(), "/etc") {
		t.Errorf("command = %s %s %s %q, want POLICY_DENIED on %s naming /etc", c.State, c.Code, c.Field, c.Message, field)
	}
	if cs := a.containers(t, name); len(cs) != 0 {
		t.Errorf("containers after the refusal = %+v, want none", cs)
	}
}
