package scenarios

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/registry"
	"github.com/fleet-agent/fleet/cloud-sim/registry/testimage"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// newOpsCloud starts serve with sims simulated gateways of tenant sim
// (sim-1…) whose registry check may reach allow (a test's registry).
func newOpsCloud(t *testing.T, sims int, allow ...string) *cloud {
	t.Helper()
	c := &cloud{dataDir: t.TempDir(), mqtt: testenv.FreeAddr(t)}
	c.cfg = serve.Config{DataDir: c.dataDir, MQTTListen: c.mqtt, NATSListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0",
		Scheme: topic.Default(), StaleAfter: time.Minute, RegistryCheckAllow: allow,
		Sim: simfleet.Config{Count: sims, Tenant: "sim", PullTime: 10 * time.Millisecond}}
	c.start(t)
	t.Cleanup(func() {
		if c.Server != nil {
			c.Close()
		}
	})
	return c
}

// awaitOnline waits until n gateways of tenant are online (waitOnline).
func (c *cloud) awaitOnline(t *testing.T, tenant string, n int) {
	t.Helper()
	waitOnline(t, c, tenant, n)
}

// click clicks the element sel.
func (b *browser) click(what, sel string) {
	b.t.Helper()
	b.run(what, liveClick(sel))
}

// choose selects option in the <select> sel, as a user does (a change
// event follows).
func (b *browser) choose(sel, option string) {
	b.t.Helper()
	js := fmt.Sprintf(`(e => { e.value = %q; e.dispatchEvent(new Event("change", {bubbles: true})); return e.value === %q })(document.querySelector(%q))`, option, option, sel)
	if !value(b, "choose "+option+" in "+sel, chromedp.Evaluate[bool](js)) {
		b.t.Fatalf("%s has no option %s", sel, option)
	}
}

// countOf counts s's occurrences of word.
func countOf(s, word string) int { return strings.Count(s, word) }

// TestConsoleOpsDeploy deploys through the deploy page to every gateway
// of a simulated fleet and one real fleet-agent on Docker: the live
// count, YAML errors next to the editor with their line (the console's
// conversion and the API's registry check), the check, and the batch's
// per-gateway outcomes arriving on the page until each is RUNNING.
func TestConsoleOpsDeploy(t *testing.T) {
	chromium(t)
	reg := testimage.NewRegistry(t)
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/web", Tag: "1"})
	c := newOpsCloud(t, 4, reg.Host)
	// Container names are the Docker host's: a name of this run only.
	run := time.Now().UnixNano() % 1e6
	real, name := fmt.Sprintf("real-%d", run), fmt.Sprintf("web-%d", run)
	docker := testenv.DockerClient(t)
	testenv.RemoveOwned(t, docker, "sim/"+real, reg.Host+"/")
	c.provisionAgent(t, "sim", real)
	c.awaitOnline(t, "sim", 5)

	b := openConsole(t, c)
	b.run("the deploy page", chromedp.Navigate(b.base+"/deploy?tenant=sim"), chromedp.WaitVisible(chromedp.CSS("#spec")))
	b.eventually("the live count of the target", "#match", func(s string) bool { return s == "matches 5 gateways (5 online)" })
	b.run("a selector", liveClick("#target-kind-selector"), liveType("#target-selector", "site=site-1"))
	b.eventually("the count of the selector", "#match", func(s string) bool { return strings.HasPrefix(s, "matches 1 gateway") })
	b.run("all again", liveClick("#target-all"))
	b.eventually("the count of all again", "#match", func(s string) bool { return s == "matches 5 gateways (5 online)" })

	specOf := func(image string) string {
		return "name: " + name + "\nrevision: 1\nimage: " + image + "\nnetworkMode: none\nenv:\n  MODE: serve\nrestartPolicy:\n  mode: UNLESS_STOPPED\n"
	}
	for _, tc := range []struct{ what, yaml, want string }{
		{"an unknown field (the console's YAML conversion)", "name: web\nrevision: 1\nimagee: " + img + "\n", "Line 3 (imagee)"},
		{"an image the registry lacks (the API's registry check)", specOf(reg.Host + "/team/web:nope"), "Line 3 (image)"},
	} {
		b.run(tc.what, liveSet("#spec", tc.yaml), liveClick("#check-btn"))
		if got := b.eventually(tc.what, "#spec + p.field-error", func(s string) bool { return strings.HasPrefix(s, tc.want) }); !strings.Contains(got, "command.deploy.spec") && !strings.Contains(got, "image") {
			t.Errorf("%s: error %q names no field", tc.what, got)
		}
	}

	b.run("a good spec", liveSet("#spec", specOf(img)), liveClick("#check-btn"))
	b.eventually("the dry run", "#check-body", func(s string) bool {
		return strings.Contains(s, "Would deploy to 5 gateways of sim") && strings.Contains(s, "OK")
	})
	if l := c.batchCount(t); l != 0 {
		t.Fatalf("the check sent %d batches, want none", l)
	}
	b.click("deploy", "#deploy-btn")
	rows := b.eventually("every gateway RUNNING on the page", "#outcome-table tbody", func(s string) bool {
		return countOf(s, "RUNNING") == 5 && countOf(s, "SUCCEEDED") == 5
	})
	if !strings.Contains(rows, real) || !strings.Contains(rows, "sim-4") {
		t.Errorf("outcome rows %q lack the real gateway or sim-4", rows)
	}
	b.eventually("the summary", "#outcome-summary", func(s string) bool { return strings.HasPrefix(s, "Done: 5 of 5 gateways answered") })
	if g := c.gateway(t, "sim", real); g == nil || g.Deployments[name] == nil || g.Deployments[name].Phase != "RUNNING" {
		t.Errorf("the real gateway's deployment: %+v", g)
	}
	b.screenshot("deploy")
}

