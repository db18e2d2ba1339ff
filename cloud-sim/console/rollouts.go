package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/internal/errdefs"
)

// rolloutRow is one rollout as the list shows it.
type rolloutRow struct {
	*api.RolloutView
	Deployment deploymentSummary
	Bar        template.HTML
	Progress   string
}

// deploymentSummary is what a rollout's deployment spec is called.
type deploymentSummary struct {
	Name     string          `json:"name"`
	Revision json.RawMessage `json:"revision"` // protojson writes an int64 as a string
	Image    string          `json:"image"`
}

func (d deploymentSummary) String() string {
	return d.Name + "@" + strings.Trim(string(d.Revision), `"`)
}

func deploymentOf(raw json.RawMessage) deploymentSummary {
	var d struct {
		deploymentSummary
		Services map[string]struct {
			Image string `json:"image"`
		} `json:"services"`
	}
	_ = json.Unmarshal(raw, &d)
	// An application: each service's image, by service name.
	var imgs []string
	for _, name := range slices.Sorted(maps.Keys(d.Services)) {
		imgs = append(imgs, name+": "+d.Services[name].Image)
	}
	if d.Image == "" {
		d.Image = strings.Join(imgs, ", ")
	}
	return d.deploymentSummary
}

// rolloutList is the list page's data.
type rolloutList struct {
	Rows          []rolloutRow
	Tenant, State string
	Tenants       []string // of every rollout, for the filter
	States        []string
	URL           *url.URL
	Total         int
}

// rollouts lists the rollouts, newest first, filtered by ?tenant= and
// ?state=; live.
func (c *Console) rollouts(w http.ResponseWriter, r *http.Request) {
	var out struct {
		Rollouts []*api.RolloutView `json:"rollouts"`
	}
	if err := c.get(r.Context(), "/v1/rollouts", &out); err != nil {
		c.fail(w, r, "Rollouts", err)
		return
	}
	q := r.URL.Query()
	d := rolloutList{Tenant: q.Get("tenant"), State: q.Get("state"), URL: r.URL, Total: len(out.Rollouts),
		States: []string{api.RolloutRunning, api.RolloutPaused, api.RolloutSucceeded, api.RolloutFailed,
			api.RolloutAborted, api.RolloutCanceled, api.RolloutSuperseded}}
	for _, v := range out.Rollouts {
		if !slices.Contains(d.Tenants, v.Spec.Tenant) {
			d.Tenants = append(d.Tenants, v.Spec.Tenant)
		}
		if (d.Tenant != "" && v.Spec.Tenant != d.Tenant) || (d.State != "" && v.State != d.State) {
			continue
		}
		d.Rows = append(d.Rows, rolloutRow{RolloutView: v, Deployment: deploymentOf(v.Spec.Deployment),
			Bar: progressBar(v), Progress: progressText(v)})
	}
	if d.Tenant != "" && !slices.Contains(d.Tenants, d.Tenant) {
		d.Tenants = append(d.Tenants, d.Tenant)
	}
	slices.Sort(d.Tenants)
	c.render(w, r, "rollouts", view{Title: "Rollouts", Nav: "rollouts", Live: "rollout.", Data: d})
}

// rolloutNew is the form that starts a rollout.
func (c *Console) rolloutNew(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, "rollout_new", view{Title: "New rollout", Nav: "rollouts", Data: r.URL.Query().Get("tenant")})
}

// rolloutPage is the rollout page's data.
type rolloutPage struct {
	*api.RolloutView
	Deployment deploymentSummary
	Flow, Ends []stage
	Bar        template.HTML
	Progress   string
	Chart      template.HTML
	Legend     []stage
	Failing    []api.RolloutGateway
	Paused     bool
	SpecYAML   string
	// Prefetch is the prefetch phase's counts in words, "" without one.
	Prefetch string
}

