package api

import (
	"fmt"
	"net/http"
	"strings"
)

// route is one endpoint as it is served and as it is documented:
// cloud-sim/README.md holds Reference(), and TestREADMEListsTheRoutes
// keeps the two the same.
type route struct {
	method, path string
	// query lists the query parameters, body the request body.
	query, body string
	// status is the success status; reply what comes with it.
	status int
	reply  string
	// errors lists the error statuses besides 401 (with a token) and 500.
	errors string
	handle func(*api, http.ResponseWriter, *http.Request)
}

const (
	registryErrors = "400, 404 no such gateway (or none selected), 422 the registry refused the image or credential, 502 the cloud cannot reach the registry"
	rolloutErrors  = "400, 404 no such rollout, 503 no replica schedules rollouts (the lease is changing hands)"
)

func routes() []route {
	return []route{
		{method: "GET", path: "/healthz", status: 200, reply: "`{status}`", handle: (*api).health},
		{method: "GET", path: "/v1/gateways", query: "tenant, selector, group, online, q (id contains, any case), limit (0: all; at most 1000), offset", status: 200, reply: "`{count, online, stale, total, offset, limit, gateways: [Gateway]}` by tenant, then id in natural order (sim-2 before sim-10); the counts are of all matched", errors: "400", handle: (*api).listGateways},
		{method: "GET", path: "/v1/overview", query: "tenant (all when absent)", status: 200, reply: "Overview `{gateways: {total, online, offline, stale}, agentVersions, engineVersions, deployments: {byPhase, byHealth, total}, activeRollouts: [RolloutView], failing: [FailingDeployment], failingTotal, expiringCredentials: [ExpiringCredential], expiringCredentialsTotal}`", handle: (*api).overview},
		{method: "GET", path: "/v1/replica", status: 200, reply: "Replica `{leader, ingested}`: whether this replica schedules rollouts, and the gateway publications (births, deaths, statuses, metrics, events) it has applied since it started", handle: (*api).replica},
		{method: "GET", path: "/v1/gateways/{tenant}/{id}", status: 200, reply: "Gateway, with `sessions: [{session, connectedAt, disconnectedAt, deathReason}]`, the latest 10, newest first", errors: "404", handle: (*api).getGateway},
		{method: "GET", path: "/v1/gateways/{tenant}/{id}/metrics", status: 200, reply: "`{samples: [{at, load1, cpus, memoryUsedPercent, diskUsedPercent, running}]}`: the heartbeats of the last hour, one a minute, oldest first; in memory only (not stored in NATS: a restart or another replica starts empty)", errors: "404", handle: (*api).getMetrics},
		{method: "GET", path: "/v1/gateways/{tenant}/{id}/deployments", status: 200, reply: "`{deployments: {name: Deployment}}`", errors: "404", handle: (*api).getDeployments},
		{method: "GET", path: "/v1/gateways/{tenant}/{id}/deployments/{name}/logs", query: "service (one service of an application; all when absent), tail (lines; 0: the last 100, or all since `since`; at most 100000), since and until (a duration like 10m, back from now for since and ahead for until, or an RFC 3339 instant), follow (true: new lines until `until`, 10 minutes at most, or until the client goes away; `until` only with it)", status: 200, reply: "server-sent events in order: `event: line` `{at, service, stream, text}`, `event: dropped` `{by: gateway or cloud, lines, bytes, chunks}`, last `event: end` `{command, reason, code, message}`; the client's going away cancels a follow on the gateway", errors: "400 naming the parameter, 404 no such gateway, 409 the gateway is offline, 503 too many streams", handle: (*api).logs},
		{method: "POST", path: "/v1/gateways/{tenant}/{id}/provision", body: "`{groups, labels}` (optional; re-provisioning keeps absent ones)", status: 201, reply: "`{username, clientId, password, commandSigningKeys}`, the password shown once; a session logged in with the old one is disconnected", errors: "400", handle: (*api).provision},
		{method: "POST", path: "/v1/gateways/{tenant}/{id}/deprovision", status: 200, reply: "`{tenant, id, disconnected, inventory: \"kept\"}`; the identity is deleted, a live session disconnected", errors: "404", handle: (*api).deprovision},
		{method: "GET", path: "/v1/gateways/{tenant}/{id}/identity", status: 200, reply: "Identity", errors: "404 not provisioned", handle: (*api).getIdentity},
		{method: "PUT", path: "/v1/gateways/{tenant}/{id}/labels", body: "`{labels: {k: v}}`, replacing all", status: 200, reply: "Identity", errors: "400, 404 not provisioned", handle: (*api).setLabels},
		{method: "PATCH", path: "/v1/gateways/{tenant}/{id}/labels", body: "`{labels: {k: v or null}}`, null removes", status: 200, reply: "Identity", errors: "400, 404 not provisioned", handle: (*api).setLabels},
		{method: "PUT", path: "/v1/gateways/{tenant}/{id}/groups", body: "`{groups}`", status: 200, reply: "Identity; a connected gateway whose groups changed is disconnected to log in under them", errors: "400, 404 not provisioned", handle: (*api).setGroups},
		{method: "POST", path: "/v1/simulated", body: "`{tenant, prefix, count, groups, labels}`", status: 201, reply: "`{password, commandSigningKeys}`, the password shared by `{prefix}1`…`{prefix}{count}`", errors: "400", handle: (*api).provisionSimulated},
		{method: "POST", path: "/v1/commands", body: "`{target: Target, command, wait, expiresIn, skipRegistryCheck, dryRun, compose, composeEnv}`; `compose`: a Compose file's text, translated into the spec of `command`'s deploy or prefetch (which then gives only name and revision; no `command`: a deploy), `${VAR}` from `composeEnv` only (docs/compose.md)", status: 201, reply: "BatchView (after `wait` at most); with `dryRun` 200 DryRun `{tenant, gateways, count, check, checks, warnings}`, checked as for sending (every service's image), nothing sent or stored", errors: registryErrors + "; a refused Compose file 400 with `errors: [\"path: message\"]`, every refused field", handle: (*api).sendCommand},
		{method: "GET", path: "/v1/commands", query: "tenant, gateway, verb, state, code, batch, limit (100; at most 1000)", status: 200, reply: "`{commands: [Command]}`, newest first, of those kept (finished ones for the retention)", errors: "400", handle: (*api).listCommands},
		{method: "GET", path: "/v1/commands/{id}", status: 200, reply: "Command", errors: "404", handle: (*api).getCommand},
		{method: "GET", path: "/v1/batches", query: "limit (50)", status: 200, reply: "`{batches: [Batch]}`, newest first", handle: (*api).listBatches},
		{method: "GET", path: "/v1/batches/{id}", query: "wait", status: 200, reply: "BatchView, once done or after `wait`", errors: "400, 404", handle: (*api).getBatch},
		{method: "GET", path: "/v1/tenants/{tenant}/credentials", status: 200, reply: "`{credentials: [CredentialView]}`, never secrets", handle: (*api).listCredentials},
		{method: "PUT", path: "/v1/tenants/{tenant}/credentials", body: "`{credential, issueTokens, checkImage}`", status: 200, reply: "CredentialView", errors: "400, 422 the registry refused `checkImage` with it, 502", handle: (*api).setCredential},
		{method: "DELETE", path: "/v1/tenants/{tenant}/credentials/{registry...}", status: 204, reply: "nothing; gateways keep their copy", errors: "400, 404", handle: (*api).deleteCredential},
		{method: "POST", path: "/v1/tenants/{tenant}/credentials/push", body: "`{target: Target, registry}`", status: 201, reply: "BatchView of the sealed set-credentials", errors: "400, 404", handle: (*api).pushCredential},
		{method: "GET", path: "/v1/tenants/{tenant}/command-signing-keys", status: 200, reply: "`{keys: [SigningKey]}`, the signer first (made on first use); a valid `--command-signing-keys` file", errors: "400", handle: (*api).listSigningKeys},
		{method: "POST", path: "/v1/tenants/{tenant}/command-signing-keys", status: 201, reply: "`{keys}` with a new staged key: valid, not signing until rotate", errors: "400", handle: (*api).addSigningKey},
		{method: "POST", path: "/v1/tenants/{tenant}/command-signing-keys/rotate", status: 200, reply: "`{keys}`: the staged (or a new) key signs; the old one stays valid", errors: "400", handle: (*api).rotateSigningKey},
		{method: "DELETE", path: "/v1/tenants/{tenant}/command-signing-keys/{id}", status: 200, reply: "`{keys}` without the retired key", errors: "400 the signer, 404", handle: (*api).retireSigningKey},
		{method: "POST", path: "/v1/tenants/{tenant}/check-registry", body: "`{image}`", status: 200, reply: "CheckResult, checked from the cloud", errors: "400", handle: (*api).checkRegistry},
		{method: "POST", path: "/v1/rollouts", body: "RolloutSpec (with `dryRun`; `compose` and `composeEnv` as for commands, translated into `deployment`, which then gives only name and revision)", status: 201, reply: "RolloutView; with `dryRun` 200 DryRun, nothing created", errors: registryErrors + ", 503 no replica schedules rollouts", handle: (*api).createRollout},
		{method: "GET", path: "/v1/rollouts", status: 200, reply: "`{rollouts: [RolloutView]}`, newest first", handle: (*api).listRollouts},
		{method: "GET", path: "/v1/rollouts/{id}", query: "gateways=true adds every gateway's record", status: 200, reply: "RolloutView", errors: "404", handle: (*api).getRollout},
		{method: "POST", path: "/v1/rollouts/{id}/pause", status: 200, reply: "RolloutView; nothing new is dispatched", errors: rolloutErrors, handle: (*api).rolloutAction},
		{method: "POST", path: "/v1/rollouts/{id}/resume", status: 200, reply: "RolloutView", errors: rolloutErrors, handle: (*api).rolloutAction},
		{method: "POST", path: "/v1/rollouts/{id}/cancel", status: 200, reply: "RolloutView; queued gateways CANCELED", errors: rolloutErrors, handle: (*api).rolloutAction},
		{method: "GET", path: "/v1/changes", query: "tenant, gateway, kind (or its first part: `command`), severity (info, warning, error; several with commas), limit (100; at most 2000)", status: 200, reply: "`{changes: [Change], cursor}`, newest first, of the last 2000 changes (in memory, every replica's: a restart forgets them); `cursor` is where `/v1/events?after=` resumes", errors: "400", handle: (*api).listChanges},
		{method: "GET", path: "/v1/events", query: "tenant, gateway, kind, severity, as for /v1/changes; after (a cursor: /v1/changes' or an event's id); header `Last-Event-ID`", status: 200, reply: "server-sent events, `event: {kind}`, `id: {cursor}`, `data: Change`; resumed after a cursor, the changes kept since come first", errors: "400 (`after` not a cursor)", handle: (*api).events},
	}
}

// Reference is the API's route table in Markdown, as cloud-sim/README.md
// shows it.
func Reference() string {
	var b strings.Builder
	b.WriteString("| method | path | query | body | success | errors |\n|---|---|---|---|---|---|\n")
	for _, r := range routes() {
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %d %s | %s |\n", r.method, r.path, dash(r.query), dash(r.body), r.status, r.reply, dash(r.errors))
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func (a *api) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *api) replica(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, Replica{Leader: a.c.Leader(), Ingested: a.c.Ingested()})
}
