package api

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// composeApp is a two-service Compose file whose images are in the
// registry at host (web's tag given).
func composeApp(host, webTag string) string {
	return `services:
  db:
    image: ` + host + `/team/db:1
    healthcheck: {test: ["CMD", "true"]}
  web:
    image: ` + host + `/team/web:${TAG:-` + webTag + `}
    depends_on: {db: {condition: service_healthy}}
    expose: ["80"]
`
}

// TestComposeCommand: POST /v1/commands with a Compose file translates it
// on the server, checks every service's image against its registry from
// the cloud, and refuses a file with all its refused fields at once.
func TestComposeCommand(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	u, _ := url.Parse(reg.URL)
	for _, r := range []string{"/team/web:1", "/team/db:1"} {
		img, err := random.Image(64, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(u.Host + r)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	c := newController(t, u.Host)
	for _, id := range []string{"gw-1", "gw-2"} {
		birth(c, "acme", id, 1, time.Now())
	}
	h := handlerOf(c)
	body := func(command, file string, env map[string]string, dry bool) string {
		b, _ := json.Marshal(map[string]any{"target": map[string]any{"tenant": "acme", "all": true}, "dryRun": dry,
			"command": json.RawMessage(command), "compose": file, "composeEnv": env})
		return strings.Replace(string(b), `"command":null,`, "", 1)
	}
	deploy := `{"deploy": {"spec": {"name": "shop", "revision": 4}}}`
	tests := []struct {
		name, body   string
		wantStatus   int
		wantChecks   int
		wantField    string
		wantErrors   []string // among the refusals
		wantWarnings []string
	}{
		{"deploy", body(deploy, composeApp(u.Host, "1"), nil, true), http.StatusOK, 2, "", nil,
			[]string{"services.web.expose: ignored: services on a network reach each other's ports without it"}},
		{"prefetch", body(`{"prefetch": {"spec": {"name": "shop", "revision": 4}}}`, composeApp(u.Host, "1"), nil, true), http.StatusOK, 2, "", nil, nil},
		{"a service's image missing", body(deploy, composeApp(u.Host, "2"), nil, true), http.StatusUnprocessableEntity, 0, "command.deploy.spec.services.web.image", nil, nil},
		{"interpolated from composeEnv", body(deploy, composeApp(u.Host, "2"), map[string]string{"TAG": "1"}, true), http.StatusOK, 2, "", nil, nil},
		{"refused fields, all of them", body(deploy, "services:\n  web:\n    build: .\n    ulimits: {nofile: 10}\n    read_only: true\n", nil, true),
			http.StatusBadRequest, 0, "compose", []string{"services.web.build: not supported, push an image", "services.web.read_only: not supported by the protocol",
				"services.web.ulimits: not supported by the agent"}, nil},
		{"no revision", body(`{"deploy": {"spec": {"name": "shop"}}}`, composeApp(u.Host, "1"), nil, true), http.StatusBadRequest, 0, "compose", []string{"revision: "}, nil},
		{"spec field beside the file", body(`{"deploy": {"spec": {"name": "shop", "revision": 4, "image": "x:1"}}}`, composeApp(u.Host, "1"), nil, true),
			http.StatusBadRequest, 0, "command.deploy.spec.image", nil, nil},
		{"not a deploy", body(`{"rebirth": {}}`, composeApp(u.Host, "1"), nil, true), http.StatusBadRequest, 0, "compose", nil, nil},
		{"env_file on the server", body(deploy, "services:\n  web: {image: x:1, env_file: [.env]}\n", nil, true), http.StatusBadRequest, 0, "compose",
			[]string{"services.web.env_file[0]: "}, nil},
		{"rollout", `{"tenant": "acme", "targets": {"all": true}, "dryRun": true, "deployment": {"name": "shop", "revision": 4}, "compose": ` +
			jsonString(composeApp(u.Host, "1")) + `}`, http.StatusOK, 2, "", nil, nil},
		{"rollout refused", `{"tenant": "acme", "targets": {"all": true}, "dryRun": true, "deployment": {"revision": 4}, "compose": "services: {web: {build: .}}"}`,
			http.StatusBadRequest, 0, "compose", []string{"name: ", "services.web.build: not supported, push an image"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := "/v1/commands"
			if strings.HasPrefix(tt.name, "rollout") {
				path = "/v1/rollouts"
			}
			var got struct {
				DryRun
				Error
			}
			st := call(t, h, "POST", path, tt.body, &got)
			if st != tt.wantStatus || len(got.Checks) != tt.wantChecks || got.Field != tt.wantField {
				t.Fatalf("got %d %+v, want %d, %d checks, field %q", st, got, tt.wantStatus, tt.wantChecks, tt.wantField)
			}
			for _, ch := range got.Checks {
				if !ch.OK {
					t.Errorf("check %+v, want ok", ch)
				}
			}
			for _, w := range tt.wantErrors {
				if !slices.ContainsFunc(got.Errors, func(e string) bool { return strings.HasPrefix(e, w) }) {
					t.Errorf("errors %q, want one starting %q", got.Errors, w)
				}
			}
			if tt.wantWarnings != nil && !slices.Equal(got.Warnings, tt.wantWarnings) {
				t.Errorf("warnings %q, want %q", got.Warnings, tt.wantWarnings)
			}
		})
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestComposeCommandSpec: the translated spec replaces the command's,
// keeping its name and revision; a command without a body is a deploy.
func TestComposeCommandSpec(t *testing.T) {
	file := "name: fromfile\nservices:\n  web: {image: reg.example.com/web:1}\n"
	tests := []struct {
		name     string
		cmd      *fleetv1.Command
		wantName string
	}{
		{"deploy named", &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: &fleetv1.DeploymentSpec{Name: "shop", Revision: 2}}}}, "shop"},
		{"prefetch, the file's name", &fleetv1.Command{Body: &fleetv1.Command_Prefetch{Prefetch: &fleetv1.Prefetch{Spec: &fleetv1.DeploymentSpec{Revision: 2}}}}, "fromfile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := composeCommand(context.Background(), tt.cmd, file, nil); err != nil {
				t.Fatal(err)
			}
			spec := tt.cmd.GetDeploy().GetSpec()
			if spec == nil {
				spec = tt.cmd.GetPrefetch().GetSpec()
			}
			if spec.GetName() != tt.wantName || spec.GetRevision() != 2 || spec.GetServices()["web"].GetImage() != "reg.example.com/web:1" ||
				!slices.Equal(spec.GetServices()["web"].GetNetworks(), []string{"default"}) || len(spec.GetNetworks()) != 1 {
				t.Errorf("spec %v, want %s revision 2 with service web on the network default", spec, tt.wantName)
			}
		})
	}
	cmd := new(fleetv1.Command)
	if _, err := composeCommand(context.Background(), cmd, file, nil); err == nil || !strings.Contains(err.Error(), "revision") {
		t.Errorf("no body, no revision: got %v, want the revision refused", err)
	}
	if cmd.GetDeploy() == nil {
		t.Errorf("no body: got %v, want a deploy", cmd)
	}
}

