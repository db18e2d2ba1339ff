package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// The wire types: what the HTTP API and the CLI speak. They are mapped
// from the controller's domain records in one place (map.go), so that
// renaming a field of a record changes neither what is stored nor what
// clients read, and renaming a field here changes only the API.

// Gateway is one gateway in the inventory, as its births, deaths,
// statuses and metrics describe it.
type Gateway struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
	// Online is true from a birth until a death of the same or a newer
	// session. Stale is set when an online gateway has sent nothing for
	// longer than the controller's stale threshold.
	Online       bool      `json:"online"`
	Stale        bool      `json:"stale,omitempty"`
	Session      uint64    `json:"session"`
	DeathSession uint64    `json:"deathSession,omitempty"`
	DeathReason  string    `json:"deathReason,omitempty"`
	ConnectedAt  time.Time `json:"connectedAt,omitzero"`
	LastSeen     time.Time `json:"lastSeen,omitzero"`

	AgentVersion    string  `json:"agentVersion,omitempty"`
	ProtocolVersion uint32  `json:"protocolVersion,omitempty"`
	Simulated       bool    `json:"simulated,omitempty"`
	Host            *Host   `json:"host,omitempty"`
	Engine          *Engine `json:"engine,omitempty"`
	// Labels and Groups are what the cloud assigned the gateway
	// (provisioning, PUT …/labels, PUT …/groups): commands, rollouts and
	// credentials are targeted by these. ReportedLabels and ReportedGroups
	// are what its birth says of itself: shown, never used to target.
	Labels         map[string]string `json:"labels,omitempty"`
	Groups         []string          `json:"groups,omitempty"`
	ReportedLabels map[string]string `json:"reportedLabels,omitempty"`
	ReportedGroups []string          `json:"reportedGroups,omitempty"`
	// Provisioned is whether the cloud holds an identity for the gateway:
	// false once deprovisioned (the record is kept), or for a gateway only
	// an external broker knows.
	Provisioned  bool     `json:"provisioned"`
	Capabilities []string `json:"capabilities,omitempty"`
	// PublicKey is the key credentials are sealed to.
	PublicKey   string                 `json:"publicKey,omitempty"`
	Deployments map[string]*Deployment `json:"deployments,omitempty"`
	Registries  []Registry             `json:"registries,omitempty"`
	Running     uint32                 `json:"running"`
	// Refused is what the controller refused of this gateway for
	// exceeding a limit (too many deployments, too many events), one
	// entry a limit.
	Refused []Refusal `json:"refused,omitempty"`
	// Sessions are its latest 10 sessions, newest first (GET
	// /v1/gateways/{tenant}/{id} only). DisconnectedAt is absent while a
	// session lasts, or when its death was never seen.
	Sessions []Session `json:"sessions,omitempty"`
}

// Session is one of a gateway's MQTT sessions, from its birth to its death.
type Session struct {
	Session        uint64    `json:"session"`
	ConnectedAt    time.Time `json:"connectedAt,omitzero"`
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	DeathReason    string    `json:"deathReason,omitempty"`
}

// Metrics is the body of GET /v1/gateways/{tenant}/{id}/metrics: the
// gateway's heartbeats of the last hour, one a minute, oldest first.
type Metrics struct {
	Samples []MetricSample `json:"samples"`
}

// MetricSample is one minute's heartbeat: the load average over a
// minute, the CPUs, the memory and disk in use in percent (0 when the
// gateway reports no totals), and the running containers.
type MetricSample struct {
	At                time.Time `json:"at"`
	Load1             float64   `json:"load1"`
	CPUs              uint32    `json:"cpus"`
	MemoryUsedPercent float64   `json:"memoryUsedPercent"`
	DiskUsedPercent   float64   `json:"diskUsedPercent"`
	Running           uint32    `json:"running"`
}

// Refusal is what the controller refused of a gateway for one limit: the
// latest refusal's message and how many there were.
type Refusal struct {
	Limit   string    `json:"limit"`
	Message string    `json:"message"`
	Count   uint64    `json:"count"`
	First   time.Time `json:"first"`
	Last    time.Time `json:"last"`
}

