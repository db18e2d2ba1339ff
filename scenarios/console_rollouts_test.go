package scenarios

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/internal/testenv"
)

// openLoggedIn opens the console of c, logged in: once the login form is
// gone (openConsole's wait for the nav passes on the login page too,
// which shows it).
func openLoggedIn(t *testing.T, c *cloud) *browser {
	t.Helper()
	b := openConsole(t, c)
	b.run("logged in", chromedp.WaitNotPresent(chromedp.CSS(`#token`)))
	return b
}

// rolloutID is the id of the rollout whose page the browser shows.
func (b *browser) rolloutID() string {
	b.t.Helper()
	loc := value(b, "the location", chromedp.Location())
	i := strings.LastIndex(loc, "/rollouts/")
	if i < 0 {
		b.t.Fatalf("not on a rollout's page: %s", loc)
	}
	return loc[i+len("/rollouts/"):]
}

// markPage marks the loaded page, so that the test can tell later that
// what it saw changed without a reload.
func (b *browser) markPage() {
	b.t.Helper()
	value(b, "mark the page", chromedp.Evaluate[bool]("window.testMark = true"))
}

func (b *browser) pageMarked() bool {
	b.t.Helper()
	return value(b, "read the mark", chromedp.Evaluate[bool]("window.testMark === true"))
}

// clickLive clicks the element sel names on a live page.
func (b *browser) clickLive(what, sel string) {
	b.t.Helper()
	b.run(what, liveClick(sel))
}

// liveText reads the text of sel on a live page, whose content may be
// swapped while it is read (a node swapped out reads as "").
func (b *browser) liveText(sel string) string {
	b.t.Helper()
	return b.eventually("to read "+sel, sel, func(s string) bool { return s != "" })
}

// stageCount is the count the rollout page's funnel shows for a stage.
func (b *browser) stageCount(name string) int {
	b.t.Helper()
	n, err := strconv.Atoi(b.liveText(`[data-stage="` + name + `"] .stage-count`))
	if err != nil {
		b.t.Fatalf("the %s stage's count: %v", name, err)
	}
	return n
}

