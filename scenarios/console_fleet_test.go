package scenarios

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// fleetCloud starts a cloud with n simulated gateways, waits for all of
// them online and, with deploy, runs deployment "web" on each.
// Pulls of an image whose reference contains it fail on the simulated
// gateways of fleetCloud.
const brokenImage = "broken"

func fleetCloud(t *testing.T, n int, deploy bool) *cloud {
	t.Helper()
	c := simCloud(t, n, simfleet.Config{BadImage: brokenImage})
	if deploy {
		b := c.send(t, api.Target{Tenant: "sim", All: true}, deployCmd("web", 1, "registry.example.com/web:1"), "30s")
		if b.Counts[api.StateSucceeded] != n {
			t.Fatalf("deploy web: %v", b.Counts)
		}
	}
	return c
}

func deployCmd(name string, rev int64, image string) *fleetv1.Command {
	return &fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{
		Spec: &fleetv1.DeploymentSpec{Name: name, Revision: rev, Image: image}}}}
}

// deprovision deletes a gateway's identity through the API, which
// disconnects it.
func (c *cloud) deprovision(t *testing.T, tenant, id string) {
	t.Helper()
	var d api.Deprovisioned
	if err := c.api.Do(context.Background(), "POST", "/v1/gateways/"+tenant+"/"+id+"/deprovision", nil, &d, nil); err != nil {
		t.Fatalf("deprovision %s/%s: %v", tenant, id, err)
	}
}