// batchCount is how many batches the API has.
func (c *cloud) batchCount(t *testing.T) int {
	var l struct {
		Batches []api.Batch `json:"batches"`
	}
	c.get(t, "/v1/batches", &l)
	return len(l.Batches)
}

// TestConsoleOpsCommands: the commands page lists the history, filters by
// state through its tabs (the query string), shows one batch, and gets a
// new command without a reload.
func TestConsoleOpsCommands(t *testing.T) {
	chromium(t)
	c := newOpsCloud(t, 3)
	c.awaitOnline(t, "sim", 3)
	c.send(t, api.Target{Tenant: "sim", All: true}, rebirthCmd(), "20s")
	// A deploy with an image the agents refuse to name: REJECTED everywhere.
	bad := c.sendJSON(t, `{"target": {"tenant": "sim", "gateways": ["sim-1"]}, "skipRegistryCheck": true, "wait": "20s",
		"command": {"deploy": {"spec": {"name": "Not_A_Name", "revision": 1, "image": "registry.example.com/x:1"}}}}`)
	if bad.Counts[api.StateRejected] != 1 {
		t.Fatalf("the bad deploy: %+v", bad.Counts)
	}

	b := openConsole(t, c)
	b.run("the commands page", chromedp.Navigate(b.base+"/commands"), chromedp.WaitVisible(chromedp.CSS("#commands")))
	all := b.text("#commands tbody")
	if countOf(all, "SUCCEEDED") != 3 || countOf(all, "REJECTED") != 1 {
		t.Errorf("history = %q, want 3 SUCCEEDED and 1 REJECTED", all)
	}
	// Live: a new command appears without a reload.
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-2"}}, rebirthCmd(), "20s")
	b.eventually("the new command, live", "#commands tbody", func(s string) bool { return countOf(s, "SUCCEEDED") == 4 })
	b.screenshot("commands")

	b.click("the REJECTED tab", `nav.tabs a[data-state="REJECTED"]`)
	b.eventually("only the rejected command", "#commands tbody", func(s string) bool {
		return countOf(s, "REJECTED") == 1 && countOf(s, "SUCCEEDED") == 0
	})
	if loc := value(b, "location", chromedp.Location()); !strings.Contains(loc, "state=REJECTED") {
		t.Errorf("location %s: the filter is not in the query string", loc)
	}
	if got := b.text("#commands tbody tr td.mono"); got != "deploy.spec.name" {
		t.Errorf("the rejected command's field = %q, want deploy.spec.name", got)
	}
	b.click("the SUCCEEDED tab", `nav.tabs a[data-state="SUCCEEDED"]`)
	b.eventually("only the succeeded commands", "#commands tbody", func(s string) bool {
		return countOf(s, "SUCCEEDED") == 4 && countOf(s, "REJECTED") == 0
	})

	b.run("one batch", chromedp.Navigate(b.base+"/commands?batch="+bad.ID), chromedp.WaitVisible(chromedp.CSS("#batch-summary")))
	if s := b.text("#commands tbody"); countOf(s, "REJECTED") != 1 || !strings.Contains(s, "sim-1") {
		t.Errorf("batch %s page = %q", bad.ID, s)
	}
}

