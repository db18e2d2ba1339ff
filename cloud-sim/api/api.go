// Package api is the fleet controller's HTTP API (JSON) for a management
// console and the cloud-sim CLI: gateways, commands and their outcomes,
// credentials (never their secrets), and a server-sent events stream of
// fleet changes. cloud-sim/README.md documents it with curl examples.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
	"github.com/fleet-agent/fleet/internal/errdefs"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Config configures the handler.
type Config struct {
	Controller *controller.Controller
	// Token is required as "Authorization: Bearer <token>" on every
	// request but GET /healthz. Without one every request is refused,
	// unless InsecureNoAuth (for tests only) lets all through.
	Token          string
	InsecureNoAuth bool
	// AllowedHosts are the values of Host (and an Origin's host) that
	// name this API: "host:port", or "host" for any port. Requests to
	// other names are refused (DNS rebinding); with none, every request.
	AllowedHosts []string
	// Sessions, when set, lets the web console's browser sessions in
	// without the token (package console).
	Sessions Sessions
	// MaxStreams caps concurrent event streams (DefaultMaxStreams when 0).
	MaxStreams int
	Logger     *slog.Logger
}

// MaxWait bounds how long a request may wait for command outcomes.
const MaxWait = 10 * time.Minute

// New returns the API handler.
func New(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	a := &api{c: cfg.Controller, log: cfg.Logger, streams: make(streams, cfg.MaxStreams)}
	mux := http.NewServeMux()
	for _, rt := range routes() {
		mux.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) { rt.handle(a, w, r) })
	}
	return newGuard(cfg, mux)
}