// Host is the gateway's machine.
type Host struct {
	Hostname    string `json:"hostname,omitempty"`
	OS          string `json:"os,omitempty"`
	Arch        string `json:"arch,omitempty"`
	CPUs        uint32 `json:"cpus,omitempty"`
	MemoryBytes uint64 `json:"memoryBytes,omitempty"`
}

// Engine is the gateway's container engine.
type Engine struct {
	Name      string `json:"name,omitempty"`
	Version   string `json:"version,omitempty"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

// Deployment is the last known status of one deployment on a gateway.
// Phase is the protocol's DeploymentStatus.Phase ("RUNNING"); Health is
// "starting", "healthy" or "unhealthy", absent without a health check.
type Deployment struct {
	Name         string    `json:"name"`
	Revision     int64     `json:"revision"`
	Phase        string    `json:"phase"`
	Health       string    `json:"health,omitempty"`
	Image        string    `json:"image,omitempty"`
	Digest       string    `json:"digest,omitempty"`
	ContainerID  string    `json:"containerId,omitempty"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	RestartCount uint32    `json:"restartCount,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero"`
	// Services are its services as its status reports them: an
	// application's, or a single container's one.
	Services []Service `json:"services,omitempty"`
}

// Service is one service of a deployment, as the gateway reports it.
type Service struct {
	Name         string `json:"name"`
	Phase        string `json:"phase"`
	Health       string `json:"health,omitempty"`
	Image        string `json:"image,omitempty"`
	Digest       string `json:"digest,omitempty"`
	ContainerID  string `json:"containerId,omitempty"`
	RestartCount uint32 `json:"restartCount,omitempty"`
	ExitCode     int32  `json:"exitCode,omitempty"`
	OOMKilled    bool   `json:"oomKilled,omitempty"`
	Code         string `json:"code,omitempty"`
	Message      string `json:"message,omitempty"`
}

// Registry is a credential a gateway holds, as its birth summarises it
// (never the secret).
type Registry struct {
	Registry    string    `json:"registry"`
	Kind        string    `json:"kind"`
	Username    string    `json:"username,omitempty"`
	Fingerprint string    `json:"fingerprint,omitempty"`
	ExpiresAt   time.Time `json:"expiresAt,omitzero"`
	Warning     string    `json:"warning,omitempty"`
}

// Target selects the gateways of one tenant a command goes to: a list, a
// label selector, a group, or All.
type Target struct {
	Tenant   string   `json:"tenant"`
	Gateways []string `json:"gateways,omitempty"`
	Selector string   `json:"selector,omitempty"`
	Group    string   `json:"group,omitempty"`
	All      bool     `json:"all,omitempty"`
}

// Command states. PENDING: published, no reply yet (an offline gateway's
// command waits in its session at the broker); ACCEPTED: taken, a final
// reply follows; the final ones are the reply's result; UNDELIVERED: the
// controller could not publish it.
const (
	StatePending     = "PENDING"
	StateAccepted    = "ACCEPTED"
	StateSucceeded   = "SUCCEEDED"
	StateFailed      = "FAILED"
	StateRejected    = "REJECTED"
	StateUndelivered = "UNDELIVERED"
)

// Command is one command to one gateway and its outcome.
type Command struct {
	ID      string `json:"id"`
	Batch   string `json:"batch"`
	Tenant  string `json:"tenant"`
	Gateway string `json:"gateway"`
	Verb    string `json:"verb"`
	State   string `json:"state"`
	// OfflineWhenSent: the gateway was offline; the broker holds the
	// command in its session until it reconnects.
	OfflineWhenSent bool   `json:"offlineWhenSent,omitempty"`
	Code            string `json:"code,omitempty"`
	Message         string `json:"message,omitempty"`
	Field           string `json:"field,omitempty"`
	// Reply is the final reply (status, registry check) as protojson.
	Reply      json.RawMessage `json:"reply,omitempty"`
	SentAt     time.Time       `json:"sentAt"`
	AcceptedAt time.Time       `json:"acceptedAt,omitzero"`
	FinishedAt time.Time       `json:"finishedAt,omitzero"`
	// Credentials a set-credentials carries (sealed), described.
	Credentials []Registry `json:"credentials,omitempty"`
}

