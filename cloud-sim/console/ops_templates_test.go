package console

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// TestOpsTemplates renders the deploy, commands and credentials pages
// with data that reaches every branch of their templates (a template
// that names a missing field fails only when executed).
func TestOpsTemplates(t *testing.T) {
	c, err := New(Config{API: http.NotFoundHandler(), APIHost: "127.0.0.1:8080", NoAuth: true,
		Origins: api.NewOrigins([]string{"127.0.0.1:8080"}), Sessions: NewSessions(nil)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cmd := &api.Command{ID: "c-1", Batch: "b-1", Tenant: "acme", Gateway: "gw-1", Verb: "deploy", State: api.StateRejected,
		Code: "INVALID_ARGUMENT", Field: "deploy.spec.name", Message: "bad name", SentAt: now, AcceptedAt: now, FinishedAt: now, OfflineWhenSent: true}
	batch := &api.BatchView{Batch: api.Batch{ID: "b-1", Verb: "deploy", Tenant: "acme", CreatedAt: now, Warnings: []string{"w"}},
		Commands: []*api.Command{cmd}, Counts: map[string]int{api.StateRejected: 1}, Done: true}
	u, _ := url.Parse("/commands?state=REJECTED&tenant=acme")
	creds := credentialsData{Tenant: "acme", Tenants: []string{"acme", "sim"}, Now: now, Target: api.Target{Tenant: "acme", All: true},
		Credentials: []api.CredentialView{
			{Registry: "ghcr.io/acme", Kind: "basic", Username: "bot", Fingerprint: "abc", UpdatedAt: now, RequireTLS: true,
				LastCheck: &api.CheckResult{Image: "ghcr.io/acme/x:1", Code: "NOT_FOUND", Message: "no such image", CheckedAt: now}},
			{Registry: "1.dkr.ecr.eu-west-1.amazonaws.com", Kind: "ecr", IssueTokens: true, TokenExpiresAt: now.Add(12 * time.Hour),
				TokenRefreshAt: now.Add(11 * time.Hour), HasCACertificate: true, UpdatedAt: now, LastCheck: &api.CheckResult{OK: true, CheckedAt: now}},
		}}
	for _, tc := range []struct {
		page string
		data any
		want []string
	}{
		{"deploy", deployData{Target: api.Target{Tenant: "acme", Gateways: []string{"gw-1", "gw-2"}}, Tenants: []string{"acme"}, Spec: exampleSpec},
			[]string{`value="gw-1, gw-2"`, "restartPolicy:", `id="target-kind-gateways" name="target-kind" value="gateways" checked`}},
		{"commands", commandsData{URL: u, Filter: map[string]string{"state": "REJECTED", "tenant": "acme"}, States: commandStates, Verbs: commandVerbs,
			Commands: []*api.Command{cmd}, Limit: commandLimit, Batches: []batchRow{{BatchView: batch, Total: 1}}},
			[]string{"deploy.spec.name", "offline when sent", `href="/commands?batch=b-1"`, `/commands?code=INVALID_ARGUMENT&amp;state=REJECTED&amp;tenant=acme`}},
		{"commands", commandsData{URL: u, Filter: map[string]string{"batch": "b-1"}, States: commandStates, Verbs: commandVerbs,
			Commands: []*api.Command{cmd}, Limit: commandLimit, Batch: batch}, []string{`id="batch-summary"`, "Warning: w"}},
		{"credentials", creds, []string{"token expires in 12h, refreshed in 11h", "private CA", "HTTPS only", "NOT_FOUND", `data-delete="ghcr.io/acme"`}},
		{"credentials", credentialsData{Tenants: []string{"acme", "sim"}}, []string{`href="/credentials?tenant=sim"`}},
	} {
		w := httptest.NewRecorder()
		c.render(w, httptest.NewRequest("GET", "/"+tc.page, nil), tc.page, view{Title: tc.page, Data: tc.data})
		if w.Code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", tc.page, w.Code, w.Body)
		}
		for _, s := range tc.want {
			if !strings.Contains(w.Body.String(), s) {
				t.Errorf("%s: the page lacks %q", tc.page, s)
			}
		}
	}
}
