package console

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

func TestSpecFromForm(t *testing.T) {
	tests := []struct {
		name  string
		form  url.Values
		want  api.RolloutSpec
		field string // the field an error names
	}{
		{name: "the form",
			form: url.Values{"mode": {"form"}, "name": {" web 1.5 "}, "tenant": {"acme"}, "targets.selector": {"site=berlin"},
				"targets.groups": {"berlin, munich"}, "targets.gateways": {""}, "targets.includeNew": {"on"},
				"deployment": {"name: web\nrevision: 5\nimage: quay.io/acme/web:1.5\n"}, "skipRegistryCheck": {"on"},
				"strategy.canary.count": {"2"}, "strategy.canary.soak": {"10m"}, "strategy.batchPercent": {"10"},
				"strategy.ratePerMinute": {"600"}, "strategy.maxInFlight": {"50"}, "strategy.gatewayTimeout": {""},
				"abort.thresholdPercent": {"5"}, "abort.minExecuted": {"20"}, "abort.failureKinds": {"FAILED", "TIMED_OUT"}, "abort.rollback": {"on"}},
			want: api.RolloutSpec{Name: "web 1.5", Tenant: "acme",
				Targets:    api.RolloutTargets{Selector: "site=berlin", Groups: []string{"berlin", "munich"}, IncludeNew: true},
				Deployment: json.RawMessage(`{"image":"quay.io/acme/web:1.5","name":"web","revision":5}`), SkipRegistryCheck: true,
				Strategy: api.Strategy{Canary: &api.Canary{Count: 2, Soak: api.Duration(10 * time.Minute)}, BatchPercent: 10,
					RatePerMinute: 600, MaxInFlight: 50},
				Abort: api.AbortCriteria{FailureKinds: []string{"FAILED", "TIMED_OUT"}, ThresholdPercent: 5, MinExecuted: 20, Rollback: true}}},
		{name: "no canary, all gateways",
			form: url.Values{"tenant": {"sim"}, "targets.all": {"on"}, "targets.gateways": {"gw-1 gw-2\ngw-3"}, "strategy.batchSize": {"3"}},
			want: api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true, Gateways: []string{"gw-1", "gw-2", "gw-3"}},
				Strategy: api.Strategy{BatchSize: 3}}},
		{name: "a soak without a count leaves the count to the API",
			form: url.Values{"tenant": {"sim"}, "strategy.canary.soak": {"1m"}},
			want: api.RolloutSpec{Tenant: "sim", Strategy: api.Strategy{Canary: &api.Canary{Soak: api.Duration(time.Minute)}}}},
		{name: "not a number", form: url.Values{"strategy.maxInFlight": {"lots"}}, field: "strategy.maxInFlight"},
		{name: "not a duration", form: url.Values{"strategy.canary.soak": {"soon"}}, field: "strategy.canary.soak"},
		{name: "the first error wins", form: url.Values{"strategy.batchSize": {"x"}, "abort.minExecuted": {"y"}}, field: "strategy.batchSize"},
		{name: "deployment not YAML", form: url.Values{"deployment": {"name: [web"}}, field: "deployment"},
		{name: "the whole rollout as YAML",
			form: url.Values{"mode": {"yaml"}, "tenant": {"ignored"}, "yaml": {"tenant: sim\ntargets: {all: true}\ndeployment: {name: web, revision: 2, image: x}\nstrategy: {ratePerMinute: 60}\n"}},
			want: api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true},
				Deployment: json.RawMessage(`{"image":"x","name":"web","revision":2}`), Strategy: api.Strategy{RatePerMinute: 60}}},
		{name: "YAML with an unknown field", form: url.Values{"mode": {"yaml"}, "yaml": {"tenant: sim\nstrategy: {rate: 60}\n"}}, field: "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := specFromForm(tt.form)
			if tt.field != "" {
				if f := errdefs.Field(err); f != tt.field {
					t.Fatalf("error %v names %q, want %q", err, f, tt.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("spec (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRolloutTemplatesParse(t *testing.T) {
	pages, err := parsePages()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"rollouts", "rollout", "rollout_new"} {
		if _, ok := pages[name]; !ok {
			t.Errorf("no page %s", name)
		}
	}
}

func TestDeploymentOf(t *testing.T) {
	for _, raw := range []string{`{"name":"web","revision":"5","image":"x"}`, `{"name":"web","revision":5,"image":"x"}`} {
		if got := deploymentOf(json.RawMessage(raw)).String(); got != "web@5" {
			t.Errorf("%s: %q", raw, got)
		}
	}
	if got := deploymentOf(nil).String(); !strings.HasPrefix(got, "@") {
		t.Errorf("empty: %q", got)
	}
}

func TestSpecYAMLReadsBack(t *testing.T) {
	spec := api.RolloutSpec{Name: "web 1.5", Tenant: "acme", Targets: api.RolloutTargets{Selector: "site=berlin", IncludeNew: true},
		Deployment: json.RawMessage(`{"name":"web","revision":"5","image":"quay.io/acme/web:1.5"}`),
		Strategy:   api.Strategy{Canary: &api.Canary{Count: 5, Soak: api.Duration(10 * time.Minute)}, BatchPercent: 10},
		Abort:      api.AbortCriteria{FailureKinds: []string{"FAILED"}, ThresholdPercent: 5, Rollback: true}}
	back, err := api.ParseRolloutSpec([]byte(specYAML(spec)))
	if err != nil {
		t.Fatal(err)
	}
	back.Deployment, spec.Deployment = nil, nil // key order differs
	if diff := cmp.Diff(spec, back); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
}

// TestRolloutCreate: the console's POST /rollouts/create needs the
// session's CSRF token, sends the spec it built to the API and passes the
// API's reply, or its error with the field, back.
func TestRolloutCreate(t *testing.T) {
	var got []api.RolloutSpec
	fakeAPI := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var spec api.RolloutSpec
		if r.Method != http.MethodPost || r.URL.Path != "/v1/rollouts" || r.Header.Get("Authorization") != "Bearer tok" ||
			json.NewDecoder(r.Body).Decode(&spec) != nil {
			http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
			return
		}
		got = append(got, spec)
		w.Header().Set("Content-Type", "application/json")
		if spec.DryRun {
			w.Write([]byte(`{"tenant": "sim", "count": 20}`))
			return
		}
		if spec.Tenant == "bad" {
			w.WriteHeader(http.StatusBadRequest)
			w.Write([]byte(`{"error": "tenant: no such tenant", "field": "tenant", "code": "INVALID_ARGUMENT"}`))
			return
		}
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"id": "r-1"}`))
	})
	sessions := NewSessions(nil)
	c, err := New(Config{API: fakeAPI, APIHost: "console.test", Token: "tok", Origins: api.NewOrigins([]string{"console.test"}), Sessions: sessions})
	if err != nil {
		t.Fatal(err)
	}
	id, csrf := sessions.create()
	tests := []struct {
		name, cookie, csrf, body string
		status                   int
		reply                    string
	}{
		{"no session", "", csrf, "tenant=sim", http.StatusForbidden, "CSRF"},
		{"no CSRF token", id, "", "tenant=sim", http.StatusForbidden, "CSRF"},
		{"another CSRF token", id, "x" + csrf, "tenant=sim", http.StatusForbidden, "CSRF"},
		{"started", id, csrf, "tenant=sim&targets.all=on&strategy.ratePerMinute=60", http.StatusCreated, `"r-1"`},
		{"a dry run", id, csrf, "mode=yaml&yaml=tenant:+sim&dryRun=true", http.StatusOK, `"count":20`},
		{"the API's error", id, csrf, "tenant=bad", http.StatusBadRequest, `"field":"tenant"`},
		{"the form's error", id, csrf, "tenant=sim&strategy.maxInFlight=many", http.StatusBadRequest, `"field":"strategy.maxInFlight"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = nil
			r := httptest.NewRequest(http.MethodPost, "http://console.test/rollouts/create", strings.NewReader(tt.body))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Origin", "http://console.test")
			if tt.cookie != "" {
				r.AddCookie(&http.Cookie{Name: CookieName, Value: tt.cookie})
			}
			if tt.csrf != "" {
				r.Header.Set(CSRFHeader, tt.csrf)
			}
			w := httptest.NewRecorder()
			c.ServeHTTP(w, r)
			if w.Code != tt.status || !strings.Contains(strings.ReplaceAll(w.Body.String(), " ", ""), tt.reply) {
				t.Fatalf("got %d %s, want %d with %s", w.Code, w.Body, tt.status, tt.reply)
			}
			if tt.status == http.StatusForbidden && len(got) != 0 {
				t.Errorf("the API was called: %+v", got)
			}
			if tt.status == http.StatusCreated && (len(got) != 1 || !got[0].Targets.All || got[0].Strategy.RatePerMinute != 60) {
				t.Errorf("the API got %+v", got)
			}
		})
	}
}