// Final reports whether the command has its final outcome.
func (c *Command) Final() bool { return c.State != StatePending && c.State != StateAccepted }

// Failed reports whether the command ended other than SUCCEEDED.
func (c *Command) Failed() bool { return c.Final() && c.State != StateSucceeded }

// Batch is one request that sent commands to one or more gateways.
type Batch struct {
	ID        string    `json:"id"`
	Verb      string    `json:"verb"`
	Tenant    string    `json:"tenant"`
	CreatedAt time.Time `json:"createdAt"`
	Commands  []string  `json:"commands"`
	Warnings  []string  `json:"warnings,omitempty"`
}

// BatchView is a batch with its commands and counts per state.
type BatchView struct {
	Batch
	Commands []*Command     `json:"commands"`
	Counts   map[string]int `json:"counts"`
	Done     bool           `json:"done"`
	Failed   int            `json:"failed"`
}

// CredentialView describes a tenant's credential without its secret.
type CredentialView struct {
	Tenant      string `json:"tenant"`
	Registry    string `json:"registry"`
	Kind        string `json:"kind"`
	Username    string `json:"username,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	// IssueTokens (ecr): gateways get short-lived ecrToken credentials
	// issued by the controller, not the AWS keys; re-issued before expiry.
	IssueTokens      bool         `json:"issueTokens,omitempty"`
	TokenFingerprint string       `json:"tokenFingerprint,omitempty"`
	TokenExpiresAt   time.Time    `json:"tokenExpiresAt,omitzero"`
	TokenRefreshAt   time.Time    `json:"tokenRefreshAt,omitzero"`
	ExpiresAt        time.Time    `json:"expiresAt,omitzero"`
	HasCACertificate bool         `json:"hasCaCertificate,omitempty"`
	HasClientCert    bool         `json:"hasClientCertificate,omitempty"`
	RequireTLS       bool         `json:"requireTls,omitempty"`
	Insecure         bool         `json:"insecure,omitempty"`
	UpdatedAt        time.Time    `json:"updatedAt"`
	LastCheck        *CheckResult `json:"lastCheck,omitempty"`
}

// CheckResult is a check-registry made from the cloud.
type CheckResult struct {
	Image   string `json:"image"`
	OK      bool   `json:"ok"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Check is the RegistryCheck as protojson.
	Check     map[string]any `json:"check,omitempty"`
	Registry  string         `json:"registry,omitempty"` // the credential used, if any
	CheckedAt time.Time      `json:"checkedAt"`
}

// Duration is a time.Duration written as "90s" or "5m" in JSON and YAML.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"90s\" or \"5m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 90s or 5m", s)
	}
	*d = Duration(v)
	return nil
}

// RolloutSpec is what an operator asks for: a deployment revision to a set
// of gateways, with a strategy and abort criteria; the body of POST
// /v1/rollouts.
type RolloutSpec struct {
	Name    string         `json:"name,omitempty"`
	Tenant  string         `json:"tenant"`
	Targets RolloutTargets `json:"targets"`
	// Deployment is a protocol DeploymentSpec (protojson). With Compose it
	// gives only the name (else the file's) and the revision.
	Deployment json.RawMessage `json:"deployment"`
	// Compose is a Compose file (YAML text) translated on the server into
	// the deployment; ComposeEnv the only source of its ${VAR}
	// interpolation. docs/compose.md.
	Compose           string            `json:"compose,omitempty"`
	ComposeEnv        map[string]string `json:"composeEnv,omitempty"`
	SkipRegistryCheck bool              `json:"skipRegistryCheck,omitempty"`
	Strategy          Strategy          `json:"strategy"`
	Abort             AbortCriteria     `json:"abort"`
	// DryRun (in a request only) checks the spec, the image and the
	// targets as for creating, and creates nothing: the reply is a DryRun.
	DryRun bool `json:"dryRun,omitempty"`
}

// DryRun is the reply of POST /v1/commands and POST /v1/rollouts with
// dryRun: the gateways that would be targeted, and the registry check of
// the image from the cloud (absent when skipped or there is no image).
type DryRun struct {
	Tenant   string       `json:"tenant"`
	Gateways []string     `json:"gateways"`
	Count    int          `json:"count"`
	Check    *CheckResult `json:"check,omitempty"`
	// Checks are the checks of every image the spec pulls (an
	// application's services', by service name); Check is the first.
	Checks   []*CheckResult `json:"checks,omitempty"`
	Warnings []string       `json:"warnings,omitempty"`
}

