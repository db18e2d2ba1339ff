package console

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/changes"
)

// chartWindow is how far back the gateway page's chart goes.
const chartWindow = time.Hour

// gatewayDetail is what the gateway page shows.
type gatewayDetail struct {
	G              *api.Gateway
	State          string
	KeyFingerprint string
	Labels         []string
	ReportedLabels []string
	Sessions       []sessionRow
	Deployments    []*api.Deployment
	Registries     []api.Registry
	Changes        []changes.Change
	ChangesError   string
	Chart          template.HTML
	Legend         []legendEntry
	MetricsError   string
	Now            time.Time
	// ExpiringBefore: a credential expiring before it is flagged.
	ExpiringBefore time.Time
}

// sessionRow is one MQTT session of a gateway: its connect and, when it
// ended, its death.
type sessionRow struct {
	api.Session
	Current bool // the session the gateway is online in
	Ended   bool // its death was seen
}

// sessionsOf lists the gateway's latest sessions, newest first. A record
// without its history (an older API) gives the current session alone.
func sessionsOf(g *api.Gateway) []sessionRow {
	list := g.Sessions
	if len(list) == 0 && g.Session > 0 {
		s := api.Session{Session: g.Session, ConnectedAt: g.ConnectedAt}
		if g.DeathSession == g.Session {
			s.DeathReason = g.DeathReason
		}
		list = []api.Session{s}
	}
	out := make([]sessionRow, 0, len(list))
	for _, s := range list {
		r := sessionRow{Session: s, Ended: !s.DisconnectedAt.IsZero() || s.DeathReason != ""}
		r.Current = g.Online && s.Session == g.Session && !r.Ended
		out = append(out, r)
	}
	return out
}

// gatewayDetailOf shapes a gateway record for its page.
func gatewayDetailOf(g *api.Gateway, now time.Time) *gatewayDetail {
	d := &gatewayDetail{G: g, State: gatewayState(g), KeyFingerprint: keyFingerprint(g.PublicKey), Labels: labelList(g.Labels),
		ReportedLabels: labelList(g.ReportedLabels), Sessions: sessionsOf(g), Deployments: sortedDeployments(g.Deployments),
		Registries: slices.Clone(g.Registries), Now: now, ExpiringBefore: now.Add(7 * 24 * time.Hour)}
	slices.SortFunc(d.Registries, func(a, b api.Registry) int { return strings.Compare(a.Registry, b.Registry) })
	return d
}

// gateway renders one gateway's page, live.
func (c *Console) gateway(w http.ResponseWriter, r *http.Request) {
	tenant, id := r.PathValue("tenant"), r.PathValue("id")
	base := "/v1/gateways/" + url.PathEscape(tenant) + "/" + url.PathEscape(id)
	var g api.Gateway
	if err := c.get(r.Context(), base, &g); err != nil {
		c.fail(w, r, "Gateway "+tenant+"/"+id, err)
		return
	}
	d := gatewayDetailOf(&g, c.cfg.Now())
	var m api.Metrics
	if err := c.get(r.Context(), base+"/metrics", &m); err != nil {
		d.MetricsError = err.Error()
	}
	d.Chart, d.Legend = metricsChart(m.Samples, d.Now, chartWindow), chartLegend(m.Samples)
	var ch struct {
		Changes []changes.Change `json:"changes"`
	}
	q := url.Values{"tenant": {tenant}, "gateway": {id}, "limit": {"25"}}
	if err := c.get(r.Context(), "/v1/changes?"+q.Encode(), &ch); err != nil {
		d.ChangesError = err.Error()
	}
	d.Changes = ch.Changes
	// gateway.js refreshes the page on this gateway's changes only.
	c.render(w, r, "gateway", view{Title: tenant + "/" + id, Nav: "gateways", Data: d})
}

// keyFingerprint is a short hash of a gateway's public key (base64 of 32
// bytes): "sha256:" and the first 16 hex digits, never the key itself.
func keyFingerprint(key string) string {
	if key == "" {
		return ""
	}
	raw, err := base64.StdEncoding.DecodeString(key)
	if err != nil {
		raw = []byte(key)
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
