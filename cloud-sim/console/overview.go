package console

import (
	"cmp"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// overviewData is what the overview page shows: GET /v1/overview with
// its spreads sorted and drawn.
type overviewData struct {
	api.Overview
	Now                                      time.Time
	AgentVersions, EngineVersions            []share
	Phases, Health                           []share
	AgentBar, EngineBar, PhaseBar, HealthBar template.HTML
}

// share is one value of a spread (a version, a phase) and how many have it.
type share struct {
	Name    string
	Count   int
	Percent float64
	Class   string // the colour class of its segment: c0…c7, or a state's
}

// spread turns counts into shares, the largest first (then by name);
// beyond top-1 values the rest are summed up as "other". state colours
// each share by its state's class instead of by rank.
func spread(counts map[string]int, top int, state bool) []share {
	total := 0
	out := make([]share, 0, len(counts))
	for k, n := range counts {
		out = append(out, share{Name: k, Count: n})
		total += n
	}
	slices.SortFunc(out, func(a, b share) int { return cmp.Or(b.Count-a.Count, strings.Compare(a.Name, b.Name)) })
	if len(out) > top {
		rest := share{Name: "other"}
		for _, s := range out[top-1:] {
			rest.Count += s.Count
		}
		out = append(out[:top-1], rest)
	}
	for i := range out {
		out[i].Percent = 100 * float64(out[i].Count) / float64(max(total, 1))
		out[i].Class = fmt.Sprintf("c%d", i)
		if state {
			out[i].Class = stateClass(out[i].Name)
		}
	}
	return out
}

// spreadBar draws shares as one stacked bar (inline SVG: the page's CSP
// forbids style attributes); the shares are also written out as text.
func spreadBar(shares []share) template.HTML {
	var b strings.Builder
	b.WriteString(`<svg class="spread" viewBox="0 0 100 8" preserveAspectRatio="none" aria-hidden="true" focusable="false">`)
	x := 0.0
	for _, s := range shares {
		fmt.Fprintf(&b, `<rect class="%s" x="%.2f" y="0" width="%.2f" height="8"/>`, s.Class, x, s.Percent)
		x += s.Percent
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// overviewOf shapes the API's overview for the page.
func overviewOf(o api.Overview, now time.Time) overviewData {
	d := overviewData{Overview: o, Now: now,
		AgentVersions: spread(o.AgentVersions, 6, false), EngineVersions: spread(o.EngineVersions, 6, false),
		Phases: spread(o.Deployments.ByPhase, 8, true), Health: spread(o.Deployments.ByHealth, 4, true)}
	d.AgentBar, d.EngineBar = spreadBar(d.AgentVersions), spreadBar(d.EngineVersions)
	d.PhaseBar, d.HealthBar = spreadBar(d.Phases), spreadBar(d.Health)
	return d
}

// overview renders the fleet overview, live.
func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	var o api.Overview
	if err := c.get(r.Context(), "/v1/overview", &o); err != nil {
		c.fail(w, r, "Fleet overview", err)
		return
	}
	c.render(w, r, "overview", view{Title: "Overview", Nav: "overview", Live: "gateway.,deployment.,rollout.,credential.", Data: overviewOf(o, c.cfg.Now())})
}