// rollout shows one rollout, live: its funnel, its gateways per state
// over time, its failing gateways, and pause, resume and cancel.
func (c *Console) rollout(w http.ResponseWriter, r *http.Request) {
	var v api.RolloutView
	if err := c.get(r.Context(), "/v1/rollouts/"+url.PathEscape(r.PathValue("id"))+"?gateways=true", &v); err != nil {
		c.fail(w, r, "Rollout "+r.PathValue("id"), err)
		return
	}
	d := rolloutPage{RolloutView: &v, Deployment: deploymentOf(v.Spec.Deployment), Bar: progressBar(&v),
		Progress: progressText(&v), Paused: v.State == api.RolloutPaused, SpecYAML: specYAML(v.Spec), Prefetch: prefetchText(&v)}
	d.Flow, d.Ends = funnel(&v)
	start, end := chartSpan(&v, c.cfg.Now())
	d.Chart = stateChart(v.Gateways, start, end)
	for o := range numOutcomes {
		d.Legend = append(d.Legend, stage{Name: outcomes[o].name, Class: outcomes[o].class})
	}
	for _, g := range v.Gateways {
		if outcomeOf(g.State) == outFailed || g.Code != "" {
			d.Failing = append(d.Failing, g)
		}
	}
	slices.SortStableFunc(d.Failing, func(a, b api.RolloutGateway) int { return a.FinishedAt.Compare(b.FinishedAt) })
	title := "Rollout " + v.ID
	if v.Spec.Name != "" {
		title = "Rollout " + v.Spec.Name
	}
	c.render(w, r, "rollout", view{Title: title, Nav: "rollouts", Live: "rollout.", Data: d})
}

// prefetchText is "12 of 20 hold the image · 3 in progress · 1 failed …",
// the prefetch phase's counts; "" for a rollout without one.
func prefetchText(v *api.RolloutView) string {
	if v.PrefetchCounts == nil {
		return ""
	}
	pc := v.PrefetchCounts
	parts := []string{fmt.Sprintf("%d of %d hold the image", pc[api.PrefetchSucceeded], v.Total)}
	for _, st := range []string{api.PrefetchInProgress, api.PrefetchQueued, api.PrefetchFailed, api.PrefetchTimedOut, api.PrefetchSkipped} {
		if pc[st] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", pc[st], strings.ToLower(strings.ReplaceAll(st, "_", " "))))
		}
	}
	return strings.Join(parts, " · ")
}

// specYAML writes a rollout's spec as the YAML cloud-sim rollout create
// -f reads (keys in alphabetical order).
func specYAML(spec api.RolloutSpec) string {
	raw, err := json.Marshal(spec)
	if err != nil {
		return err.Error()
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err.Error()
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return err.Error()
	}
	return b.String()
}

// maxRolloutForm bounds the create form's body.
const maxRolloutForm = 1 << 20

// rolloutCreate starts a rollout from the create form, whose deployment
// spec (or whole rollout) is YAML, which the browser cannot parse: it
// builds the RolloutSpec and calls POST /v1/rollouts in-process, replying
// with the API's reply or error (JSON, the error naming its field); with
// dryRun=true (the form's Check button) the API's dry run. The browser
// calls it like the API, with the session's CSRF token.
func (c *Console) rolloutCreate(w http.ResponseWriter, r *http.Request) {
	if !c.cfg.NoAuth && !validCSRF(c.cfg.Sessions.csrfFor(r), r.Header.Get(CSRFHeader)) {
		writeError(w, http.StatusForbidden, api.Error{Code: "PERMISSION_DENIED",
			Error: "starting a rollout needs a console session and its CSRF token: reload the page and log in again"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRolloutForm)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Code: "INVALID_ARGUMENT", Error: "the form could not be read: " + err.Error()})
		return
	}
	spec, err := specFromForm(r.PostForm)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.Error{Code: "INVALID_ARGUMENT", Field: errdefs.Field(err), Error: err.Error()})
		return
	}
	status := http.StatusCreated
	if r.PostForm.Get("dryRun") == "true" { // the form's Check button
		spec.DryRun, status = true, http.StatusOK
	}
	var raw []byte
	if err := c.api.Do(r.Context(), http.MethodPost, "/v1/rollouts", spec, nil, &raw); err != nil {
		if e, ok := errors.AsType[*apiclient.APIError](err); ok {
			writeError(w, e.Status, e.Body)
			return
		}
		writeError(w, http.StatusBadGateway, api.Error{Code: "UNAVAILABLE", Error: err.Error()})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(raw)
}