type api struct {
	c       *controller.Controller
	log     *slog.Logger
	streams streams
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
	Code  string `json:"code"`
	// Errors lists every refusal of a Compose file, "path: message" with
	// the path in the file (Field is then "compose").
	Errors []string `json:"errors,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (a *api) fail(w http.ResponseWriter, err error) {
	code := errdefs.Code(err)
	status := http.StatusInternalServerError
	switch code {
	case fleetv1.Reply_INVALID_ARGUMENT:
		status = http.StatusBadRequest
	case fleetv1.Reply_NOT_FOUND:
		status = http.StatusNotFound
	case fleetv1.Reply_UNAUTHENTICATED, fleetv1.Reply_PERMISSION_DENIED, fleetv1.Reply_TLS_FAILURE, fleetv1.Reply_POLICY_DENIED:
		status = http.StatusUnprocessableEntity
	case fleetv1.Reply_REGISTRY_UNREACHABLE:
		status = http.StatusBadGateway
	case fleetv1.Reply_UNSUPPORTED:
		status = http.StatusConflict
	}
	if errors.Is(err, rollout.ErrNoScheduler) {
		status = http.StatusServiceUnavailable
	}
	codeName := code.String()
	if errors.Is(err, controller.ErrGatewayOffline) {
		status, codeName = http.StatusConflict, "GATEWAY_OFFLINE"
	}
	// The registry refused (no such image, a rejected credential): 422,
	// so that a client tells it from a missing gateway or rollout (404).
	if _, ok := errors.AsType[*tenantcred.RegistryError](err); ok && code != fleetv1.Reply_REGISTRY_UNREACHABLE {
		status = http.StatusUnprocessableEntity
	}
	if status == http.StatusInternalServerError {
		a.log.Error("api", "err", err)
	}
	body := Error{Error: err.Error(), Field: errdefs.Field(err), Code: codeName, Errors: composeErrors(err)}
	if body.Errors != nil && body.Field == "" {
		body.Field = composeField
	}
	writeJSON(w, status, body)
}

// decode reads a JSON body into v, refusing unknown fields.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.Invalid("body", "is not the JSON this endpoint takes: %v", err)
	}
	return nil
}

func duration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errdefs.Invalid(field, "%q is not a duration such as 30s or 5m", s)
	}
	return min(d, MaxWait), nil
}

// GatewayList is the body of GET /v1/gateways: Count (the same as
// Total), Online and Stale count every gateway the query matched,
// Gateways holds the page from Offset, at most Limit of them (0: all).
type GatewayList struct {
	Count    int        `json:"count"`
	Online   int        `json:"online"`
	Stale    int        `json:"stale"`
	Total    int        `json:"total"`
	Offset   int        `json:"offset"`
	Limit    int        `json:"limit"`
	Gateways []*Gateway `json:"gateways"`
}

// MaxGatewayPage is the largest limit of GET /v1/gateways.
const MaxGatewayPage = 1000

func (a *api) listGateways(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	sel, err := inventory.ParseSelector(q.Get("selector"))
	if err != nil {
		a.fail(w, errdefs.Invalid("selector", "%v", err))
		return
	}
	f := inventory.Filter{Tenant: q.Get("tenant"), Selector: sel, Group: q.Get("group"), IDContains: q.Get("q")}
	if o := q.Get("online"); o != "" {
		b, err := strconv.ParseBool(o)
		if err != nil {
			a.fail(w, errdefs.Invalid("online", "must be true or false"))
			return
		}
		f.Online = &b
	}
	limit, err := intParam(q, "limit", 0, MaxGatewayPage)
	if err != nil {
		a.fail(w, err)
		return
	}
	offset, err := intParam(q, "offset", 0, math.MaxInt32)
	if err != nil {
		a.fail(w, err)
		return
	}
	p := a.c.GatewayPage(f, offset, limit)
	writeJSON(w, http.StatusOK, GatewayList{Count: p.Total, Online: p.Online, Stale: p.Stale, Total: p.Total, Offset: offset, Limit: limit,
		Gateways: gatewaysOf(p.Gateways)})
}

// intParam reads the query parameter name: def when absent, max when
// larger; a negative or malformed one is an error naming it.
func intParam(q url.Values, name string, def, max int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, errdefs.Invalid(name, "%q is not a whole number of 0 or more", s)
	}
	return min(n, max), nil
}

func (a *api) overview(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, overviewOf(a.c.Overview(r.URL.Query().Get("tenant"))))
}

func (a *api) gateway(w http.ResponseWriter, r *http.Request) (*Gateway, bool) {
	g, ok := a.c.Gateway(r.PathValue("tenant"), r.PathValue("id"))
	if !ok {
		a.fail(w, &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("no gateway %s/%s in the inventory", r.PathValue("tenant"), r.PathValue("id"))})
		return nil, false
	}
	return gatewayOf(g), true
}

func (a *api) getGateway(w http.ResponseWriter, r *http.Request) {
	if g, ok := a.gateway(w, r); ok {
		writeJSON(w, http.StatusOK, g)
	}
}

func (a *api) getMetrics(w http.ResponseWriter, r *http.Request) {
	list, cpus, ok := a.c.Metrics(r.PathValue("tenant"), r.PathValue("id"))
	if !ok {
		a.fail(w, &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: fmt.Sprintf("no gateway %s/%s in the inventory", r.PathValue("tenant"), r.PathValue("id"))})
		return
	}
	writeJSON(w, http.StatusOK, metricsOf(list, cpus))
}

func (a *api) getDeployments(w http.ResponseWriter, r *http.Request) {
	if g, ok := a.gateway(w, r); ok {
		writeJSON(w, http.StatusOK, map[string]any{"deployments": g.Deployments})
	}
}

// ProvisionRequest is the body of POST /v1/gateways/{tenant}/{id}/provision:
// the groups and labels the cloud assigns the gateway. On re-provisioning
// (a new password) an absent one keeps what the gateway has.
type ProvisionRequest struct {
	Groups []string          `json:"groups,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Provisioned is a gateway's new MQTT identity; the password is shown once.
type Provisioned struct {
	Username string `json:"username"`
	ClientID string `json:"clientId"`
	Password string `json:"password"`
	// CommandSigningKeys are the tenant's valid command-signing keys: the
	// gateway's --command-signing-keys file is {"keys": CommandSigningKeys}.
	CommandSigningKeys []cmdsig.PublicKey `json:"commandSigningKeys,omitempty"`
}

func (a *api) provision(w http.ResponseWriter, r *http.Request) {
	var req ProvisionRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			a.fail(w, err)
			return
		}
	}
	tenant, id := r.PathValue("tenant"), r.PathValue("id")
	pw, err := a.c.Provision(r.Context(), tenant, id, identity.Assignment{Groups: req.Groups, Labels: req.Labels})
	if err != nil {
		a.fail(w, err)
		return
	}
	keys, err := a.c.CommandKeys(r.Context(), tenant)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, Provisioned{Username: tenant + "/" + id, ClientID: tenant + "/" + id, Password: pw, CommandSigningKeys: keys})
}

