package console

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// commandsAPI answers POST /v1/commands with status and reply, and keeps the
// request it got.
type commandsAPI struct {
	status int
	reply  any
	got    *api.CommandRequest
}

func (f *commandsAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req api.CommandRequest
	if r.Method != http.MethodPost || r.URL.Path != "/v1/commands" || json.NewDecoder(r.Body).Decode(&req) != nil {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
		return
	}
	f.got = &req
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	_ = json.NewEncoder(w).Encode(f.reply)
}

const goodYAML = "name: web\nrevision: 1\nimage: registry.example.com/web:1\nports:\n  - containerPort: 8080\n"

// TestDeployPost: /deploy/check and /deploy/send need the session's CSRF
// token, convert the YAML once (a YAML error names its line), call the
// API with dryRun for a check only, and point an API error naming a
// field of the spec at its line.
func TestDeployPost(t *testing.T) {
	imageErr := api.Error{Error: "registry.example.com has no image web:1", Field: "command.deploy.spec.image", Code: "NOT_FOUND"}
	for _, tc := range []struct {
		name, path, yaml string
		noCSRF           bool
		apiStatus        int
		apiReply         any
		wantStatus       int
		wantCalled       bool
		wantDryRun       bool
		wantField        string
		wantLine         int
	}{
		{name: "no CSRF token", path: "/deploy/send", yaml: goodYAML, noCSRF: true, wantStatus: http.StatusForbidden, wantField: CSRFHeader},
		{name: "YAML syntax", path: "/deploy/check", yaml: "name: web\nimage: x: y\n", wantStatus: http.StatusBadRequest, wantField: specField, wantLine: 2},
		{name: "unknown field", path: "/deploy/check", yaml: "name: web\nrevision: 1\nimagee: x:1\n", wantStatus: http.StatusBadRequest, wantField: specField + ".imagee", wantLine: 3},
		{name: "the API names the image", path: "/deploy/check", yaml: goodYAML, apiStatus: http.StatusUnprocessableEntity, apiReply: imageErr,
			wantStatus: http.StatusUnprocessableEntity, wantCalled: true, wantDryRun: true, wantField: imageErr.Field, wantLine: 3},
		{name: "the API names the target", path: "/deploy/send", yaml: goodYAML, apiStatus: http.StatusNotFound, apiReply: api.Error{Error: "selects no gateway", Field: "target", Code: "NOT_FOUND"},
			wantStatus: http.StatusNotFound, wantCalled: true, wantField: "target"},
		{name: "check", path: "/deploy/check", yaml: goodYAML, apiStatus: http.StatusOK, apiReply: api.DryRun{Tenant: "acme", Count: 2},
			wantStatus: http.StatusOK, wantCalled: true, wantDryRun: true},
		{name: "send", path: "/deploy/send", yaml: goodYAML, apiStatus: http.StatusCreated, apiReply: api.BatchView{Batch: api.Batch{ID: "b-1"}},
			wantStatus: http.StatusCreated, wantCalled: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &commandsAPI{status: tc.apiStatus, reply: tc.apiReply}
			sessions := NewSessions(nil)
			c, err := New(Config{API: fake, APIHost: "127.0.0.1:8080", Token: "tok", Origins: api.NewOrigins([]string{"127.0.0.1:8080"}), Sessions: sessions})
			if err != nil {
				t.Fatal(err)
			}
			id, csrf := sessions.create()
			body, _ := json.Marshal(deployRequest{Target: api.Target{Tenant: "acme", All: true}, YAML: tc.yaml})
			r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080"+tc.path, strings.NewReader(string(body)))
			r.AddCookie(&http.Cookie{Name: CookieName, Value: id})
			if !tc.noCSRF {
				r.Header.Set(CSRFHeader, csrf)
			}
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != tc.wantStatus {
				t.Fatalf("status = %d (%s), want %d", w.Code, w.Body, tc.wantStatus)
			}
			if (fake.got != nil) != tc.wantCalled {
				t.Fatalf("API called = %v, want %v", fake.got != nil, tc.wantCalled)
			}
			if fake.got != nil {
				checkForwarded(t, fake.got, tc.wantDryRun)
			}
			var e deployError
			_ = json.Unmarshal(w.Body.Bytes(), &e)
			if e.Field != tc.wantField || e.Line != tc.wantLine {
				t.Errorf("error field %q line %d, want %q line %d (%s)", e.Field, e.Line, tc.wantField, tc.wantLine, w.Body)
			}
		})
	}
}

// checkForwarded checks the request the console made of the API: the
// page's target, dryRun for a check, and the YAML's spec as protojson.
func checkForwarded(t *testing.T, got *api.CommandRequest, dryRun bool) {
	t.Helper()
	if got.DryRun != dryRun || got.Target.Tenant != "acme" || !got.Target.All {
		t.Errorf("API request dryRun %v target %+v, want dryRun %v to all of acme", got.DryRun, got.Target, dryRun)
	}
	var cmd fleetv1.Command
	if err := protojson.Unmarshal(got.Command, &cmd); err != nil {
		t.Fatalf("command %s: %v", got.Command, err)
	}
	spec := cmd.GetDeploy().GetSpec()
	if spec.GetImage() != "registry.example.com/web:1" || len(spec.GetPorts()) != 1 || spec.GetPorts()[0].GetContainerPort() != 8080 {
		t.Errorf("command sent = %s", got.Command)
	}
}
