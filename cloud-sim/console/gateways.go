package console

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// gatewaysPageSize is how many gateways a page of /gateways lists unless
// its query says limit=.
const (
	gatewaysPageSize = 50
	gatewaysPageMax  = 500
)

// gatewayFilter is the query of /gateways: the API's filters, and the page.
type gatewayFilter struct {
	Tenant, Selector, Group, Online, Q string
	Page, Limit                        int
}

// parseGatewayFilter reads the query of /gateways; a malformed page or
// limit is taken as the default rather than refused.
func parseGatewayFilter(q url.Values) gatewayFilter {
	f := gatewayFilter{Tenant: strings.TrimSpace(q.Get("tenant")), Selector: strings.TrimSpace(q.Get("selector")),
		Group: strings.TrimSpace(q.Get("group")), Q: strings.TrimSpace(q.Get("q")), Page: 1, Limit: gatewaysPageSize}
	if o := q.Get("online"); o == "true" || o == "false" {
		f.Online = o
	}
	if n, err := strconv.Atoi(q.Get("page")); err == nil && n > 0 {
		f.Page = n
	}
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		f.Limit = min(n, gatewaysPageMax)
	}
	return f
}

// apiQuery is the GET /v1/gateways query for the filter's page.
func (f gatewayFilter) apiQuery() string {
	q := url.Values{}
	for k, v := range map[string]string{"tenant": f.Tenant, "selector": f.Selector, "group": f.Group, "online": f.Online, "q": f.Q} {
		if v != "" {
			q.Set(k, v)
		}
	}
	q.Set("limit", strconv.Itoa(f.Limit))
	q.Set("offset", strconv.Itoa((f.Page-1)*f.Limit))
	return q.Encode()
}

// gatewayRow is one row of the gateways table.
type gatewayRow struct {
	// G is not embedded: html/template looks a promoted field up by a
	// search that allocates, per row and field.
	G           *api.Gateway
	State       string
	LabelList   []string          // "key=value", sorted
	Deployments []*api.Deployment // by name
}

// labelList is a gateway's labels as "key=value", sorted.
func labelList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// gatewaysData is what the gateways page shows.
type gatewaysData struct {
	Filter               gatewayFilter
	URL                  *url.URL
	Rows                 []gatewayRow
	Total, Online, Stale int
	Offline              int
	First, Last          int // the rows' positions, from 1
	Page, Pages          int
	PrevURL, NextURL     string
	FirstURL, LastURL    string
	Tenants              []string // of the page's rows, for the bulk form
	Error                string
	Filtered             bool
}

// gatewayState is ONLINE, STALE or OFFLINE.
func gatewayState(g *api.Gateway) string {
	switch {
	case g.Online && g.Stale:
		return "STALE"
	case g.Online:
		return "ONLINE"
	}
	return "OFFLINE"
}

// sortedDeployments lists a gateway's deployments by name.
func sortedDeployments(m map[string]*api.Deployment) []*api.Deployment {
	out := make([]*api.Deployment, 0, len(m))
	for _, d := range m {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *api.Deployment) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// gatewaysView shapes a reply of GET /v1/gateways into the page: rows and
// the pagination links, which keep the filters.
func gatewaysView(f gatewayFilter, u *url.URL, l api.GatewayList) gatewaysData {
	d := gatewaysData{Filter: f, Total: l.Total, Online: l.Online, Stale: l.Stale, Offline: l.Total - l.Online, Page: f.Page,
		Filtered: f.Tenant != "" || f.Selector != "" || f.Group != "" || f.Online != "" || f.Q != ""}
	d.Pages = max(1, (l.Total+f.Limit-1)/f.Limit)
	for _, g := range l.Gateways {
		d.Rows = append(d.Rows, gatewayRow{G: g, State: gatewayState(g), LabelList: labelList(g.Labels), Deployments: sortedDeployments(g.Deployments)})
	}
	if len(d.Rows) > 0 {
		d.First = (f.Page-1)*f.Limit + 1
		d.Last = d.First + len(d.Rows) - 1
	}
	page := func(n int) string {
		if n == 1 {
			return withQuery(u, "page", "")
		}
		return withQuery(u, "page", strconv.Itoa(n))
	}
	if f.Page > 1 {
		d.PrevURL, d.FirstURL = page(min(f.Page-1, d.Pages)), page(1)
	}
	if f.Page < d.Pages {
		d.NextURL, d.LastURL = page(f.Page+1), page(d.Pages)
	}
	return d
}

// gateways renders the gateways table: filtered, paged, live.
func (c *Console) gateways(w http.ResponseWriter, r *http.Request) {
	f := parseGatewayFilter(r.URL.Query())
	var l api.GatewayList
	err := c.get(r.Context(), "/v1/gateways?"+f.apiQuery(), &l)
	d := gatewaysView(f, r.URL, l)
	if err != nil {
		// A bad selector is the operator's to fix: show the form with it.
		d.Error = err.Error()
	}
	c.render(w, r, "gateways", view{Title: "Gateways", Nav: "gateways", Live: "gateway.,deployment.", Data: d})
}