// TestDeploymentServices: a gateway's deployment view carries the
// per-service statuses of an application as the gateway reported them.
func TestDeploymentServices(t *testing.T) {
	c := newController(t)
	birth(c, "acme", "gw-1", 1, time.Now())
	c.Ingest(mqttclient.Received{Topic: topic.Topic{Kind: topic.Status, Tenant: "acme", Gateway: "gw-1", Deployment: "shop"}, At: time.Now(),
		Message: &fleetv1.DeploymentStatus{Revision: 2, Phase: fleetv1.DeploymentStatus_RUNNING, Services: []*fleetv1.ServiceStatus{
			{Name: "db", Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_HEALTHY, Image: "postgres:16", ImageDigest: "sha256:aa"},
			{Name: "migrate", Phase: fleetv1.DeploymentStatus_EXITED, ExitCode: 0},
		}}})
	var got struct {
		Deployments map[string]*Deployment `json:"deployments"`
	}
	if st := call(t, handlerOf(c), "GET", "/v1/gateways/acme/gw-1/deployments", "", &got); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	want := []Service{{Name: "db", Phase: "RUNNING", Health: "healthy", Image: "postgres:16", Digest: "sha256:aa"}, {Name: "migrate", Phase: "EXITED"}}
	if d := got.Deployments["shop"]; d == nil || !slices.Equal(d.Services, want) {
		t.Errorf("deployment %+v, want services %+v", d, want)
	}
}