// rowIDs lists the gateway ids of the gateways table, in order.
func rowIDs(b *browser) []string {
	b.t.Helper()
	return value(b, "the gateways table", chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("table.gateways tbody tr[data-id]")].map(r => r.dataset.id)`))
}

// TestConsoleFleetOverview: the overview's counts are the API's, and
// change without a reload when a gateway goes offline.
func TestConsoleFleetOverview(t *testing.T) {
	c := fleetCloud(t, 25, true)
	var l api.GatewayList
	c.get(t, "/v1/gateways?limit=1", &l)
	b := openConsole(t, c)
	for sel, want := range map[string]int{"#count-total": l.Total, "#count-online": l.Online, "#count-offline": l.Total - l.Online, "#count-stale": l.Stale} {
		if got := b.text(sel); got != fmt.Sprint(want) {
			t.Errorf("%s = %s, want the API's %d", sel, got, want)
		}
	}
	if got := b.text("#count-deployments"); got != "25" {
		t.Errorf("deployments = %s, want 25", got)
	}
	c.deprovision(t, "sim", "sim-25")
	b.eventually("24 online, live", "#count-online", func(s string) bool { return s == "24" })
	if got := b.text("#count-offline"); got != "1" {
		t.Errorf("offline = %s after sim-25 went away, want 1", got)
	}

	// A release that fails to pull on two gateways, and a slow rollout.
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-3", "sim-7"}}, deployCmd("api", 1, "registry.example.com/api:"+brokenImage), "20s")
	b.eventually("2 failing, live", "#count-failing", func(s string) bool { return s == "2" })
	if got := b.text("#failing"); !strings.Contains(got, "sim/sim-3") || !strings.Contains(got, "sim/sim-7") {
		t.Errorf("failing %q, want sim-3 and sim-7", got)
	}
	v := createRollout(t, c, api.RolloutSpec{Name: "web-2", Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(2, "registry.example.com/web:2"), SkipRegistryCheck: true,
		Strategy: api.Strategy{BatchSize: 4, RatePerMinute: 30}})
	b.eventually("the rollout, live", "#active-rollouts", func(s string) bool { return strings.Contains(s, "web-2") && strings.Contains(s, "RUNNING") })
	testenv.Eventually(t, "a few gateways updated", func() bool {
		var r api.RolloutView
		c.get(t, "/v1/rollouts/"+v.ID, &r)
		return r.Counts[api.GwSucceeded] >= 3
	})
	b.eventually("the rollout's progress", "#active-rollouts", func(s string) bool { return !strings.Contains(s, " 0% of") })
	b.screenshot("overview") // TestConsoleLoginAndOverview leaves it to this richer fleet
}

// TestConsoleFleetGateways: filters from the query string, natural order
// across pages whose links keep the filters, and a bulk restart from the
// table that reaches SUCCEEDED.
func TestConsoleFleetGateways(t *testing.T) {
	c := fleetCloud(t, 25, true)
	b := openConsole(t, c)
	tests := []struct {
		query string
		want  []string
	}{
		{"selector=site%3Dsite-1", []string{"sim-1", "sim-11", "sim-21"}},
		{"q=SIM-2", []string{"sim-2", "sim-20", "sim-21", "sim-22", "sim-23", "sim-24", "sim-25"}},
		{"tenant=nobody", nil},
	}
	for _, tt := range tests {
		b.run(tt.query, chromedp.Navigate(b.base+"/gateways?"+tt.query), chromedp.WaitVisible(chromedp.CSS(`table.gateways`)))
		if got := rowIDs(b); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("%s: rows %v, want %v", tt.query, got, tt.want)
		}
	}
	b.run("page 1 of 10", chromedp.Navigate(b.base+"/gateways?tenant=sim&limit=10"), chromedp.WaitVisible(chromedp.CSS(`#page-next`)))
	ids := rowIDs(b)
	if len(ids) != 10 || ids[0] != "sim-1" || ids[9] != "sim-10" {
		t.Fatalf("page 1: %v, want sim-1 … sim-10", ids)
	}
	b.run("next page", liveClick(`#page-next`), chromedp.WaitVisible(chromedp.CSS(`#page-prev`)))
	if ids := rowIDs(b); len(ids) != 10 || ids[0] != "sim-11" || ids[9] != "sim-20" {
		t.Errorf("page 2: %v, want sim-11 … sim-20", ids)
	}
	loc := value(b, "the location", chromedp.Evaluate[string](`location.search`))
	if !strings.Contains(loc, "tenant=sim") || !strings.Contains(loc, "limit=10") || !strings.Contains(loc, "page=2") {
		t.Errorf("page 2's URL %q lost the filters", loc)
	}

	// Bulk: restart web on the page's ten gateways.
	b.run("select the page and restart web",
		liveClick(`#select-page`),
		liveType(`#bulk-deployment`, "web"),
		liveClick(`#bulk-send`),
	)
	b.eventually("the batch's outcome", "#bulk-result", func(s string) bool { return strings.Contains(s, "done") })
	if got := b.text("#bulk-result"); !strings.Contains(got, "SUCCEEDED 10") || !strings.Contains(got, "restart web") {
		t.Errorf("outcome %q, want restart web SUCCEEDED 10", got)
	}
	batch := value(b, "the batch link", chromedp.AttributeValue(chromedp.CSS(`#bulk-result a`), "href"))
	if !strings.HasPrefix(batch.Value, "/commands?batch=") {
		t.Errorf("batch link %q", batch.Value)
	}
	b.screenshot("gateways")

	// Rows of two tenants: one command a tenant. edge-1 of acme has no
	// MQTT session, so its rebirth waits at the broker.
	ingestEdgeGateway(c, "acme", "edge-1", time.Now())
	b.run("a rebirth to sim-1 and acme's edge-1",
		chromedp.Navigate(b.base+"/gateways?q=-1"), chromedp.WaitVisible(chromedp.CSS(`table.gateways`)),
		liveClick(`input[data-tenant="acme"][data-id="edge-1"]`),
		liveClick(`input[data-tenant="sim"][data-id="sim-1"]`),
		liveSet(`#bulk-action`, "rebirth"),
		liveClick(`#bulk-send`),
	)
	got := b.eventually("two batches", "#bulk-result", func(s string) bool {
		return strings.Contains(s, "tenant sim · 1 gateway: SUCCEEDED 1 — done") && strings.Contains(s, "tenant acme · 1 gateway: PENDING 1")
	})
	if n := strings.Count(got, "Batch b-"); n != 2 {
		t.Errorf("outcome %q: %d batches, want one a tenant", got, n)
	}
}

