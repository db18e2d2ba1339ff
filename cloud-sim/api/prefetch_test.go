package api

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/fleet-agent/fleet/cloud-sim/rollout"
)

// TestRolloutSpecPrefetch: strategy.prefetch is true, false or an object,
// read the same from YAML (CLI, console) as from JSON (the API), and
// mapped to the domain's prefetch phase.
func TestRolloutSpecPrefetch(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		want    *rollout.Prefetch
		wantErr string
	}{
		{"absent", `strategy: {batchSize: 10}`, nil, ""},
		{"true", `strategy: {prefetch: true}`, &rollout.Prefetch{}, ""},
		{"false", `strategy: {prefetch: false, batchSize: 10}`, nil, ""},
		{"object", "strategy:\n  prefetch: {minPercent: 90, timeout: 30m}", &rollout.Prefetch{MinPercent: 90, Timeout: rollout.Duration(30 * time.Minute)}, ""},
		{"JSON flow", `strategy: {"prefetch": {"minPercent": 50}}`, &rollout.Prefetch{MinPercent: 50}, ""},
		{"unknown field", `strategy: {prefetch: {minPercnt: 90}}`, nil, `unknown field "minPercnt"`},
		{"not a duration", `strategy: {prefetch: {timeout: soon}}`, nil, "not a duration"},
		{"unknown strategy field", `strategy: {prefetch: true, bachSize: 3}`, nil, `unknown field "bachSize"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseRolloutSpec([]byte("tenant: acme\n" + tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := spec.domain().Strategy.Prefetch
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Errorf("prefetch %+v, want %+v", got, tt.want)
			}
			if back := rolloutSpecOf(spec.domain()).Strategy.Prefetch; (back == nil) != (tt.want == nil) {
				t.Errorf("mapped back: %+v", back)
			}
		})
	}
}

// TestPrefetchChecked: a prefetch command is checked as a deploy is (the
// registry check of its image, naming command.prefetch.spec.image), and
// a rollout's prefetch settings are validated naming the field.
func TestPrefetchChecked(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	u, _ := url.Parse(reg.URL)
	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(u.Host + "/team/web:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	c := newController(t, u.Host)
	for _, id := range []string{"gw-1", "gw-2"} {
		birth(c, "acme", id, 1, time.Now())
	}
	h := handlerOf(c)
	prefetch := func(image string) string {
		return `{"target": {"tenant": "acme", "all": true}, "dryRun": true, "command": {"prefetch": {"spec": {"name": "web", "revision": 1, "image": "` + image + `"}}}}`
	}
	rollout := func(strategy string) string {
		return `{"tenant": "acme", "targets": {"all": true}, "dryRun": true, "skipRegistryCheck": true, "strategy": ` + strategy +
			`, "deployment": {"name": "web", "revision": 1, "image": "x/web:1"}}`
	}
	tests := []struct {
		name, path, body string
		wantStatus       int
		wantCount        int
		wantField        string
	}{
		{"prefetch", "/v1/commands", prefetch(u.Host + "/team/web:1"), http.StatusOK, 2, ""},
		{"prefetch of no such image", "/v1/commands", prefetch(u.Host + "/team/web:2"), http.StatusUnprocessableEntity, 0, "command.prefetch.spec.image"},
		{"prefetch without a spec field known", "/v1/commands", `{"target": {"tenant": "acme", "all": true}, "dryRun": true, "command": {"prefetch": {"spec": {"nme": "web"}}}}`,
			http.StatusBadRequest, 0, "command"},
		{"rollout with prefetch", "/v1/rollouts", rollout(`{"prefetch": true}`), http.StatusOK, 2, ""},
		{"rollout with a bad minimum", "/v1/rollouts", rollout(`{"prefetch": {"minPercent": 101}}`), http.StatusBadRequest, 0, "strategy.prefetch.minPercent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got struct {
				DryRun
				Error
			}
			st := call(t, h, "POST", tt.path, tt.body, &got)
			if st != tt.wantStatus || got.Count != tt.wantCount || got.Field != tt.wantField {
				t.Errorf("got %d %+v, want %d, %d gateways, field %q", st, got, tt.wantStatus, tt.wantCount, tt.wantField)
			}
		})
	}
}