// SimulatedRequest is the body of POST /v1/simulated: provision Count
// simulated gateways {Prefix}1…{Prefix}{Count} of Tenant sharing one
// password, for `cloud-sim fleet`, with Groups and Labels (by default the
// labels simulated gateways announce, simfleet.DefaultLabels).
type SimulatedRequest struct {
	Tenant string            `json:"tenant"`
	Prefix string            `json:"prefix"`
	Count  int               `json:"count"`
	Groups []string          `json:"groups,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
}

func (a *api) provisionSimulated(w http.ResponseWriter, r *http.Request) {
	var req SimulatedRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Count <= 0 || req.Count > 100000 {
		a.fail(w, errdefs.Invalid("count", "must be 1-100000"))
		return
	}
	gws := make([]identity.Gateway, req.Count)
	for i := range gws {
		labels := req.Labels
		if labels == nil {
			labels = simfleet.DefaultLabels(i + 1)
		}
		gws[i] = identity.Gateway{ID: fmt.Sprintf("%s%d", req.Prefix, i+1), Assignment: identity.Assignment{Groups: req.Groups, Labels: labels}}
	}
	pw := identity.NewPassword()
	if err := a.c.ProvisionMany(r.Context(), req.Tenant, gws, pw); err != nil {
		a.fail(w, err)
		return
	}
	keys, err := a.c.CommandKeys(r.Context(), req.Tenant)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, Provisioned{Password: pw, CommandSigningKeys: keys})
}

// CommandRequest is the body of POST /v1/commands. Command is a protocol
// Command in protojson (its id and times are assigned per gateway).
type CommandRequest struct {
	Target            Target          `json:"target"`
	Command           json.RawMessage `json:"command"`
	Wait              string          `json:"wait,omitempty"`
	ExpiresIn         string          `json:"expiresIn,omitempty"`
	SkipRegistryCheck bool            `json:"skipRegistryCheck,omitempty"`
	// DryRun checks everything as for sending, and sends and stores
	// nothing: the reply is a DryRun.
	DryRun bool `json:"dryRun,omitempty"`
	// Compose is a Compose file (YAML text) translated on the server into
	// the spec of the deploy (or prefetch) in Command, which then gives
	// only the deployment's name (else the file's top-level name) and
	// revision; Command may be absent for a deploy. docs/compose.md.
	Compose string `json:"compose,omitempty"`
	// ComposeEnv is the only source of the file's ${VAR} interpolation.
	ComposeEnv map[string]string `json:"composeEnv,omitempty"`
}

func (a *api) sendCommand(w http.ResponseWriter, r *http.Request) {
	var req CommandRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	cmd := new(fleetv1.Command)
	if len(req.Command) > 0 || req.Compose == "" {
		if err := protojson.Unmarshal(req.Command, cmd); err != nil {
			a.fail(w, errdefs.Invalid("command", "is not a protocol Command in JSON: %v", err))
			return
		}
	}
	var warnings []string
	if req.Compose != "" {
		var err error
		if warnings, err = composeCommand(r.Context(), cmd, req.Compose, req.ComposeEnv); err != nil {
			a.fail(w, err)
			return
		}
	}
	wait, err := duration("wait", req.Wait)
	if err != nil {
		a.fail(w, err)
		return
	}
	exp, err := duration("expiresIn", req.ExpiresIn)
	if err != nil {
		a.fail(w, err)
		return
	}
	if req.DryRun {
		d, err := a.c.DryRun(r.Context(), req.Target.domain(), cmd, controller.SendOptions{ExpiresIn: exp, SkipRegistryCheck: req.SkipRegistryCheck})
		if err != nil {
			a.fail(w, err)
			return
		}
		out := dryRunOf(d)
		out.Warnings = append(warnings, out.Warnings...)
		writeJSON(w, http.StatusOK, out)
		return
	}
	b, err := a.c.Send(r.Context(), req.Target.domain(), cmd, controller.SendOptions{ExpiresIn: exp, SkipRegistryCheck: req.SkipRegistryCheck})
	if err != nil {
		a.fail(w, err)
		return
	}
	if wait > 0 {
		holdFor(w, wait)
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		defer cancel()
		if v, err := a.c.Wait(ctx, b.ID, nil); err == nil {
			b = v
		}
	}
	out := batchViewOf(b)
	out.Warnings = append(warnings, out.Warnings...)
	writeJSON(w, http.StatusCreated, out)
}

func (a *api) getCommand(w http.ResponseWriter, r *http.Request) {
	cmd, ok := a.c.Command(r.PathValue("id"))
	if !ok {
		a.fail(w, &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: "no command " + r.PathValue("id")})
		return
	}
	writeJSON(w, http.StatusOK, commandOf(cmd))
}

// MaxCommands is the largest limit of GET /v1/commands.
const MaxCommands = 1000

func (a *api) listCommands(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := dispatch.Filter{Tenant: q.Get("tenant"), Gateway: q.Get("gateway"), Verb: q.Get("verb"), Batch: q.Get("batch"),
		State: dispatch.State(q.Get("state")), Code: q.Get("code")}
	switch f.State {
	case "", dispatch.Pending, dispatch.Accepted, dispatch.Succeeded, dispatch.Failed, dispatch.Rejected, dispatch.Undelivered:
	default:
		a.fail(w, errdefs.Invalid("state", "%q: use PENDING, ACCEPTED, SUCCEEDED, FAILED, REJECTED or UNDELIVERED", f.State))
		return
	}
	limit, err := intParam(q, "limit", 100, MaxCommands)
	if err != nil {
		a.fail(w, err)
		return
	}
	if limit == 0 {
		limit = 100
	}
	list := a.c.Commands(f, limit)
	out := make([]*Command, len(list))
	for i, c := range list {
		out[i] = commandOf(c)
	}
	writeJSON(w, http.StatusOK, map[string]any{"commands": out})
}

func (a *api) listBatches(w http.ResponseWriter, r *http.Request) {
	limit, _ := strconv.Atoi(r.URL.Query().Get("limit"))
	if limit <= 0 {
		limit = 50
	}
	writeJSON(w, http.StatusOK, map[string]any{"batches": batchesOf(a.c.Batches(limit))})
}

func (a *api) getBatch(w http.ResponseWriter, r *http.Request) {
	wait, err := duration("wait", r.URL.Query().Get("wait"))
	if err != nil {
		a.fail(w, err)
		return
	}
	holdFor(w, wait)
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	b, err := a.c.Wait(ctx, r.PathValue("id"), nil)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, batchViewOf(b))
}

func (a *api) listCredentials(w http.ResponseWriter, r *http.Request) {
	list := []CredentialView{}
	for _, v := range a.c.Credentials(r.PathValue("tenant")) {
		list = append(list, credentialOf(v))
	}
	writeJSON(w, http.StatusOK, map[string]any{"credentials": list})
}

// CredentialRequest is the body of PUT /v1/tenants/{tenant}/credentials.
// Credential is a protocol Credential in protojson.
type CredentialRequest struct {
	Credential  json.RawMessage `json:"credential"`
	IssueTokens bool            `json:"issueTokens,omitempty"`
	CheckImage  string          `json:"checkImage,omitempty"`
}

func (a *api) setCredential(w http.ResponseWriter, r *http.Request) {
	var req CredentialRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	cr := new(fleetv1.Credential)
	if err := protojson.Unmarshal(req.Credential, cr); err != nil {
		a.fail(w, errdefs.Invalid("credential", "is not a protocol Credential in JSON: %v", err))
		return
	}
	v, err := a.c.SetCredential(r.Context(), r.PathValue("tenant"), cr, tenantcred.Options{IssueTokens: req.IssueTokens, CheckImage: req.CheckImage})
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, credentialOf(*v))
}

func (a *api) deleteCredential(w http.ResponseWriter, r *http.Request) {
	if err := a.c.DeleteCredential(r.Context(), r.PathValue("tenant"), r.PathValue("registry")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// PushRequest is the body of POST /v1/tenants/{tenant}/credentials/push:
// send the stored credential for Registry, sealed, to the target gateways.
type PushRequest struct {
	Target   Target `json:"target"`
	Registry string `json:"registry"`
}

func (a *api) pushCredential(w http.ResponseWriter, r *http.Request) {
	var req PushRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Target.Tenant == "" {
		req.Target.Tenant = r.PathValue("tenant")
	}
	if req.Target.Tenant != r.PathValue("tenant") {
		a.fail(w, errdefs.Invalid("target.tenant", "must be the tenant of the path"))
		return
	}
	b, err := a.c.PushCredential(r.Context(), req.Target.domain(), req.Registry)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, batchViewOf(b))
}

func (a *api) checkRegistry(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Image string `json:"image"`
	}
	if err := decode(r, &req); err != nil {
		a.fail(w, err)
		return
	}
	if req.Image == "" {
		a.fail(w, errdefs.Invalid("image", "is required, e.g. registry.example.com/team/app:1.2"))
		return
	}
	res, err := a.c.CheckRegistry(r.Context(), r.PathValue("tenant"), req.Image)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, CheckResult(*res))
}

func (a *api) createRollout(w http.ResponseWriter, r *http.Request) {
	var spec RolloutSpec
	if err := decode(r, &spec); err != nil {
		a.fail(w, err)
		return
	}
	var warnings []string
	if spec.Compose != "" {
		var err error
		if warnings, err = composeRollout(r.Context(), &spec); err != nil {
			a.fail(w, err)
			return
		}
	}
	if spec.DryRun {
		d, err := a.c.DryRunRollout(r.Context(), spec.domain())
		if err != nil {
			a.fail(w, err)
			return
		}
		out := dryRunOf(d)
		out.Warnings = append(warnings, out.Warnings...)
		writeJSON(w, http.StatusOK, out)
		return
	}
	v, err := a.c.CreateRollout(r.Context(), spec.domain())
	if err != nil {
		a.fail(w, err)
		return
	}
	out := rolloutViewOf(v)
	out.Warnings = append(warnings, out.Warnings...)
	writeJSON(w, http.StatusCreated, out)
}

func (a *api) listRollouts(w http.ResponseWriter, _ *http.Request) {
	list := []*RolloutView{}
	for _, s := range a.c.Rollouts() {
		list = append(list, rolloutViewOf(s))
	}
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": list})
}

func (a *api) getRollout(w http.ResponseWriter, r *http.Request) {
	v, ok := a.c.RolloutStatus(r.PathValue("id"), r.URL.Query().Get("gateways") == "true")
	if !ok {
		a.fail(w, &errdefs.FieldError{Field: "id", Kind: errdefs.ErrNotFound, Msg: "no rollout " + r.PathValue("id")})
		return
	}
	writeJSON(w, http.StatusOK, rolloutViewOf(v))
}

func (a *api) rolloutAction(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var err error
	action := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	switch action {
	case "pause":
		err = a.c.PauseRollout(r.Context(), id)
	case "resume":
		err = a.c.ResumeRollout(r.Context(), id)
	case "cancel":
		err = a.c.CancelRollout(r.Context(), id)
	default:
		err = errdefs.Invalid("action", "%q: use pause, resume or cancel", action)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	v, _ := a.c.RolloutStatus(id, false)
	writeJSON(w, http.StatusOK, rolloutViewOf(v))
}

// events streams fleet changes as server-sent events ("event: <kind>",
// "id: <cursor>", "data: <Change JSON>"), filtered as GET /v1/changes is
// (changeFilter); a comment line every 15 s keeps proxies from closing
// the stream, and an "event: lagged" says that changes were dropped
// because the client read too slowly. A stream resumes after a cursor:
// the Last-Event-ID a reconnecting EventSource sends, else the query's
// after (GET /v1/changes' cursor), and sends first the changes kept since
// (lagged first when some are not known). A stream has no read or write
// deadline; at most MaxStreams run at once.
func (a *api) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		a.fail(w, errors.New("streaming unsupported"))
		return
	}
	f, err := changeFilter(r.URL.Query())
	if err != nil {
		a.fail(w, err)
		return
	}
	cursor := r.Header.Get("Last-Event-ID") // what this server gave: not checked
	if cursor == "" {
		if cursor = r.URL.Query().Get("after"); cursor != "" {
			if _, _, err := changes.ParseCursor(cursor); err != nil {
				a.fail(w, &errdefs.FieldError{Field: "after", Kind: errdefs.ErrInvalidArgument, Msg: err.Error()})
				return
			}
		}
	}
	if !a.streams.acquire() {
		w.Header().Set("Retry-After", "10")
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: fmt.Sprintf("too many event streams (%d) are open: close one, or raise cloud-sim serve --api-max-streams", cap(a.streams)), Code: "NO_SPACE"})
		return
	}
	defer a.streams.release()
	holdFor(w, 0)
	var sub *changes.Subscription
	var since []changes.Change
	gap := false
	if cursor != "" {
		sub, since, gap = a.c.SubscribeAfter(cursor, 4096)
	} else {
		sub = a.c.Subscribe(4096)
	}
	defer sub.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": fleet changes\n\n")
	if gap {
		io.WriteString(w, "event: lagged\ndata: {}\n\n")
	}
	for _, ch := range since {
		writeChange(w, sub, f, ch)
	}
	fl.Flush()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-keep.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case ch := <-sub.C:
			if !writeChanges(w, sub, f, ch) {
				continue
			}
		}
		fl.Flush()
	}
}

// writeChanges writes ch and the changes already waiting behind it (up to
// 256) as server-sent events, so that a burst costs one flush, not one
// each; it reports whether it wrote anything.
func writeChanges(w io.Writer, sub *changes.Subscription, f changes.Filter, ch changes.Change) bool {
	wrote := false
	for i := 0; ; i++ {
		if sub.Lagged() {
			io.WriteString(w, "event: lagged\ndata: {}\n\n")
			wrote = true
		}
		if writeChange(w, sub, f, ch) {
			wrote = true
		}
		if i == 255 {
			return wrote
		}
		select {
		case ch = <-sub.C:
		default:
			return wrote
		}
	}
}

// writeChange writes ch as a server-sent event if f selects it, and
// reports whether it did.
func writeChange(w io.Writer, sub *changes.Subscription, f changes.Filter, ch changes.Change) bool {
	if !f.Matches(ch) {
		return false
	}
	_ = sub.WriteEvent(w, ch) // a client gone ends the stream at its context
	return true
}

// changeFilter reads the query of GET /v1/changes and /v1/events: tenant,
// gateway, kind (exact, or its first part: "command"), and severity, one
// or more of info, warning, error separated by commas.
func changeFilter(q url.Values) (changes.Filter, error) {
	f := changes.Filter{Tenant: q.Get("tenant"), Gateway: q.Get("gateway"), Kind: q.Get("kind")}
	for s := range strings.SplitSeq(q.Get("severity"), ",") {
		switch sev := changes.Severity(strings.TrimSpace(s)); sev {
		case "":
		case changes.Info, changes.Warning, changes.Error:
			f.Severities = append(f.Severities, sev)
		default:
			return f, errdefs.Invalid("severity", "%q: use info, warning or error (several separated by commas)", s)
		}
	}
	return f, nil
}

// ChangeList is the body of GET /v1/changes: the latest changes, newest
// first, and the cursor from which GET /v1/events?after= streams what
// came after them.
type ChangeList struct {
	Changes []changes.Change `json:"changes"`
	Cursor  string           `json:"cursor"`
}

// MaxChanges is the largest limit of GET /v1/changes.
const MaxChanges = changes.History

func (a *api) listChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := changeFilter(q)
	if err != nil {
		a.fail(w, err)
		return
	}
	limit, err := intParam(q, "limit", 100, MaxChanges)
	if err != nil {
		a.fail(w, err)
		return
	}
	if limit == 0 {
		limit = 100
	}
	list, cursor := a.c.Changes(f, limit)
	writeJSON(w, http.StatusOK, ChangeList{Changes: list, Cursor: cursor})
}
