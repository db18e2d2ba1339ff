package console

import (
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// exampleSpec prefills the deploy page's editor: a protocol
// DeploymentSpec as `cloud-sim deploy -f` reads it.
const exampleSpec = `# A deployment spec (protocol DeploymentSpec), as cloud-sim deploy -f reads it.
name: web
revision: 1
image: registry.example.com/team/web:1.0
env:
  PORT: "8080"
ports:
  - containerPort: 8080
    hostPort: 8080
restartPolicy:
  mode: UNLESS_STOPPED
`

// exampleCompose prefills the editor when the page switches to a Compose
// file: an application of two services.
const exampleCompose = `# A Compose file: each service runs one container; docs/compose.md.
services:
  db:
    image: registry.example.com/team/postgres:16
    environment:
      POSTGRES_PASSWORD: ${DB_PASSWORD}
    volumes: ["data:/var/lib/postgresql/data"]
    healthcheck:
      test: ["CMD", "pg_isready", "-U", "postgres"]
      interval: 5s
  web:
    image: registry.example.com/team/web:1.0
    ports: ["8080:8080"]
    depends_on:
      db: {condition: service_healthy}
    restart: unless-stopped
volumes:
  data: {}
`

// specField is the prefix of the API's field names that fall inside the
// YAML editor's document.
const specField = "command.deploy.spec"

// deployData is what the deploy page shows: the target prefilled from
// the query string, the tenants to pick from, and the editor's spec.
type deployData struct {
	Target  api.Target
	Tenants []string
	Spec    string
	Compose string
}

// deploy renders the deploy page: editor, target, check and outcomes.
func (c *Console) deploy(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d := deployData{Spec: exampleSpec, Compose: exampleCompose, Target: api.Target{Tenant: q.Get("tenant"), Selector: q.Get("selector"), Group: q.Get("group"), All: q.Get("all") == "true"}}
	for g := range strings.SplitSeq(q.Get("gateways"), ",") {
		if g = strings.TrimSpace(g); g != "" {
			d.Target.Gateways = append(d.Target.Gateways, g)
		}
	}
	tenants, err := c.tenants(r)
	if err != nil {
		c.fail(w, r, "Deploy", err)
		return
	}
	d.Tenants = tenants
	if d.Target.Tenant == "" && len(tenants) > 0 {
		d.Target.Tenant = tenants[0]
	}
	c.render(w, r, "deploy", view{Title: "Deploy", Nav: "deploy", Data: d})
}

// tenantSample bounds the gateways read to name the tenants a picker
// offers; the picker is an input, so other tenants can be typed.
const tenantSample = 1000

// tenants lists the tenants of the first gateways of the inventory.
func (c *Console) tenants(r *http.Request) ([]string, error) {
	var l api.GatewayList
	if err := c.get(r.Context(), "/v1/gateways?limit=1000", &l); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, g := range l.Gateways[:min(len(l.Gateways), tenantSample)] {
		if !seen[g.Tenant] {
			seen[g.Tenant] = true
			out = append(out, g.Tenant)
		}
	}
	sort.Strings(out)
	return out, nil
}

// deployRequest is what the deploy page posts to /deploy/check and
// /deploy/send: a target and the editor's YAML; with Compose, the YAML is
// a Compose file the API translates, with the deployment's name (else the
// file's) and revision, and the variables of its ${VAR}.
type deployRequest struct {
	Target            api.Target        `json:"target"`
	YAML              string            `json:"yaml"`
	SkipRegistryCheck bool              `json:"skipRegistryCheck,omitempty"`
	Compose           bool              `json:"compose,omitempty"`
	Name              string            `json:"name,omitempty"`
	Revision          int64             `json:"revision,omitempty"`
	Env               map[string]string `json:"env,omitempty"`
}

// deployError is the body of a refused check or send: the API's Error,
// and where it points in the editor's YAML (path from the spec's root,
// line from 1), when it names a field of the spec.
type deployError struct {
	api.Error
	Path string `json:"path,omitempty"`
	Line int    `json:"line,omitempty"`
}

// deployCheck converts the editor's YAML into a deploy command and asks
// the API for a dry run: the gateways it targets and the registry check.
func (c *Console) deployCheck(w http.ResponseWriter, r *http.Request) { c.deployPost(w, r, true) }

// deploySend converts the editor's YAML and sends the deploy: the reply
// is the API's batch, which the page follows.
func (c *Console) deploySend(w http.ResponseWriter, r *http.Request) { c.deployPost(w, r, false) }

// deployPost is the console's only conversion (YAML to the protojson
// command the API takes, api.Doc, as the CLI reads -f); everything else
// is the API's, called in-process, whose reply or error it relays.
func (c *Console) deployPost(w http.ResponseWriter, r *http.Request, dryRun bool) {
	if !c.cfg.NoAuth && !validCSRF(c.cfg.Sessions.csrfFor(r), r.Header.Get(CSRFHeader)) {
		writeJSON(w, http.StatusForbidden, deployError{Error: api.Error{Error: "this needs a console session and its CSRF token: reload the page (and log in again)", Field: CSRFHeader, Code: "PERMISSION_DENIED"}})
		return
	}
	var req deployRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, deployError{Error: api.Error{Error: "the page sent a body this endpoint does not take: " + err.Error(), Field: "body", Code: "INVALID_ARGUMENT"}})
		return
	}
	creq := api.CommandRequest{Target: req.Target, SkipRegistryCheck: req.SkipRegistryCheck, DryRun: dryRun}
	var doc *api.Doc
	if req.Compose {
		// The API translates the file; the spec gives its name and revision.
		creq.Command, _ = protojson.Marshal(&fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{
			Spec: &fleetv1.DeploymentSpec{Name: req.Name, Revision: req.Revision}}}})
		creq.Compose, creq.ComposeEnv = req.YAML, req.Env
	} else {
		var err error
		doc, err = api.ParseDoc([]byte(req.YAML))
		spec := new(fleetv1.DeploymentSpec)
		if err == nil {
			err = doc.Decode(spec)
		}
		if de, ok := errors.AsType[*api.DocError](err); ok {
			writeJSON(w, http.StatusBadRequest, yamlError(de))
			return
		} else if err != nil {
			writeJSON(w, http.StatusBadRequest, deployError{Error: api.Error{Error: err.Error(), Field: specField, Code: "INVALID_ARGUMENT"}})
			return
		}
		creq.Command, _ = protojson.Marshal(&fleetv1.Command{Body: &fleetv1.Command_Deploy{Deploy: &fleetv1.Deploy{Spec: spec}}})
	}
	var raw []byte
	err := c.api.Do(r.Context(), http.MethodPost, "/v1/commands", creq, nil, &raw)
	if ae, ok := errors.AsType[*apiclient.APIError](err); ok {
		writeJSON(w, ae.Status, apiError(ae, doc))
		return
	} else if err != nil {
		writeJSON(w, http.StatusBadGateway, deployError{Error: api.Error{Error: err.Error(), Code: "UNAVAILABLE"}})
		return
	}
	status := http.StatusCreated
	if dryRun {
		status = http.StatusOK
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(raw)
}

// yamlError is a YAML that is no deployment spec, pointed at its line.
func yamlError(de *api.DocError) deployError {
	field := specField
	if de.Key != "" {
		field += "." + de.Key
	}
	return deployError{Error: api.Error{Error: de.Msg, Field: field, Code: "INVALID_ARGUMENT"}, Path: de.Key, Line: de.Line}
}

// apiError relays the API's error; one naming a field of the spec gets
// that field's path and line in the YAML.
func apiError(ae *apiclient.APIError, doc *api.Doc) deployError {
	out := deployError{Error: ae.Body}
	if path, ok := strings.CutPrefix(ae.Body.Field, specField+"."); ok && doc != nil {
		out.Path, out.Line = path, doc.Line(path)
	}
	return out
}

// writeJSON writes v as the JSON reply of a console endpoint.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
