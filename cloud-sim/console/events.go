package console

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
)

// eventsShown is how many events the events page lists (and keeps when
// new ones arrive live).
const eventsShown = 500

// eventFilter is the query of /events, the same as GET /v1/changes'.
type eventFilter struct {
	Tenant, Gateway, Kind, Severity string
}

func parseEventFilter(q url.Values) eventFilter {
	return eventFilter{Tenant: strings.TrimSpace(q.Get("tenant")), Gateway: strings.TrimSpace(q.Get("gateway")),
		Kind: strings.TrimSpace(q.Get("kind")), Severity: strings.TrimSpace(q.Get("severity"))}
}

// apiQuery is the GET /v1/changes query of the filter.
func (f eventFilter) apiQuery(limit string) string {
	q := url.Values{"limit": {limit}}
	for k, v := range map[string]string{"tenant": f.Tenant, "gateway": f.Gateway, "kind": f.Kind, "severity": f.Severity} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q.Encode()
}

// eventsData is what the events page shows.
type eventsData struct {
	Filter   eventFilter
	Filtered bool
	Changes  []changes.Change
	// Cursor is where the page's event stream starts: just after the
	// changes listed, so that none made while the page loads is missed.
	Cursor string
	Max    int
	Error  string
}

// events renders the recent changes; events.js adds new ones from the
// event stream, which starts where the listing ended (data-stream-after).
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	f := parseEventFilter(r.URL.Query())
	d := eventsData{Filter: f, Filtered: f != eventFilter{}, Max: eventsShown}
	var out struct {
		Changes []changes.Change `json:"changes"`
		Cursor  string           `json:"cursor"`
	}
	if err := c.get(r.Context(), "/v1/changes?"+f.apiQuery("200"), &out); err != nil {
		d.Error = err.Error()
	}
	d.Changes, d.Cursor = out.Changes, out.Cursor
	c.render(w, r, "events", view{Title: "Events", Nav: "events", Data: d})
}
