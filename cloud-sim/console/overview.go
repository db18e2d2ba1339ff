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

// expiringWithin is how soon a credential's expiry makes the overview
// list it.
const expiringWithin = 7 * 24 * time.Hour

// overviewData is what the overview page shows.
type overviewData struct {
	Count, Online, Offline, Stale int
	AgentVersions, EngineVersions []share
	Deployments                   int
	Phases, Health                []share
	Rollouts                      []*api.RolloutView
	Failing                       []failing
	Expiring                      []expiring
	// The spreads drawn as stacked bars.
	AgentBar, EngineBar, PhaseBar, HealthBar template.HTML
}

// share is one value of a spread (a version, a phase) and how many have it.
type share struct {
	Name    string
	Count   int
	Percent float64
	Class   string // the colour class of its segment: c0…c5, or a state's
}

// failing is a gateway with a deployment in trouble.
type failing struct {
	Tenant, Gateway, Deployment, Phase, Health, Message string
	At                                                  time.Time
}

// expiring is a credential a gateway holds that expires soon (or has).
type expiring struct {
	Tenant, Gateway, Registry, Kind string
	ExpiresAt                       time.Time
	Expired                         bool
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

// overviewOf sums up the fleet from the gateways' records.
func overviewOf(l api.GatewayList, rollouts []*api.RolloutView, now time.Time) overviewData {
	d := overviewData{Count: l.Total, Online: l.Online, Offline: l.Total - l.Online, Stale: l.Stale}
	agents, engines, phases, health := map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	for _, g := range l.Gateways {
		agents[cmp.Or(g.AgentVersion, "unknown")]++
		engine := "unknown"
		if g.Engine != nil && g.Engine.Version != "" {
			engine = strings.TrimSpace(g.Engine.Name + " " + g.Engine.Version)
		}
		engines[engine]++
		for _, dep := range sortedDeployments(g.Deployments) {
			d.Deployments++
			phases[dep.Phase]++
			health[cmp.Or(dep.Health, "no check")]++
			if dep.Phase == "FAILED" || dep.Health == "unhealthy" {
				d.Failing = append(d.Failing, failing{Tenant: g.Tenant, Gateway: g.ID, Deployment: dep.Name, Phase: dep.Phase,
					Health: dep.Health, Message: strings.TrimSpace(dep.Code + " " + dep.Message), At: dep.UpdatedAt})
			}
		}
		for _, r := range g.Registries {
			if !r.ExpiresAt.IsZero() && r.ExpiresAt.Sub(now) < expiringWithin {
				d.Expiring = append(d.Expiring, expiring{Tenant: g.Tenant, Gateway: g.ID, Registry: r.Registry, Kind: r.Kind,
					ExpiresAt: r.ExpiresAt, Expired: !r.ExpiresAt.After(now)})
			}
		}
	}
	d.AgentVersions, d.EngineVersions = spread(agents, 6, false), spread(engines, 6, false)
	d.Phases, d.Health = spread(phases, 8, true), spread(health, 4, true)
	d.AgentBar, d.EngineBar = spreadBar(d.AgentVersions), spreadBar(d.EngineVersions)
	d.PhaseBar, d.HealthBar = spreadBar(d.Phases), spreadBar(d.Health)
	for _, r := range rollouts {
		if r.Active {
			d.Rollouts = append(d.Rollouts, r)
		}
	}
	slices.SortFunc(d.Expiring, func(a, b expiring) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	return d
}

// overview renders the fleet overview, live.
func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	var l api.GatewayList
	if err := c.get(r.Context(), "/v1/gateways", &l); err != nil {
		c.fail(w, r, "Fleet overview", err)
		return
	}
	var rs struct {
		Rollouts []*api.RolloutView `json:"rollouts"`
	}
	if err := c.get(r.Context(), "/v1/rollouts", &rs); err != nil {
		c.fail(w, r, "Fleet overview", err)
		return
	}
	d := overviewOf(l, rs.Rollouts, c.cfg.Now())
	c.render(w, r, "overview", view{Title: "Overview", Nav: "overview", Live: "gateway.,deployment.,rollout.,credential.", Data: d})
}