func writeError(w http.ResponseWriter, status int, e api.Error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

// specFromForm builds a RolloutSpec from the create form: with mode=yaml
// from the whole rollout in YAML, else from the form's fields, which are
// named by the spec's JSON paths (strategy.canary.count …) as the API's
// errors name them. An error names the field.
func specFromForm(f url.Values) (api.RolloutSpec, error) {
	if f.Get("mode") == "yaml" {
		spec, err := api.ParseRolloutSpec([]byte(f.Get("yaml")))
		if err != nil {
			return spec, errdefs.Invalid("yaml", "%v", err)
		}
		return spec, nil
	}
	fp := formParser{f: f}
	spec := api.RolloutSpec{
		Name:   strings.TrimSpace(f.Get("name")),
		Tenant: strings.TrimSpace(f.Get("tenant")),
		Targets: api.RolloutTargets{Selector: strings.TrimSpace(f.Get("targets.selector")),
			Groups: list(f.Get("targets.groups")), Gateways: list(f.Get("targets.gateways")),
			All: fp.bool("targets.all"), IncludeNew: fp.bool("targets.includeNew")},
		SkipRegistryCheck: fp.bool("skipRegistryCheck"),
		Strategy: api.Strategy{BatchSize: fp.int("strategy.batchSize"), BatchPercent: fp.float("strategy.batchPercent"),
			RatePerMinute: fp.float("strategy.ratePerMinute"), MaxInFlight: fp.int("strategy.maxInFlight"),
			GatewayTimeout: fp.duration("strategy.gatewayTimeout")},
		Abort: api.AbortCriteria{ThresholdPercent: fp.float("abort.thresholdPercent"), MinExecuted: fp.int("abort.minExecuted"),
			FailureKinds: f["abort.failureKinds"], Rollback: fp.bool("abort.rollback")},
	}
	if fp.bool("strategy.prefetch") {
		spec.Strategy.Prefetch = &api.Prefetch{}
	}
	if f.Get("strategy.canary.count") != "" || f.Get("strategy.canary.soak") != "" {
		spec.Strategy.Canary = &api.Canary{Count: fp.int("strategy.canary.count"), Soak: fp.duration("strategy.canary.soak")}
	}
	if doc := strings.TrimSpace(f.Get("deployment")); doc != "" && fp.err == nil {
		raw, err := api.DocumentJSON([]byte(doc))
		if err != nil {
			return spec, errdefs.Invalid("deployment", "is not YAML: %v", err)
		}
		spec.Deployment = raw
	}
	return spec, fp.err
}

// formParser reads typed form fields, keeping the first error.
type formParser struct {
	f   url.Values
	err error
}

func (p *formParser) value(name string) string { return strings.TrimSpace(p.f.Get(name)) }

func (p *formParser) fail(name, format string, args ...any) {
	if p.err == nil {
		p.err = errdefs.Invalid(name, format, args...)
	}
}

func (p *formParser) bool(name string) bool {
	v := p.value(name)
	return v == "on" || v == "true"
}

func (p *formParser) int(name string) int {
	v := p.value(name)
	if v == "" {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		p.fail(name, "%q is not a whole number", v)
	}
	return n
}

func (p *formParser) float(name string) float64 {
	v := p.value(name)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil {
		p.fail(name, "%q is not a number", v)
	}
	return n
}

func (p *formParser) duration(name string) api.Duration {
	v := p.value(name)
	if v == "" {
		return 0
	}
	var d api.Duration
	if err := d.UnmarshalJSON([]byte(strconv.Quote(v))); err != nil {
		p.fail(name, "%v", err)
	}
	return d
}

// list splits a list typed into one field: by commas, spaces or lines.
func list(s string) []string {
	f := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
	if len(f) == 0 {
		return nil
	}
	return f
}