// RolloutTargets selects the gateways: explicit ids, a label selector,
// groups, or the whole tenant; IncludeNew adds gateways that come to match
// while the rollout runs.
type RolloutTargets struct {
	Gateways   []string `json:"gateways,omitempty"`
	Selector   string   `json:"selector,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	All        bool     `json:"all,omitempty"`
	IncludeNew bool     `json:"includeNew,omitempty"`
}

// Strategy says how fast the rollout goes; see cloud-sim/README.md.
type Strategy struct {
	Canary         *Canary      `json:"canary,omitempty"`
	BatchSize      int          `json:"batchSize,omitempty"`
	BatchPercent   float64      `json:"batchPercent,omitempty"`
	MaxInFlight    int          `json:"maxInFlight,omitempty"`
	RatePerMinute  float64      `json:"ratePerMinute,omitempty"`
	Exponential    *Exponential `json:"exponential,omitempty"`
	GatewayTimeout Duration     `json:"gatewayTimeout,omitempty"`
	Deadline       Duration     `json:"deadline,omitempty"`
	// Prefetch stages the image on every target before the first deploy:
	// `true`, or {minPercent, timeout}.
	Prefetch *Prefetch `json:"prefetch,omitempty"`
}

// Prefetch is a rollout's prefetch phase. In a spec, `prefetch: true` is
// a phase with the defaults and `false` none.
type Prefetch struct {
	// MinPercent of the targets must hold the image when the phase ends,
	// or the rollout aborts before any deploy (0: no minimum).
	MinPercent float64 `json:"minPercent,omitempty"`
	// Timeout ends the phase at the latest (1h when absent).
	Timeout Duration `json:"timeout,omitempty"`
}

// UnmarshalJSON takes true for a phase with the defaults, besides the
// object; false is refused here (Strategy.UnmarshalJSON drops it).
func (p *Prefetch) UnmarshalJSON(b []byte) error {
	if string(b) == "true" {
		*p = Prefetch{}
		return nil
	}
	type plain Prefetch
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v plain
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("prefetch is true, false or {minPercent, timeout}: %w", err)
	}
	*p = Prefetch(v)
	return nil
}

// UnmarshalJSON reads a strategy, `prefetch: false` as no prefetch phase.
func (s *Strategy) UnmarshalJSON(b []byte) error {
	type plain Strategy
	var probe struct {
		Prefetch json.RawMessage `json:"prefetch"`
	}
	if err := json.Unmarshal(b, &probe); err == nil && string(probe.Prefetch) == "false" {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		delete(m, "prefetch")
		b, _ = json.Marshal(m)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v plain
	if err := dec.Decode(&v); err != nil {
		return err
	}
	*s = Strategy(v)
	return nil
}

// Canary is the first phase.
type Canary struct {
	Count int      `json:"count"`
	Soak  Duration `json:"soak,omitempty"`
}

// Exponential is an accelerating rate.
type Exponential struct {
	BaseRate        float64 `json:"baseRate"`
	IncrementFactor float64 `json:"incrementFactor"`
	StepEvery       int     `json:"stepEvery"`
	StepOn          string  `json:"stepOn,omitempty"` // "succeeded" (default) or "notified"
}

// AbortCriteria stop a bad release.
type AbortCriteria struct {
	FailureKinds     []string `json:"failureKinds,omitempty"`
	ThresholdPercent float64  `json:"thresholdPercent,omitempty"`
	MinExecuted      int      `json:"minExecuted,omitempty"`
	Rollback         bool     `json:"rollback,omitempty"`
}

// Per-gateway rollout states.
const (
	GwQueued      = "QUEUED"
	GwInProgress  = "IN_PROGRESS"
	GwSucceeded   = "SUCCEEDED"
	GwFailed      = "FAILED"
	GwTimedOut    = "TIMED_OUT"
	GwRejected    = "REJECTED"
	GwCanceled    = "CANCELED"
	GwRollingBack = "ROLLING_BACK"
	GwRolledBack  = "ROLLED_BACK"
)

// Rollout states.
const (
	RolloutRunning    = "RUNNING"
	RolloutPaused     = "PAUSED"
	RolloutSucceeded  = "SUCCEEDED"
	RolloutFailed     = "FAILED" // done, some gateways failed (under the abort threshold)
	RolloutAborted    = "ABORTED"
	RolloutCanceled   = "CANCELED"
	RolloutSuperseded = "SUPERSEDED"
)

// Rollout phases.
const (
	PhasePrefetch = "PREFETCHING"
	PhaseCanary   = "CANARY"
	PhaseSoak     = "SOAK"
	PhaseBatches  = "BATCHES"
	PhaseDone     = "DONE"
)

// Rollout is one rollout's state.
type Rollout struct {
	ID         string      `json:"id"`
	Spec       RolloutSpec `json:"spec"`
	State      string      `json:"state"`
	Phase      string      `json:"phase"`
	Reason     string      `json:"reason,omitempty"`
	CreatedAt  time.Time   `json:"createdAt"`
	FinishedAt time.Time   `json:"finishedAt,omitzero"`
	SoakUntil  time.Time   `json:"soakUntil,omitzero"`
	// PrefetchUntil ends the prefetch phase at the latest.
	PrefetchUntil time.Time `json:"prefetchUntil,omitzero"`
	Batch         int       `json:"batch"`     // current batch, from 1
	BatchSize     int       `json:"batchSize"` // gateways per batch after the canary
	Notified      int       `json:"notified"`  // gateways dispatched
	Warnings      []string  `json:"warnings,omitempty"`
}

// RolloutGateway is one gateway's progress in a rollout.
type RolloutGateway struct {
	Rollout      string    `json:"rollout"`
	Gateway      string    `json:"gateway"`
	State        string    `json:"state"`
	Batch        int       `json:"batch"` // 0: canary
	Attempt      int       `json:"attempt"`
	CommandID    string    `json:"commandId,omitempty"`
	DispatchedAt time.Time `json:"dispatchedAt,omitzero"`
	FinishedAt   time.Time `json:"finishedAt,omitzero"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	// PrevSpec is the spec the gateway ran before (the controller's last
	// deploy to it), what a rollback deploys again.
	PrevSpec         json.RawMessage `json:"prevSpec,omitempty"`
	RollbackRevision int64           `json:"rollbackRevision,omitempty"`
	// Prefetch is the gateway's prefetch, absent without a prefetch phase.
	Prefetch *GatewayPrefetch `json:"prefetch,omitempty"`
}