// TestConsoleFleetGateway: a gateway's page shows its birth's facts and a
// deployment made through the API, and restarts it.
func TestConsoleFleetGateway(t *testing.T) {
	c := fleetCloud(t, 3, true)
	g := c.gateway(t, "sim", "sim-2")
	b := openConsole(t, c)
	b.run("the gateway page", chromedp.Navigate(b.base+"/gateways/sim/sim-2"), chromedp.WaitVisible(chromedp.CSS(`#deployments`)))
	if got := b.text("#fact-host"); g.Host == nil || got != g.Host.Hostname {
		t.Errorf("host %q, want the birth's %+v", got, g.Host)
	}
	if got := b.text("#fact-key"); !strings.HasPrefix(got, "sha256:") || strings.Contains(got, g.PublicKey) {
		t.Errorf("public key shown as %q, want a fingerprint, never the key", got)
	}
	if got := b.text(`#deployments tr[data-deployment="web"]`); !strings.Contains(got, "RUNNING") || !strings.Contains(got, "registry.example.com/web:1") {
		t.Errorf("deployment row %q, want web RUNNING with its image", got)
	}
	b.run("restart web", liveClick(`#deployments button[data-action="restart"][data-deployment="web"]`))
	b.eventually("the restart's outcome", "#action-result", func(s string) bool { return strings.Contains(s, "restart web: SUCCEEDED") })

	// Remove asks first (a native confirm, accepted here), then the row
	// goes without a reload.
	dialogs := chromedp.Events(b.ctx, page.JavascriptDialogOpening)
	asked := make(chan string, 1)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			asked <- ev.Message
			_, _ = chromedp.Call(b.ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: true})
			return
		}
	}()
	b.run("remove web", liveClick(`#deployments button[data-action="remove"][data-deployment="web"]`))
	b.eventually("the removal's outcome", "#action-result", func(s string) bool { return strings.Contains(s, "remove web: SUCCEEDED") })
	select { // the removal was sent, so a confirm was asked before
	case msg := <-asked:
		if !strings.Contains(msg, "Remove deployment web from sim/sim-2") {
			t.Errorf("confirm asked %q", msg)
		}
	default:
		t.Error("removed without a confirm")
	}
	b.eventually("the web row gone, live", "#deployments tbody", func(s string) bool { return strings.Contains(s, "No deployment on this gateway") })

	// An hour of heartbeats, drawn by the server. Simulated gateways send
	// one a minute from their start, so this gateway's birth and metrics
	// go through the controller's ingest as the MQTT client hands them over.
	now := time.Now()
	ingestEdgeGateway(c, "acme", "edge-1", now)
	b.run("edge-1's page", chromedp.Navigate(b.base+"/gateways/acme/edge-1"), chromedp.WaitVisible(chromedp.CSS(`#metrics-chart svg`)))
	d := value(b, "the CPU line", chromedp.AttributeValue(chromedp.CSS(`#metrics-chart path.s-cpu`), "d"))
	if n := strings.Count(d.Value, ","); n < 55 {
		t.Errorf("the CPU line has %d points, want an hour's (60): %s", n, d.Value)
	}
	if got := b.text("#credentials"); !strings.Contains(got, "ghcr.io") || !strings.Contains(got, "a1b2c3d4e5f6") {
		t.Errorf("credentials %q, want ghcr.io with its fingerprint", got)
	}
	if got := b.text(`#deployments tr[data-deployment="web"]`); !strings.Contains(got, "3c9d2f1e8b7a") || !strings.Contains(got, "healthy") {
		t.Errorf("web's row %q, want its container id (3c9d2f1e8b7a) and health", got)
	}
	b.screenshot("gateway")
}

