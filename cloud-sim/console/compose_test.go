package console

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestDeployCompose: with a Compose file, the deploy page hands the API
// the file, its variables, and a deploy naming only the name and revision
// (the API translates); a refused file's list of refusals comes back.
func TestDeployCompose(t *testing.T) {
	refused := api.Error{Error: "compose: the Compose file cannot be deployed: …", Field: "compose", Code: "INVALID_ARGUMENT",
		Errors: []string{"services.web.build: not supported, push an image", "services.web.ulimits: not supported by the agent"}}
	tests := []struct {
		name       string
		apiStatus  int
		apiReply   any
		wantStatus int
		wantErrors []string
	}{
		{"check", http.StatusOK, api.DryRun{Tenant: "acme", Count: 1, Warnings: []string{"services.web.tty: ignored: …"}}, http.StatusOK, nil},
		{"refused", http.StatusBadRequest, refused, http.StatusBadRequest, refused.Errors},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := &commandsAPI{status: tt.apiStatus, reply: tt.apiReply}
			sessions := NewSessions(nil)
			c, err := New(Config{API: fake, APIHost: "127.0.0.1:8080", Token: "tok", Origins: api.NewOrigins([]string{"127.0.0.1:8080"}), Sessions: sessions})
			if err != nil {
				t.Fatal(err)
			}
			id, csrf := sessions.create()
			file := "services:\n  web: {image: web:${TAG}}\n"
			body, _ := json.Marshal(deployRequest{Target: api.Target{Tenant: "acme", All: true}, YAML: file, Compose: true, Name: "shop", Revision: 5,
				Env: map[string]string{"TAG": "1"}})
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/deploy/check", strings.NewReader(string(body)))
			r.AddCookie(&http.Cookie{Name: CookieName, Value: id})
			r.Header.Set(CSRFHeader, csrf)
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != tt.wantStatus {
				t.Fatalf("status = %d (%s), want %d", w.Code, w.Body, tt.wantStatus)
			}
			got := fake.got
			if got == nil || got.Compose != file || got.ComposeEnv["TAG"] != "1" || !got.DryRun {
				t.Fatalf("API request %+v, want the file, its variables, a dry run", got)
			}
			var cmd fleetv1.Command
			if err := protojson.Unmarshal(got.Command, &cmd); err != nil {
				t.Fatal(err)
			}
			if s := cmd.GetDeploy().GetSpec(); s.GetName() != "shop" || s.GetRevision() != 5 || s.GetImage() != "" || len(s.GetServices()) != 0 {
				t.Errorf("command %s, want a deploy of name shop, revision 5, nothing else", got.Command)
			}
			var e deployError
			_ = json.Unmarshal(w.Body.Bytes(), &e)
			if strings.Join(e.Errors, "\n") != strings.Join(tt.wantErrors, "\n") {
				t.Errorf("errors %q, want %q", e.Errors, tt.wantErrors)
			}
		})
	}
}

// TestGatewayPageServices: an application's services are listed under
// its deployment with their phase, health, digest and exit; a single
// container's one service (named after the deployment) is not repeated.
func TestGatewayPageServices(t *testing.T) {
	now := time.Now()
	g := sampleGateway(now)
	g.Deployments["web"].Services = []api.Service{{Name: "web", Phase: "FAILED"}}
	g.Deployments["shop"] = &api.Deployment{Name: "shop", Revision: 3, Phase: "STARTING", Health: "unhealthy", UpdatedAt: now, Services: []api.Service{
		{Name: "db", Phase: "RUNNING", Health: "healthy", Image: "postgres:16", Digest: "sha256:feedfacefeedfacefeedface", ContainerID: "c0ffee0123456789"},
		{Name: "migrate", Phase: "EXITED", ExitCode: 3, Code: "INTERNAL", Message: "migration failed"},
	}}
	f := &cannedAPI{queries: map[string]string{}, replies: map[string]any{"/v1/gateways/acme/gw-2": g}}
	c := newFleetConsole(t, f)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "http://console.test/gateways/acme/gw-2", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, body)
	}
	for _, w := range []string{`data-service="db" data-of="shop"`, `data-service="migrate" data-of="shop"`, "postgres:16", "sha256:feedfacefeed", "c0ffee012345",
		"exit 3", "migration failed", "(service of shop)"} {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
	if strings.Contains(body, `data-of="web"`) {
		t.Errorf("a single container's service is listed again")
	}
}

// TestRolloutDeploymentOfApplication: a rollout of an application shows
// each service's image where a single container's image is shown.
func TestRolloutDeploymentOfApplication(t *testing.T) {
	d := deploymentOf(json.RawMessage(`{"name":"shop","revision":"3","services":{"web":{"image":"web:1"},"db":{"image":"postgres:16"}}}`))
	if d.String() != "shop@3" || d.Image != "db: postgres:16, web: web:1" {
		t.Errorf("got %s %q, want shop@3 with each service's image", d, d.Image)
	}
	if d := deploymentOf(json.RawMessage(`{"name":"web","revision":"2","image":"web:2"}`)); d.Image != "web:2" {
		t.Errorf("single: got %q", d.Image)
	}
}