// Per-gateway prefetch states.
const (
	PrefetchQueued     = "QUEUED"
	PrefetchInProgress = "IN_PROGRESS"
	PrefetchSucceeded  = "SUCCEEDED"
	PrefetchFailed     = "FAILED"
	PrefetchTimedOut   = "TIMED_OUT"
	PrefetchSkipped    = "SKIPPED"
)

// GatewayPrefetch is one gateway's prefetch in a rollout's prefetch phase.
type GatewayPrefetch struct {
	State        string    `json:"state"`
	CommandID    string    `json:"commandId,omitempty"`
	DispatchedAt time.Time `json:"dispatchedAt,omitzero"`
	FinishedAt   time.Time `json:"finishedAt,omitzero"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
}

// RolloutView is a rollout with its aggregate progress.
type RolloutView struct {
	Rollout
	Total  int            `json:"total"`
	Counts map[string]int `json:"counts"`
	// PrefetchCounts count the gateways' prefetches by state; absent
	// without a prefetch phase.
	PrefetchCounts map[string]int   `json:"prefetchCounts,omitempty"`
	SucceededPct   float64          `json:"succeededPercent"`
	FailedPct      float64          `json:"failedPercent"`
	CurrentRate    float64          `json:"currentRatePerMinute"` // gateways finished in the last minute
	ETA            string           `json:"eta,omitempty"`
	Failing        []RolloutGateway `json:"failing,omitempty"`
	Gateways       []RolloutGateway `json:"gateways,omitempty"`
	Active         bool             `json:"active"`
}

// Identity is a gateway's identity in the cloud: the MQTT username it
// logs in as (its client id too) and the groups and labels the cloud
// assigned it, by which it is targeted. Never its password.
type Identity struct {
	Tenant    string            `json:"tenant"`
	ID        string            `json:"id"`
	Username  string            `json:"username"`
	Groups    []string          `json:"groups"`
	Labels    map[string]string `json:"labels"`
	CreatedAt time.Time         `json:"createdAt,omitzero"`
}

// Deprovisioned is the reply of POST …/deprovision.
type Deprovisioned struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
	// Disconnected is true when the gateway was connected to the embedded
	// broker and was disconnected.
	Disconnected bool `json:"disconnected"`
	// Inventory is what became of the gateway's inventory record: "kept"
	// (offline, with its history, matching no group or label).
	Inventory string `json:"inventory"`
}

// LabelsRequest is the body of PUT …/labels (the labels, replacing all)
// and of PATCH …/labels (a JSON merge patch: a value sets, null removes).
type LabelsRequest struct {
	Labels map[string]*string `json:"labels"`
}

// GroupsRequest is the body of PUT …/groups.
type GroupsRequest struct {
	Groups []string `json:"groups"`
}

// Overview is the body of GET /v1/overview: a tenant's fleet (or all) at
// a glance.
type Overview struct {
	Gateways GatewayCounts `json:"gateways"`
	// AgentVersions counts gateways by agent version, EngineVersions by
	// engine ("docker 27.1"); "unknown" when not reported.
	AgentVersions  map[string]int   `json:"agentVersions"`
	EngineVersions map[string]int   `json:"engineVersions"`
	Deployments    DeploymentCounts `json:"deployments"`
	// ActiveRollouts are the running or paused rollouts, newest first,
	// without their gateways.
	ActiveRollouts []*RolloutView `json:"activeRollouts"`
	// Failing are deployments FAILED, unhealthy or restarting (restarted
	// and not running), newest first, at most 50 of FailingTotal.
	Failing      []FailingDeployment `json:"failing"`
	FailingTotal int                 `json:"failingTotal"`
	// ExpiringCredentials expire within 7 days (or have expired), soonest
	// first, at most 100 of ExpiringCredentialsTotal. ECR tokens the
	// cloud issues and refreshes in time are not listed.
	ExpiringCredentials      []ExpiringCredential `json:"expiringCredentials"`
	ExpiringCredentialsTotal int                  `json:"expiringCredentialsTotal"`
}

// Replica is what one controller replica does: whether it schedules
// rollouts (holds the lease), and how many gateway publications it has
// applied since it started, which shows how replicas share the ingest.
type Replica struct {
	Leader   bool   `json:"leader"`
	Ingested uint64 `json:"ingested"`
}

// GatewayCounts counts gateways; Stale ones are online.
type GatewayCounts struct {
	Total   int `json:"total"`
	Online  int `json:"online"`
	Offline int `json:"offline"`
	Stale   int `json:"stale"`
}

// DeploymentCounts counts deployments by phase ("RUNNING") and, of those
// with a health check, by health ("healthy").
type DeploymentCounts struct {
	ByPhase  map[string]int `json:"byPhase"`
	ByHealth map[string]int `json:"byHealth"`
	Total    int            `json:"total"`
}

// FailingDeployment is one failing deployment on one gateway.
type FailingDeployment struct {
	Tenant       string    `json:"tenant"`
	Gateway      string    `json:"gateway"`
	Deployment   string    `json:"deployment"`
	Phase        string    `json:"phase"`
	Health       string    `json:"health,omitempty"`
	RestartCount uint32    `json:"restartCount,omitempty"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero"`
}

// Where a credential is kept.
const (
	WhereCloud   = "cloud"
	WhereGateway = "gateway"
)

// ExpiringCredential is a credential that expires soon: a tenant's in the
// cloud, or one a gateway holds (Gateway names it).
type ExpiringCredential struct {
	Tenant    string    `json:"tenant"`
	Registry  string    `json:"registry"`
	Kind      string    `json:"kind"`
	ExpiresAt time.Time `json:"expiresAt"`
	Where     string    `json:"where"`
	Gateway   string    `json:"gateway,omitempty"`
}
