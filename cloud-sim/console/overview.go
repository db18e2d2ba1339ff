package console

import (
	"net/http"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// overviewData is what the overview page shows.
type overviewData struct {
	Count, Online, Offline, Stale int
}

// overview renders the fleet overview, live.
func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	var l api.GatewayList
	if err := c.get(r.Context(), "/v1/gateways", &l); err != nil {
		c.fail(w, r, "Fleet overview", err)
		return
	}
	d := overviewData{Count: l.Count, Online: l.Online, Offline: l.Count - l.Online, Stale: l.Stale}
	c.render(w, r, "overview", view{Title: "Overview", Nav: "overview", Live: "gateway.,deployment.,rollout.", Data: d})
}