// ingestEdgeGateway hands the controller tenant/id's birth (a host, an
// engine, three deployments, a credential) and its heartbeats of the
// last hour, one a minute.
func ingestEdgeGateway(c *cloud, tenant, id string, now time.Time) {
	tp := func(k topic.Kind) topic.Topic { return topic.Topic{Kind: k, Tenant: tenant, Gateway: id} }
	c.Controller.Ingest(mqttclient.Received{Topic: tp(topic.Birth), At: now.Add(-61 * time.Minute), Message: &fleetv1.Birth{
		GatewayId: id, Tenant: tenant, Session: 7, AgentVersion: "1.4.2", ProtocolVersion: 1,
		StartedAt: timestamppb.New(now.Add(-62 * time.Minute)), Timestamp: timestamppb.New(now.Add(-61 * time.Minute)),
		Host:         &fleetv1.Host{Hostname: "edge-1.berlin.example", Os: "linux", Arch: "arm64", CpuCount: 4, MemoryBytes: 8 << 30},
		Engine:       &fleetv1.Engine{Name: "docker", Version: "27.3.1", Reachable: true},
		Capabilities: []string{"protobuf", "json", "sealed-credentials", "deploy", "remove", "start", "stop", "restart", "rebirth"},
		PublicKey:    "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
		Deployments: []*fleetv1.DeploymentSummary{
			{Name: "web", Revision: 12, Phase: fleetv1.DeploymentStatus_RUNNING, Image: "ghcr.io/acme/web:2.4.1", Digest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
			{Name: "mqtt-bridge", Revision: 3, Phase: fleetv1.DeploymentStatus_RUNNING, Image: "ghcr.io/acme/bridge:1.1"},
			{Name: "vision", Revision: 5, Phase: fleetv1.DeploymentStatus_FAILED, Image: "ghcr.io/acme/vision:0.9"},
		},
		Registries: []*fleetv1.RegistrySummary{{Registry: "ghcr.io", Kind: "basic", Username: "acme-bot", Fingerprint: "a1b2c3d4e5f6",
			ExpiresAt: timestamppb.New(now.Add(5 * 24 * time.Hour))}}}})
	st := topic.Topic{Kind: topic.Status, Tenant: tenant, Gateway: id, Deployment: "web"}
	c.Controller.Ingest(mqttclient.Received{Topic: st, At: now.Add(-60 * time.Minute), Message: &fleetv1.DeploymentStatus{
		Name: "web", Revision: 12, Phase: fleetv1.DeploymentStatus_RUNNING, Health: fleetv1.HealthCheck_HEALTHY, Image: "ghcr.io/acme/web:2.4.1",
		ImageDigest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		ContainerId: "3c9d2f1e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d", RestartCount: 1}})
	for i := 60; i >= 0; i-- {
		load := 1.2 + math.Sin(float64(i)/6)*0.8
		mem := uint64(8<<30) * uint64(45+i%7+(60-i)/4) / 100
		c.Controller.Ingest(mqttclient.Received{Topic: tp(topic.Metrics), At: now.Add(-time.Duration(i) * time.Minute), Message: &fleetv1.Metrics{
			Load1: load, MemoryTotalBytes: 8 << 30, MemoryAvailableBytes: 8<<30 - mem, DiskTotalBytes: 100, DiskFreeBytes: 38 - uint64(60-i)/20, RunningCount: 2}})
	}
}

// TestConsoleFleetEvents: the events page adds a new event live, and
// keeps to its filters; a change made after the page listed the changes
// but before its event stream opened is shown too (the stream starts
// where the list ended). Before, such a change was lost: this test waited
// for sim-3's offline, made while the page loaded, and failed once in
// thirteen make test runs; the stream now opens only after the change,
// every run.
func TestConsoleFleetEvents(t *testing.T) {
	c := fleetCloud(t, 3, false)
	b := openConsole(t, c)
	b.run("the events of sim-2", chromedp.Navigate(b.base+"/events?tenant=sim&gateway=sim-2"), chromedp.WaitVisible(chromedp.CSS(`#change-rows`)))
	b.eventually("the event stream open", "#live-status", func(s string) bool { return s == "Live" })
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-1"}}, rebirthCmd(), "10s")
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-2"}}, rebirthCmd(), "10s")
	b.eventually("sim-2's command, live", "#change-rows", func(s string) bool { return strings.Contains(s, "command.finished") })
	if got := b.text("#change-rows"); strings.Contains(got, "sim/sim-1") {
		t.Errorf("rows %q show sim-1, outside the filter", got)
	}
	c.send(t, api.Target{Tenant: "sim", Gateways: []string{"sim-3"}}, deployCmd("api", 1, "registry.example.com/api:"+brokenImage), "10s")

	// The page's event stream held back (its request paused in the
	// browser) until sim-3 went offline after the page was listed.
	paused := chromedp.Events(b.ctx, fetch.RequestPaused)
	if _, err := chromedp.Call(b.ctx, fetch.Enable, fetch.EnableParams{Patterns: []*fetch.RequestPattern{{URLPattern: "*/v1/events*"}}}); err != nil {
		t.Fatalf("browser: hold the event stream: %v", err)
	}
	held := make(chan fetch.RequestID, 1)
	go func() {
		for ev, err := range paused {
			if err != nil {
				return
			}
			held <- ev.RequestID
			return
		}
	}()
	b.run("all events", chromedp.Navigate(b.base+"/events"), chromedp.WaitVisible(chromedp.CSS(`#change-rows`)))
	var stream fetch.RequestID
	select {
	case stream = <-held:
	case <-time.After(testenv.Timeout):
		t.Fatal("the events page opened no event stream")
	}
	if got := b.text("#change-rows"); strings.Contains(got, "gateway.offline") {
		t.Fatalf("rows %q show an offline before any gateway went offline", got)
	}
	c.deprovision(t, "sim", "sim-3")
	testenv.Eventually(t, "sim-3's offline in the API's changes", func() bool {
		var l api.ChangeList
		c.get(t, "/v1/changes?gateway=sim-3&kind=gateway.offline", &l)
		return len(l.Changes) > 0
	})
	for _, step := range []func() error{
		func() error {
			_, err := chromedp.Call(b.ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: stream})
			return err
		},
		func() error { _, err := chromedp.Call(b.ctx, fetch.Disable, cdp.Empty{}); return err },
	} {
		if err := step(); err != nil {
			t.Fatalf("browser: let the event stream go: %v", err)
		}
	}
	b.eventually("sim-3 offline, made while the page loaded", "#change-rows", func(s string) bool { return strings.Contains(s, "gateway.offline") })
	if got := b.text("#change-rows"); !strings.Contains(got, "sim/sim-1") || !strings.Contains(got, "gateway.online") {
		t.Errorf("recent events %q, want sim-1's and the births", got)
	}
	b.screenshot("events")
}