// sendJSON posts a raw command request.
func (c *cloud) sendJSON(t *testing.T, body string) *api.BatchView {
	t.Helper()
	var b api.BatchView
	if err := c.api.Do(context.Background(), "POST", "/v1/commands", rawJSON(body), &b, nil); err != nil {
		t.Fatalf("send: %v", err)
	}
	return &b
}

// rawJSON is a request body written as JSON text.
type rawJSON string

func (r rawJSON) MarshalJSON() ([]byte, error) { return []byte(r), nil }

// TestConsoleOpsCredentials sets a credential through the form: the API
// lists it, and neither the form nor the page ever holds the secret.
func TestConsoleOpsCredentials(t *testing.T) {
	chromium(t)
	ecr := &registry.ECR{Keys: map[string]string{"AKIDCLOUD": ecrSecret}, Region: "eu-west-1", TokenTTL: 12 * time.Hour}
	reg := testimage.NewRegistry(t, testimage.WithAuth(ecr))
	img, _ := reg.Push(t, testimage.Spec{Repo: "team/app", Tag: "1"})
	t.Setenv("AWS_ENDPOINT_URL_ECR", reg.APIEndpoint())
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	c := newOpsCloud(t, 2, reg.Host)
	c.awaitOnline(t, "sim", 2)
	const secret = "s3cret-pa55word-never-echoed"

	b := openConsole(t, c)
	b.run("the credentials page", chromedp.Navigate(b.base+"/credentials?tenant=sim"), chromedp.WaitVisible(chromedp.CSS("#cred-form")))
	b.run("fill the form",
		liveSet("#cred-registry", "registry.example.com/team"),
		liveType("#cred-username", "robot"),
		liveType("#cred-password", secret),
		liveClick("#cred-save"))
	b.eventually("the stored notice", "#cred-result", func(s string) bool { return strings.HasPrefix(s, "Stored the basic credential") })
	b.eventually("the credential listed", "#credentials tbody", func(s string) bool { return strings.Contains(s, "registry.example.com/team") })
	if v := value(b, "the password field", chromedp.Value(chromedp.CSS("#cred-password"))); v != "" {
		t.Errorf("the password field still holds %d characters after submit", len(v))
	}
	var l struct {
		Credentials []api.CredentialView `json:"credentials"`
	}
	raw := c.get(t, "/v1/tenants/sim/credentials", &l)
	if len(l.Credentials) != 1 || l.Credentials[0].Username != "robot" || l.Credentials[0].Registry != "registry.example.com/team" {
		t.Fatalf("the API's credentials: %s", raw)
	}

	setECR(t, b, reg.Host, img)
	html := value(b, "the page's HTML", chromedp.OuterHTML(chromedp.CSS("html")))
	if strings.Contains(html, secret) || strings.Contains(html, ecrSecret) {
		t.Error("the page's HTML contains a secret")
	}
	b.screenshot("credentials")

	// Pushed, sealed, to every gateway of the tenant.
	b.choose("#push-registry", "registry.example.com/team")
	b.click("push", "#push-btn")
	b.eventually("the push's batch", "#push-result", func(s string) bool { return strings.HasPrefix(s, "Sent to 2 gateways") })
	testenv.Eventually(t, "both gateways hold the credential", func() bool {
		held := 0
		for _, id := range []string{"sim-1", "sim-2"} {
			if g := c.gateway(t, "sim", id); g != nil && len(g.Registries) == 1 && g.Registries[0].Registry == "registry.example.com/team" {
				held++
			}
		}
		return held == 2
	})

	// A mistake is shown next to the field the API names.
	b.choose("#cred-kind", "ecr")
	b.run("ecr with a bad region", liveSet("#cred-registry", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"),
		liveSet("#cred-ecr-region", "evil.example/x#"),
		liveType("#cred-ecr-key", "AKIAEXAMPLE"),
		liveType("#cred-ecr-secret", secret),
		liveClick("#cred-save"))
	b.eventually("the region error", `[data-field="credential.ecr.region"] + p.field-error`, func(s string) bool { return strings.Contains(s, "not an AWS region") })
	if v := value(b, "the secret field", chromedp.Value(chromedp.CSS("#cred-ecr-secret"))); v != "" {
		t.Error("the secret field is not cleared after a refused submit")
	}
	b.choose("#cred-kind", "basic")
	if html := value(b, "the page's HTML", chromedp.OuterHTML(chromedp.CSS("html"))); strings.Contains(html, secret) {
		t.Error("the page's HTML contains the secret after the refused submit")
	}

	// Deleted on a second click: the first asks.
	del := `button[data-delete="registry.example.com/team"]`
	b.click("delete", del)
	if s := b.text(del); s != "Really delete?" {
		t.Errorf("after one click the delete button says %q, want a confirmation", s)
	}
	b.click("confirm the delete", del)
	b.eventually("the credential gone from the list", "#credentials tbody", func(s string) bool { return !strings.Contains(s, "registry.example.com/team") })
	if c.get(t, "/v1/tenants/sim/credentials", &l); len(l.Credentials) != 1 {
		t.Errorf("the API lists %d credentials after the delete, want 1", len(l.Credentials))
	}
}

// ecrSecret is the AWS secret key of the emulated ECR.
const ecrSecret = "ecr-secret-access-key-never-echoed"

// setECR stores an ECR credential for host through the form, with tokens
// issued by the cloud, and checks image with it from the cloud: the list
// shows the token's expiry and refresh, the check OK.
func setECR(t *testing.T, b *browser, host, image string) {
	t.Helper()
	b.choose("#cred-kind", "ecr")
	b.run("an ECR credential", liveSet("#cred-registry", host),
		liveSet("#cred-ecr-region", "eu-west-1"),
		liveType("#cred-ecr-key", "AKIDCLOUD"),
		liveType("#cred-ecr-secret", ecrSecret),
		liveClick("#cred-save"))
	b.eventually("the ECR token's state", `#credentials tr[data-registry="`+host+`"]`, func(s string) bool {
		return strings.Contains(s, "token expires in 1") && strings.Contains(s, "h ") && strings.Contains(s, "refreshed in")
	})
	b.run("check the image", liveSet("#check-image", image), liveClick("#check-btn"))
	b.eventually("the registry check", "#check-result", func(s string) bool { return strings.Contains(s, "OK") && strings.Contains(s, "Credential\n"+host) })
	b.eventually("the last check listed", `#credentials tr[data-registry="`+host+`"]`, func(s string) bool { return strings.Contains(s, "OK "+image) })
}

// TestConsoleOpsCrossOrigin: a page of another origin (another port of
// the same host, so the browser sends the SameSite=Strict session
// cookie) posts to the console and to the API; nothing is sent or
// stored.
func TestConsoleOpsCrossOrigin(t *testing.T) {
	chromium(t)
	c := newOpsCloud(t, 2)
	c.awaitOnline(t, "sim", 2)
	b := openConsole(t, c) // the session cookie is in the browser
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, evilPage, b.base)
	}))
	t.Cleanup(evil.Close)

	b.run("the other origin's page", chromedp.Navigate(evil.URL), chromedp.WaitVisible(chromedp.CSS("#fetched")))
	// Its fetches end after the page shows (under make test's load it was
	// read still empty).
	fetched := b.eventually("the other page's fetches finished", "#fetched", func(s string) bool { return strings.HasPrefix(s, "done") })
	page := b.submitAway("form-api")
	if !strings.Contains(page, "PERMISSION_DENIED") && !strings.Contains(page, "UNAUTHENTICATED") && !strings.Contains(page, "Content-Type") {
		t.Errorf("the API answered the form post with %q", page)
	}
	b.run("back", chromedp.Navigate(evil.URL), chromedp.WaitVisible(chromedp.CSS("#fetched")))
	page = b.submitAway("form-console")
	if !strings.Contains(page, "refuses") && !strings.Contains(page, "CSRF") {
		t.Errorf("the console answered the form post with %q", page)
	}

	if n := c.batchCount(t); n != 0 {
		t.Errorf("the other origin's posts made %d batches", n)
	}
	var l struct {
		Credentials []api.CredentialView `json:"credentials"`
	}
	if c.get(t, "/v1/tenants/sim/credentials", &l); len(l.Credentials) != 0 {
		t.Errorf("the other origin's posts stored %d credentials", len(l.Credentials))
	}
	t.Logf("fetches from the other origin: %s", fetched)
}

