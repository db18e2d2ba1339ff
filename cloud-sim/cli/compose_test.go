package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

const composeFile = `name: shop
services:
  db:
    image: postgres:16
    env_file: [db.env]
    healthcheck: {test: ["CMD", "pg_isready"]}
  web:
    image: registry.example.com/shop/web:${TAG}
    depends_on: {db: {condition: service_healthy}}
    tty: true
`

// TestDeployCompose: `cloud-sim deploy -f docker-compose.yml --revision N`
// translates the file here (env_file read beside it, ${VAR} from --env
// only) and sends a deploy of the application; a refused file sends
// nothing and lists every refused field.
func TestDeployCompose(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "docker-compose.yml")
	os.WriteFile(file, []byte(composeFile), 0o600)
	os.WriteFile(filepath.Join(dir, "db.env"), []byte("POSTGRES_PASSWORD=pw\n"), 0o600)
	t.Setenv("TAG", "from-the-cli-environment") // never read

	rec := &recordAPI{}
	code, stdout, stderr := run(t, rec, "deploy", "--tenant", "acme", "--all", "-f", file, "--revision", "3", "--env", "TAG=1.4")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	var req struct {
		Command json.RawMessage `json:"command"`
	}
	if err := json.Unmarshal(rec.body, &req); err != nil {
		t.Fatalf("%v: %s", err, rec.body)
	}
	cmd := new(fleetv1.Command)
	if err := protojson.Unmarshal(req.Command, cmd); err != nil {
		t.Fatal(err)
	}
	spec := cmd.GetDeploy().GetSpec()
	if spec.GetName() != "shop" || spec.GetRevision() != 3 || spec.GetServices()["web"].GetImage() != "registry.example.com/shop/web:1.4" ||
		spec.GetServices()["db"].GetEnv()["POSTGRES_PASSWORD"] != "pw" ||
		spec.GetServices()["web"].GetDependsOn()[0].GetCondition() != fleetv1.Dependency_HEALTHY {
		t.Errorf("sent %v", spec)
	}
	if !strings.Contains(stderr, "warning: "+file+": services.web.tty: ignored") {
		t.Errorf("stderr %q, want the tty warning", stderr)
	}

	tests := []struct {
		name, file string
		args       []string
		wantCode   int
		want       []string // in stderr
	}{
		{"refused", "services:\n  web:\n    build: .\n    secrets: [k]\nsecrets: {k: {file: ./k}}\n", []string{"--revision", "1", "--name", "web"}, ExitFailed,
			[]string{"cannot be deployed", "services.web.build: not supported, push an image", "services.web.secrets: ", "\n  secrets: "}},
		{"no revision", composeFile, nil, ExitFailed, []string{"revision: the deployment needs a revision"}},
		{"compose flags with a spec", "name: web\nrevision: 1\nimage: web:1\n", []string{"--revision", "2"}, ExitUsage, []string{"go with a Compose file"}},
		{"bad --env", composeFile, []string{"--revision", "1", "--env", "NOEQUALS"}, ExitUsage, []string{`--env "NOEQUALS"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(dir, "c.yml")
			os.WriteFile(f, []byte(tt.file), 0o600)
			rec := &recordAPI{}
			code, _, stderr := run(t, rec, append([]string{"deploy", "--gateway", "acme/gw-1", "-f", f}, tt.args...)...)
			if code != tt.wantCode || rec.body != nil {
				t.Errorf("exit %d, sent %s; want exit %d, nothing sent", code, rec.body, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q, want %q", stderr, w)
				}
			}
		})
	}
}

// rolloutAPI records the body of POST /v1/rollouts.
type rolloutAPI struct{ body []byte }

func (r *rolloutAPI) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.body, _ = io.ReadAll(req.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	w.Write([]byte(`{"id":"r-1","total":2}`))
}

// TestRolloutCreateCompose: `rollout create -f rollout.yaml --compose
// FILE` sends the file's translation as the rollout's deployment, with the
// rollout's name and revision.
func TestRolloutCreateCompose(t *testing.T) {
	dir := t.TempDir()
	rf, cf := filepath.Join(dir, "rollout.yaml"), filepath.Join(dir, "compose.yaml")
	os.WriteFile(rf, []byte("tenant: acme\ntargets: {all: true}\ndeployment: {name: shop, revision: 7}\nstrategy: {batchSize: 1}\n"), 0o600)
	os.WriteFile(cf, []byte("services:\n  web: {image: web:1}\n"), 0o600)
	rec := &rolloutAPI{}
	code, stdout, stderr := run(t, rec, "rollout", "create", "-f", rf, "--compose", cf)
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	var req struct {
		Deployment json.RawMessage `json:"deployment"`
	}
	json.Unmarshal(rec.body, &req)
	spec := new(fleetv1.DeploymentSpec)
	if err := protojson.Unmarshal(req.Deployment, spec); err != nil {
		t.Fatalf("%v: %s", err, rec.body)
	}
	if spec.GetName() != "shop" || spec.GetRevision() != 7 || spec.GetServices()["web"].GetImage() != "web:1" {
		t.Errorf("deployment %v, want shop revision 7 with service web", spec)
	}
}

// TestGatewayShowsServices: `cloud-sim gateway` lists an application's
// services under its deployment.
func TestGatewayShowsServices(t *testing.T) {
	api := fakeAPI{"GET /v1/gateways/acme/gw-1": {body: `{"tenant":"acme","id":"gw-1","online":true,"deployments":{
		"shop":{"name":"shop","revision":3,"phase":"STARTING","services":[
			{"name":"db","phase":"RUNNING","health":"healthy","image":"postgres:16","digest":"sha256:aa"},
			{"name":"migrate","phase":"EXITED","exitCode":2,"message":"failed"}]},
		"web":{"name":"web","revision":1,"phase":"RUNNING","image":"web:1","services":[{"name":"web","phase":"RUNNING"}]}}}`}}
	code, stdout, stderr := run(t, api, "gateway", "acme/gw-1")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, w := range []string{"↳ db", "postgres:16@sha256:aa", "healthy", "↳ migrate", "exit 2 failed"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("output lacks %q:\n%s", w, stdout)
		}
	}
	if strings.Contains(stdout, "↳ web") {
		t.Errorf("a single container's service is listed again:\n%s", stdout)
	}
}
