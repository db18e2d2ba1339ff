package console

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/api"
)

// commandStates are the states the commands page filters by, in the
// order a command goes through them.
var commandStates = []string{api.StatePending, api.StateAccepted, api.StateSucceeded, api.StateFailed, api.StateRejected, api.StateUndelivered}

// commandVerbs are the verbs the filter offers (topic.Verb's names).
var commandVerbs = []string{"deploy", "remove", "start", "stop", "restart", "set-credentials", "delete-credentials", "check-registry", "rebirth", "prefetch"}

// commandLimit is how many commands the page lists.
const commandLimit = 200

// batchLimit is how many recent batches the page lists, each with its
// counts.
const batchLimit = 15

// commandsData is what the commands page shows.
type commandsData struct {
	URL      *url.URL
	Filter   map[string]string // tenant, gateway, verb, state, code, batch
	States   []string
	Verbs    []string
	Commands []*api.Command
	Limit    int
	Batch    *api.BatchView // with ?batch=
	Batches  []batchRow
}

// batchRow is a batch of the list: its counts, and how many commands it
// has.
type batchRow struct {
	*api.BatchView
	Total int
}

// Link is this page's URL with the query parameter key set to value
// ("" removes it): the state tabs and code links.
func (d commandsData) Link(key, value string) string { return withQuery(d.URL, key, value) }

// commands renders the command history with its filters, one batch's
// commands (?batch=), and the recent batches with their counts;
// commands.js keeps the tables live.
func (c *Console) commands(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := commandsData{URL: r.URL, Filter: map[string]string{}, States: commandStates, Verbs: commandVerbs, Limit: commandLimit}
	params := url.Values{}
	for _, k := range []string{"tenant", "gateway", "verb", "state", "code", "batch"} {
		if v := strings.TrimSpace(q.Get(k)); v != "" {
			d.Filter[k] = v
			params.Set(k, v)
		}
	}
	params.Set("limit", strconv.Itoa(commandLimit))
	var list struct {
		Commands []*api.Command `json:"commands"`
	}
	if err := c.get(r.Context(), "/v1/commands?"+params.Encode(), &list); err != nil {
		c.fail(w, r, "Commands", err)
		return
	}
	d.Commands = list.Commands
	if id := d.Filter["batch"]; id != "" {
		d.Batch = new(api.BatchView)
		if err := c.get(r.Context(), "/v1/batches/"+url.PathEscape(id), d.Batch); err != nil {
			c.fail(w, r, "Batch "+id, err)
			return
		}
	} else {
		batches, err := c.recentBatches(r, d.Filter["tenant"])
		if err != nil {
			c.fail(w, r, "Commands", err)
			return
		}
		d.Batches = batches
	}
	c.render(w, r, "commands", view{Title: "Commands", Nav: "commands", Data: d})
}

// recentBatches lists the latest batches (of tenant, if given) with
// their counts: GET /v1/batches names them, GET /v1/batches/{id} counts.
func (c *Console) recentBatches(r *http.Request, tenant string) ([]batchRow, error) {
	var l struct {
		Batches []*api.Batch `json:"batches"`
	}
	if err := c.get(r.Context(), "/v1/batches?limit=100", &l); err != nil {
		return nil, err
	}
	var out []batchRow
	for _, b := range l.Batches {
		if len(out) == batchLimit {
			break
		}
		if tenant != "" && b.Tenant != tenant {
			continue
		}
		v := new(api.BatchView)
		if err := c.get(r.Context(), "/v1/batches/"+url.PathEscape(b.ID), v); err != nil {
			return nil, err
		}
		out = append(out, batchRow{BatchView: v, Total: len(v.Commands)})
		v.Commands = nil // the counts are what the list shows
	}
	return out, nil
}