// submitAway submits the form id of the page, which posts to the
// console's origin, and returns the text of the answer once the browser
// shows it.
func (b *browser) submitAway(id string) string {
	b.t.Helper()
	value(b, "submit "+id, chromedp.Evaluate[bool](`document.getElementById("`+id+`").submit(), true`))
	deadline := time.Now().Add(testenv.Timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href.startsWith(`+fmt.Sprintf("%q", b.base)+`) && document.readyState === "complete" ? document.body.innerText : ""`))
		cancel()
		if err == nil && text != "" {
			return text
		}
	}
	b.t.Fatalf("browser: the answer to %s did not show", id)
	return ""
}

// evilPage is another origin's page: fetches (with the browser's
// cookies) to the console's deploy endpoint and to the API, and forms
// that post there. %[1]s is the console's base URL.
const evilPage = `<!doctype html><html><body>
<form id="form-api" method="post" action="%[1]s/v1/commands" enctype="text/plain">
<input name='{"target": {"tenant": "sim", "all": true}, "command": {"rebirth": {}}, "x": "' value='"}'>
</form>
<form id="form-console" method="post" action="%[1]s/deploy/send" enctype="text/plain">
<input name='{"target": {"tenant": "sim", "all": true}, "yaml": "name: web\nimage: x:1", "x": "' value='"}'>
</form>
<p id="fetched"></p>
<script>
const base = %[1]q;
const deploy = JSON.stringify({target: {tenant: "sim", all: true}, yaml: "name: evil\nrevision: 1\nimage: registry.example.com/evil:1"});
const cred = JSON.stringify({credential: {registry: "evil.example.com", basic: {username: "u", password: "p"}}});
const tries = [
  fetch(base + "/deploy/send", {method: "POST", credentials: "include", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: deploy}),
  fetch(base + "/v1/commands", {method: "POST", credentials: "include", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify({target: {tenant: "sim", all: true}, command: {rebirth: {}}})}),
  fetch(base + "/v1/tenants/sim/credentials", {method: "PUT", credentials: "include", headers: {"Content-Type": "application/json", "X-CSRF-Token": "guess"}, body: cred}),
  fetch(base + "/deploy/send", {method: "POST", credentials: "include", headers: {"Content-Type": "application/json", "X-CSRF-Token": "guess"}, body: deploy}),
];
Promise.allSettled(tries).then((rs) => {
  document.getElementById("fetched").textContent = "done: " + rs.map((r) => r.status === "fulfilled" ? "opaque or " + r.value.status : "blocked").join(", ");
});
</script>
</body></html>`
