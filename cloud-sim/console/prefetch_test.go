package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// TestPrefetchForm: the form's "prefetch first" box asks for a prefetch
// phase with the defaults; unticked, none.
func TestPrefetchForm(t *testing.T) {
	for _, tt := range []struct {
		form url.Values
		want bool
	}{
		{url.Values{"tenant": {"sim"}, "strategy.prefetch": {"on"}}, true},
		{url.Values{"tenant": {"sim"}}, false},
	} {
		spec, err := specFromForm(tt.form)
		if err != nil {
			t.Fatal(err)
		}
		if got := spec.Strategy.Prefetch != nil; got != tt.want || got && *spec.Strategy.Prefetch != (api.Prefetch{}) {
			t.Errorf("%v: prefetch %+v, want %v", tt.form, spec.Strategy.Prefetch, tt.want)
		}
	}
}

// TestRolloutPagePrefetch: the rollout page shows the prefetch phase's
// counts, and nothing of it for a rollout without one.
func TestRolloutPagePrefetch(t *testing.T) {
	v := &api.RolloutView{Rollout: api.Rollout{ID: "r-1", State: "RUNNING", Phase: api.PhasePrefetch, Spec: api.RolloutSpec{Tenant: "acme"}},
		Total: 20, Counts: map[string]int{"QUEUED": 20}, Active: true,
		PrefetchCounts: map[string]int{api.PrefetchSucceeded: 12, api.PrefetchInProgress: 5, api.PrefetchFailed: 1, api.PrefetchQueued: 2}}
	plain := &api.RolloutView{Rollout: api.Rollout{ID: "r-2", State: "RUNNING", Phase: api.PhaseBatches, Spec: api.RolloutSpec{Tenant: "acme"}},
		Total: 20, Counts: map[string]int{"QUEUED": 20}, Active: true}
	f := &cannedAPI{queries: map[string]string{}, replies: map[string]any{"/v1/rollouts/r-1": v, "/v1/rollouts/r-2": plain}}
	c := newFleetConsole(t, f)
	body := get(t, c, "/rollouts/r-1")
	for _, want := range []string{`id="rollout-prefetch"`, "12 of 20 hold the image · 5 in progress · 2 queued · 1 failed", "prefetching"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if body := get(t, c, "/rollouts/r-2"); strings.Contains(body, "rollout-prefetch") {
		t.Errorf("a rollout without prefetch shows it")
	}
}

func get(t *testing.T, c *Console, path string) string {
	t.Helper()
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest("GET", "http://console.test"+path, nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", path, rec.Code, rec.Body)
	}
	return rec.Body.String()
}
