package console

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/changes"
)

// cannedAPI answers the API paths the fleet pages call with canned replies,
// and remembers the queries it was asked.
type cannedAPI struct {
	replies map[string]any // by path
	queries map[string]string
}

func (f *cannedAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.queries[r.URL.Path] = r.URL.RawQuery
	v, ok := f.replies[r.URL.Path]
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":"no route","code":"NOT_FOUND"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// newFleetConsole is a console without login on a fake API.
func newFleetConsole(t testing.TB, h http.Handler) *Console {
	t.Helper()
	c, err := New(Config{API: h, APIHost: "console.test", NoAuth: true, Origins: api.NewOrigins([]string{"console.test"}), Sessions: NewSessions(nil),
		Logger: slog.New(slog.NewTextHandler(fleetLogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func sampleGateway(now time.Time) *api.Gateway {
	return &api.Gateway{Tenant: "acme", ID: "gw-2", Online: true, Session: 3, DeathSession: 2, DeathReason: "connection_lost",
		ConnectedAt: now.Add(-time.Hour), LastSeen: now, AgentVersion: "1.4.0", ProtocolVersion: 1,
		Host:   &api.Host{Hostname: "edge-2", OS: "linux", Arch: "arm64", CPUs: 4, MemoryBytes: 4 << 30},
		Engine: &api.Engine{Name: "docker", Version: "27.1", Reachable: true}, Labels: map[string]string{"site": "berlin"}, Groups: []string{"edge"},
		Sessions: []api.Session{{Session: 3, ConnectedAt: now.Add(-time.Hour)},
			{Session: 2, ConnectedAt: now.Add(-2 * time.Hour), DisconnectedAt: now.Add(-time.Hour), DeathReason: "connection_lost"}},
		Capabilities: []string{"deploy", "json"}, PublicKey: "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=", Provisioned: true,
		Deployments: map[string]*api.Deployment{"web": {Name: "web", Revision: 2, Phase: "FAILED", Health: "unhealthy", Image: "registry.example.com/web:2",
			Digest: "sha256:0123456789abcdef0123456789abcdef", Code: "UNHEALTHY", Message: "health check failed 3 times", RestartCount: 4, UpdatedAt: now}},
		Registries: []api.Registry{{Registry: "ghcr.io", Kind: "basic", Username: "bot", Fingerprint: "fp:abc", ExpiresAt: now.Add(24 * time.Hour)}}}
}

func TestFleetPages(t *testing.T) {
	now := time.Now()
	g := sampleGateway(now)
	f := &cannedAPI{queries: map[string]string{}, replies: map[string]any{
		"/v1/gateways":           api.GatewayList{Count: 1, Online: 1, Total: 1, Gateways: []*api.Gateway{g}},
		"/v1/gateways/acme/gw-2": g,
		"/v1/overview": api.Overview{Gateways: api.GatewayCounts{Total: 1, Online: 1}, AgentVersions: map[string]int{"1.4.0": 1}, EngineVersions: map[string]int{"docker 27.1": 1},
			Deployments:    api.DeploymentCounts{ByPhase: map[string]int{"FAILED": 1}, ByHealth: map[string]int{"unhealthy": 1}, Total: 1},
			ActiveRollouts: []*api.RolloutView{{Rollout: api.Rollout{ID: "r-1", State: "RUNNING", Phase: "BATCHES", Spec: api.RolloutSpec{Name: "web-2", Tenant: "acme"}}, Total: 10, SucceededPct: 40, Active: true}},
			Failing:        []api.FailingDeployment{{Tenant: "acme", Gateway: "gw-2", Deployment: "web", Phase: "FAILED", Message: "health check failed"}}, FailingTotal: 1,
			ExpiringCredentials: []api.ExpiringCredential{{Tenant: "acme", Registry: "ghcr.io", Kind: "basic", ExpiresAt: now.Add(time.Hour), Where: api.WhereGateway, Gateway: "gw-2"}}, ExpiringCredentialsTotal: 1},
		"/v1/rollouts":                   map[string]any{"rollouts": []*api.RolloutView{{Rollout: api.Rollout{ID: "r-1", State: "RUNNING", Phase: "BATCHES", Spec: api.RolloutSpec{Name: "web-2", Tenant: "acme"}}, Total: 10, SucceededPct: 40, Active: true}}},
		"/v1/changes":                    map[string]any{"changes": []changes.Change{{Kind: "deployment.status", At: now, Severity: changes.Error, Tenant: "acme", Gateway: "gw-2", Deployment: "web", Phase: "FAILED", Message: "unhealthy"}}},
		"/v1/gateways/acme/gw-2/metrics": map[string]any{"samples": []api.MetricSample{{At: now.Add(-time.Minute), Load1: 1, CPUs: 4, MemoryUsedPercent: 40, DiskUsedPercent: 60}, {At: now, Load1: 2, CPUs: 4, MemoryUsedPercent: 42, DiskUsedPercent: 60}}},
	}}
	c := newFleetConsole(t, f)
	tests := []struct {
		path      string
		want      []string
		wantQuery map[string]string // API path → query it was asked
		notWant   []string
	}{
		{path: "/", want: []string{`id="count-total">1<`, `id="count-online">1<`, `id="count-offline">0<`, "1.4.0", "docker 27.1", "web-2", "acme/gw-2", "ghcr.io", "health check failed"}},
		{path: "/gateways?tenant=acme&selector=site%3Dberlin&q=gw&page=2&limit=10", want: []string{`data-id="gw-2"`, "site=berlin", "edge", "FAILED", `value="site=berlin"`},
			wantQuery: map[string]string{"/v1/gateways": "limit=10&offset=10&q=gw&selector=site%3Dberlin&tenant=acme"}},
		{path: "/gateways/acme/gw-2", want: []string{"edge-2", "linux/arm64", "sha256:", "UNHEALTHY", "health check failed 3 times", "ghcr.io", "fp:abc", `<span class="badge warn">soon</span>`, "connection_lost", "<svg", "CPU load per CPU: <strong>50%</strong>", "deployment.status"},
			notWant:   []string{g.PublicKey},
			wantQuery: map[string]string{"/v1/changes": "gateway=gw-2&limit=25&tenant=acme"}},
		{path: "/events?tenant=acme&severity=warning%2Cerror", want: []string{"deployment.status", `data-severity="warning,error"`, "sev-error"},
			wantQuery: map[string]string{"/v1/changes": "limit=200&severity=warning%2Cerror&tenant=acme"}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			c.ServeHTTP(rec, httptest.NewRequest("GET", "http://console.test"+tt.path, nil))
			body := rec.Body.String()
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(body, w) {
					t.Errorf("page shows %q", w)
				}
			}
			for p, q := range tt.wantQuery {
				if f.queries[p] != q {
					t.Errorf("asked %s?%s, want ?%s", p, f.queries[p], q)
				}
			}
		})
	}
}

// fleetLogWriter writes a logger's lines through t.
type fleetLogWriter struct{ t testing.TB }

func (w fleetLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestGatewaysPager(t *testing.T) {
	tests := []struct {
		query                          string
		total                          int
		wantAPI                        string
		wantPrev, wantNext             string
		wantPages, wantFirst, wantLast int
	}{
		{query: "tenant=sim", total: 120, wantAPI: "limit=50&offset=0&tenant=sim",
			wantNext: "/gateways?page=2&tenant=sim", wantPages: 3, wantFirst: 1, wantLast: 50},
		{query: "tenant=sim&selector=site%3Ds1&page=3&limit=10", total: 25, wantAPI: "limit=10&offset=20&selector=site%3Ds1&tenant=sim",
			wantPrev: "/gateways?limit=10&page=2&selector=site%3Ds1&tenant=sim", wantPages: 3, wantFirst: 21, wantLast: 25},
		{query: "page=2&online=true", total: 60, wantAPI: "limit=50&offset=50&online=true",
			wantPrev: "/gateways?online=true", wantPages: 2, wantFirst: 51, wantLast: 60},
		{query: "page=x&limit=5000&online=maybe", total: 0, wantAPI: "limit=500&offset=0", wantPages: 1},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			u, _ := url.Parse("/gateways?" + tt.query)
			f := parseGatewayFilter(u.Query())
			if got := f.apiQuery(); got != tt.wantAPI {
				t.Errorf("API query %q, want %q", got, tt.wantAPI)
			}
			rows := max(0, min(f.Limit, tt.total-(f.Page-1)*f.Limit))
			l := api.GatewayList{Total: tt.total, Gateways: make([]*api.Gateway, rows)}
			for i := range l.Gateways {
				l.Gateways[i] = &api.Gateway{Tenant: "sim", ID: "x"}
			}
			d := gatewaysView(f, u, l)
			if d.PrevURL != tt.wantPrev || d.NextURL != tt.wantNext || d.Pages != tt.wantPages || d.First != tt.wantFirst || d.Last != tt.wantLast {
				t.Errorf("got prev %q next %q pages %d rows %d–%d, want %q %q %d %d–%d", d.PrevURL, d.NextURL, d.Pages, d.First, d.Last,
					tt.wantPrev, tt.wantNext, tt.wantPages, tt.wantFirst, tt.wantLast)
			}
		})
	}
}

func TestSpread(t *testing.T) {
	tests := []struct {
		counts map[string]int
		top    int
		state  bool
		want   string
	}{
		{map[string]int{}, 3, false, ""},
		{map[string]int{"1.2": 5, "1.3": 15}, 3, false, "1.3 15 75% c0; 1.2 5 25% c1; "},
		{map[string]int{"a": 1, "b": 1, "c": 1, "d": 5}, 3, false, "d 5 62% c0; a 1 12% c1; other 2 25% c2; "},
		{map[string]int{"RUNNING": 3, "FAILED": 1}, 8, true, "RUNNING 3 75% ok; FAILED 1 25% bad; "},
	}
	for _, tt := range tests {
		var b strings.Builder
		for _, s := range spread(tt.counts, tt.top, tt.state) {
			fmt.Fprintf(&b, "%s %d %.0f%% %s; ", s.Name, s.Count, s.Percent, s.Class)
		}
		if b.String() != tt.want {
			t.Errorf("spread(%v, %d) = %q, want %q", tt.counts, tt.top, b.String(), tt.want)
		}
	}
}
