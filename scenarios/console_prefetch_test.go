package scenarios

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// TestConsoleRolloutPrefetch: the form's "prefetch first" box starts a
// rollout with a prefetch phase, whose page shows the phase's counts live
// until every gateway holds the image.
func TestConsoleRolloutPrefetch(t *testing.T) {
	c := simCloud(t, 6, pullLink)
	b := openLoggedIn(t, c)
	b.run("fill the new rollout form",
		chromedp.Navigate(b.base+"/rollouts/new"),
		chromedp.WaitVisible(chromedp.CSS(`#rollout-form`)),
		liveType(`#r-tenant`, "sim"),
		liveClick(`#t-all`),
		liveSet(`#d-spec`, "name: web\nrevision: 1\nimage: registry.example.com/web:1\n"),
		liveClick(`#d-skip`),
		liveClick(`#s-prefetch`),
	)
	b.run("start it", liveClick(`#rollout-submit`), chromedp.WaitVisible(chromedp.CSS(`#funnel`)))
	id := b.rolloutID()
	if v := rolloutStatus(t, c, id); v.Spec.Strategy.Prefetch == nil || v.PrefetchCounts == nil {
		t.Fatalf("the rollout the form started: %+v", v.Spec.Strategy)
	}
	b.eventually("every gateway holding the image", `#rollout-prefetch`, func(s string) bool { return strings.HasPrefix(s, "6 of 6 hold the image") })
	b.eventually("the succeeded state", `#rollout-state`, func(s string) bool { return strings.Contains(s, api.RolloutSucceeded) })
}
