package api

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
)

// TestDryRun: a dry run checks what a send or a rollout checks, names the
// field of what is wrong, and sends and stores nothing.
func TestDryRun(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	u, _ := url.Parse(reg.URL)
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(u.Host + "/team/web:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	c := newController(t, u.Host)
	for _, id := range []string{"gw-1", "gw-2", "gw-10"} {
		birth(c, "acme", id, 1, time.Now())
	}
	h := handlerOf(c)
	deploy := func(target, image, extra string) string {
		return `{"target": ` + target + `, "dryRun": true` + extra + `, "command": {"deploy": {"spec": {"name": "web", "revision": 1, "image": "` + image + `"}}}}`
	}
	rollout := func(image string) string {
		return `{"tenant": "acme", "targets": {"all": true}, "dryRun": true, "deployment": {"name": "web", "revision": 1, "image": "` + image + `"}}`
	}
	good, missing := u.Host+"/team/web:1", u.Host+"/team/web:2"
	tests := []struct {
		name, path, body string
		wantStatus       int
		wantCount        int
		wantCheck        bool
		wantField        string
	}{
		{"deploy", "/v1/commands", deploy(`{"tenant": "acme", "all": true}`, good, ""), http.StatusOK, 3, true, ""},
		{"listed", "/v1/commands", deploy(`{"tenant": "acme", "gateways": ["gw-2"]}`, good, ""), http.StatusOK, 1, true, ""},
		{"check skipped", "/v1/commands", deploy(`{"tenant": "acme", "all": true}`, missing, `, "skipRegistryCheck": true`), http.StatusOK, 3, false, ""},
		{"no such image", "/v1/commands", deploy(`{"tenant": "acme", "all": true}`, missing, ""), http.StatusUnprocessableEntity, 0, false, "command.deploy.spec.image"},
		{"no such gateway", "/v1/commands", deploy(`{"tenant": "acme", "gateways": ["gw-1", "gw-3"]}`, good, ""), http.StatusNotFound, 0, false, "target.gateways[1]"},
		{"no target", "/v1/commands", deploy(`{"tenant": "acme"}`, good, ""), http.StatusBadRequest, 0, false, "target"},
		{"no body", "/v1/commands", `{"target": {"tenant": "acme", "all": true}, "dryRun": true, "command": {}}`, http.StatusBadRequest, 0, false, "command"},
		{"rebirth", "/v1/commands", `{"target": {"tenant": "acme", "all": true}, "dryRun": true, "command": {"rebirth": {}}}`, http.StatusOK, 3, false, ""},
		{"rollout", "/v1/rollouts", rollout(good), http.StatusOK, 3, true, ""},
		{"rollout of no such image", "/v1/rollouts", rollout(missing), http.StatusUnprocessableEntity, 0, false, "deployment.image"},
		{"rollout without an image", "/v1/rollouts", rollout(""), http.StatusBadRequest, 0, false, "deployment.image"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got struct {
				DryRun
				Error
			}
			st := call(t, h, "POST", tt.path, tt.body, &got)
			if st != tt.wantStatus || got.Count != tt.wantCount || len(got.Gateways) != tt.wantCount || (got.Check != nil) != tt.wantCheck || got.Field != tt.wantField {
				t.Errorf("got %d %+v, want %d, %d gateways, check %v, field %q", st, got, tt.wantStatus, tt.wantCount, tt.wantCheck, tt.wantField)
			}
			if tt.wantCheck && !got.Check.OK {
				t.Errorf("check %+v, want ok", got.Check)
			}
		})
	}
	var batches, rollouts map[string][]any
	call(t, h, "GET", "/v1/batches", "", &batches)
	call(t, h, "GET", "/v1/rollouts", "", &rollouts)
	if len(batches["batches"]) != 0 || len(rollouts["rollouts"]) != 0 || len(c.Commands(dispatch.Filter{}, 0)) != 0 {
		t.Errorf("a dry run stored something: batches %v, rollouts %v", batches, rollouts)
	}
}