// TestConsoleRolloutCreatePauseResume: a rollout started from the form
// (after the form shows the API's error next to the field it names) is
// paused and resumed from its page's buttons, which dispatches nothing
// while paused, and its funnel reaches 100 % succeeded without a reload.
func TestConsoleRolloutCreatePauseResume(t *testing.T) {
	c := startCloud(t, 20)
	waitOnline(t, c, "sim", 20)
	b := openLoggedIn(t, c)
	b.run("fill the new rollout form",
		chromedp.Navigate(b.base+"/rollouts/new"),
		chromedp.WaitVisible(chromedp.CSS(`#rollout-form`)),
		liveType(`#r-name`, "web 1"),
		liveType(`#r-tenant`, "sim"),
		liveClick(`#t-all`),
		liveSet(`#d-spec`, "name: web\nrevision: 1\nimage: registry.example.com/web:1\n"),
		liveClick(`#d-skip`),
		liveType(`#s-canary`, "2"),
		liveType(`#s-soak`, "1s"),
		liveType(`#s-batch`, "6"),
		liveType(`#s-rate`, "120"),
		liveType(`#a-threshold`, "50"),
		liveType(`#a-min`, "4"),
		liveClick(`#a-failed`),
		liveClick(`#a-rollback`),
	)
	b.run("check first", liveClick(`#rollout-check`))
	if got := b.eventually("the dry run", `#dry-run .dry-targets`, func(s string) bool { return s != "" }); !strings.Contains(got, "20 gateways of sim: sim-1") {
		t.Errorf("the dry run says %q", got)
	}
	if v := c.get(t, "/v1/rollouts", nil); strings.Contains(string(v), `"id"`) {
		t.Fatalf("the check started a rollout: %s", v)
	}
	b.screenshot("rollout-new")
	b.run("submit without an image", liveSet(`#d-spec`, "name: web\nrevision: 1\n"),
		liveClick(`#rollout-submit`))
	msg := b.eventually("the API's error by the deployment spec", `#d-spec + .field-error`, func(s string) bool { return s != "" })
	if !strings.Contains(msg, "deployment.image") {
		t.Errorf("the error by the deployment spec: %q", msg)
	}
	if inv := value(b, "aria-invalid", chromedp.AttributeValue(chromedp.CSS(`#d-spec`), "aria-invalid")); inv.Value != "true" {
		t.Errorf("the deployment spec is not marked invalid: %+v", inv)
	}
	b.run("fix the deployment spec", liveSet(`#d-spec`, "name: web\nrevision: 1\nimage: registry.example.com/web:1\n"))
	b.run("start it", liveClick(`#rollout-submit`), chromedp.WaitVisible(chromedp.CSS(`#funnel`)))
	b.markPage()
	id := b.rolloutID()
	if v := rolloutStatus(t, c, id); v.Spec.Strategy.Canary == nil || v.Spec.Strategy.Canary.Count != 2 || v.Spec.Strategy.BatchSize != 6 ||
		v.Spec.Strategy.RatePerMinute != 120 || !v.Spec.Abort.Rollback || v.Total != 20 {
		t.Fatalf("the rollout the form started: %+v, %d gateways", v.Spec, v.Total)
	}

	testenv.Eventually(t, "the canary and a first batch's gateways dispatched", func() bool { return rolloutStatus(t, c, id).Notified >= 4 })
	b.clickLive("pause", `#rollout-pause`)
	b.eventually("the paused state", `#rollout-state`, func(s string) bool { return strings.Contains(s, api.RolloutPaused) })
	testenv.Eventually(t, "in-flight gateways done while paused", func() bool { return rolloutStatus(t, c, id).Counts[api.GwInProgress] == 0 })
	settled := rolloutStatus(t, c, id)
	ticks := c.Controller.RolloutTicks()
	testenv.Eventually(t, "three scheduler ticks", func() bool { return c.Controller.RolloutTicks() >= ticks+3 })
	if now := rolloutStatus(t, c, id); now.Notified != settled.Notified || now.State != api.RolloutPaused {
		t.Fatalf("paused with %d dispatched, then %d (%s)", settled.Notified, now.Notified, now.State)
	}
	want := fmt.Sprintf("%d of 20", settled.Notified)
	b.eventually("the dispatched count while paused", `#rollout-notified`, func(s string) bool { return s == want })
	if settled.Notified == 20 {
		t.Fatalf("every gateway was dispatched before the pause; the test proves nothing")
	}

	b.clickLive("resume", `#rollout-resume`)
	b.clickLive("open the spec", `#rollout-spec summary`)
	b.eventually("100 % succeeded", `[data-stage="succeeded"] .stage-pct`, func(s string) bool { return s == "100%" })
	b.eventually("the succeeded state", `#rollout-state`, func(s string) bool { return strings.Contains(s, api.RolloutSucceeded) })
	if n := b.stageCount("succeeded"); n != 20 {
		t.Errorf("succeeded: %d, want 20", n)
	}
	if !b.pageMarked() {
		t.Errorf("the page was reloaded; it should have changed live")
	}
	if !value(b, "the spec open", chromedp.Evaluate[bool](`document.getElementById("rollout-spec").open`)) {
		t.Errorf("the spec opened while the page refreshed live closed again")
	}
	if bands := value(b, "the chart's bands", chromedp.Evaluate[int](`document.querySelectorAll("svg.rollout-chart path.band").length`)); bands < 3 {
		t.Errorf("the chart draws %d bands, want queued, in progress and succeeded at least", bands)
	}
	b.screenshot("rollout")

	b.run("the list", chromedp.Navigate(b.base+"/rollouts"), chromedp.WaitVisible(chromedp.CSS(`table.rollouts`)))
	row := b.eventually("the rollout's row, succeeded", `tr[data-rollout="`+id+`"]`, func(s string) bool { return strings.Contains(s, api.RolloutSucceeded) })
	for _, s := range []string{"web 1", "sim", "web@1", api.RolloutSucceeded, "20 succeeded, 0 failed, 0 in progress of 20"} {
		if !strings.Contains(row, s) {
			t.Errorf("the list's row lacks %q: %q", s, row)
		}
	}
}

// TestConsoleRolloutAbortAndRollback: a bad release started as YAML
// aborts; its page shows ABORTED, the failing gateways with their codes
// and the rolled back count; cancel asks to confirm.
func TestConsoleRolloutAbortAndRollback(t *testing.T) {
	c := simCloud(t, 20, simfleet.Config{BadImage: "flaky", BadRate: 0.5})
	v1 := createRollout(t, c, api.RolloutSpec{Name: "web 1", Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(1, "registry.example.com/web:1"), SkipRegistryCheck: true, Strategy: api.Strategy{BatchPercent: 50}})
	if v := waitRollout(t, c, v1.ID, time.Minute); v.State != api.RolloutSucceeded {
		t.Fatalf("revision 1: %s %v", v.State, v.Counts)
	}
	b := openLoggedIn(t, c)
	b.run("start a bad release as YAML",
		chromedp.Navigate(b.base+"/rollouts/new"),
		chromedp.WaitVisible(chromedp.CSS(`#rollout-form`)),
		liveClick(`#mode-yaml`),
		chromedp.WaitVisible(chromedp.CSS(`#r-yaml`)),
		liveSet(`#r-yaml`, `name: web 2 (flaky)
tenant: sim
targets: {all: true}
deployment: {name: web, revision: 2, image: registry.example.com/web:2-flaky}
skipRegistryCheck: true
strategy: {maxInFlight: 4}
abort: {failureKinds: [FAILED], thresholdPercent: 30, minExecuted: 6, rollback: true}
`),
		liveClick(`#rollout-submit`),
		chromedp.WaitVisible(chromedp.CSS(`#funnel`)),
	)
	id := b.rolloutID()
	b.eventually("the aborted state", `#rollout-state`, func(s string) bool { return strings.Contains(s, api.RolloutAborted) })
	v := waitRollout(t, c, id, time.Minute)
	back := v.Counts[api.GwRolledBack]
	if v.State != api.RolloutAborted || back == 0 || v.Counts[api.GwCanceled] == 0 {
		t.Fatalf("the bad release: %s %v", v.State, v.Counts)
	}
	b.eventually("the rolled back count", `[data-stage="rolled back"] .stage-count`, func(s string) bool { return s == strconv.Itoa(back) })
	if r := b.liveText(`#rollout-reason`); !strings.Contains(r, "Aborted") {
		t.Errorf("reason: %q", r)
	}
	failing := b.liveText(`#failing tbody`)
	for _, g := range v.Failing {
		if g.State == api.GwFailed && (!strings.Contains(failing, g.Gateway) || g.Code == "" || !strings.Contains(failing, g.Code)) {
			t.Errorf("failing gateways lack %s with code %q: %q", g.Gateway, g.Code, failing)
		}
	}
	b.screenshot("rollout-aborted")

	// Cancel asks first.
	v3 := createRollout(t, c, api.RolloutSpec{Name: "web 4", Tenant: "sim", Targets: api.RolloutTargets{All: true},
		Deployment: deploymentJSON(4, "registry.example.com/web:4"), SkipRegistryCheck: true, Strategy: api.Strategy{RatePerMinute: 6}})
	b.run("the rollout to cancel", chromedp.Navigate(b.base+"/rollouts/"+v3.ID), chromedp.WaitVisible(chromedp.CSS(`#rollout-cancel`)))
	b.clickLive("cancel", `#rollout-cancel`)
	b.run("keep it running",
		chromedp.WaitVisible(chromedp.CSS(`dialog.confirm`)),
		liveClick(`dialog.confirm button[value="no"]`),
		chromedp.WaitNotPresent(chromedp.CSS(`dialog.confirm`)),
	)
	if st := rolloutStatus(t, c, v3.ID).State; st != api.RolloutRunning {
		t.Fatalf("after keeping it running: %s", st)
	}
	b.clickLive("cancel again", `#rollout-cancel`)
	b.run("confirm", liveClick(`#confirm-yes`))
	b.eventually("the canceled state", `#rollout-state`, func(s string) bool { return strings.Contains(s, api.RolloutCanceled) })

	rows := func() int {
		return value(b, "rows", chromedp.Evaluate[int](`document.querySelectorAll("table.rollouts tbody tr").length`))
	}
	b.run("the aborted ones", chromedp.Navigate(b.base+"/rollouts?state=ABORTED"), chromedp.WaitVisible(chromedp.CSS(`table.rollouts`)))
	if n, row := rows(), b.liveText(`table.rollouts tbody tr`); n != 1 || !strings.Contains(row, "web 2 (flaky)") {
		t.Errorf("the aborted rollouts: %d rows, %q", n, row)
	}
	b.run("the list", chromedp.Navigate(b.base+"/rollouts"), chromedp.WaitVisible(chromedp.CSS(`table.rollouts`)))
	if n := rows(); n != 3 {
		t.Errorf("the list shows %d rollouts, want 3", n)
	}
	b.screenshot("rollouts")
}
