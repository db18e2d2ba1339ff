package inventory

import (
	"maps"
	"slices"
	"strings"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// Gateway is one gateway in the inventory, as its births, deaths,
// statuses and metrics describe it.
type Gateway struct {
	Tenant string
	ID     string
	// Online is true from a birth until a death of the same or a newer
	// session. Stale is set on reads when an online gateway has sent
	// nothing for longer than the controller's stale threshold.
	Online       bool
	Stale        bool
	Session      uint64
	DeathSession uint64
	DeathReason  string
	ConnectedAt  time.Time
	LastSeen     time.Time

	AgentVersion    string
	ProtocolVersion uint32
	Simulated       bool
	Host            *Host
	Engine          *Engine
	// Labels and Groups are what the cloud assigned the gateway
	// (Config.Assigned), by which it is targeted; set on reads.
	Labels map[string]string
	Groups []string
	// ReportedLabels and ReportedGroups are what its birth says of
	// itself: facts to show, never used to choose targets.
	ReportedLabels map[string]string
	ReportedGroups []string
	// Provisioned is whether the cloud holds an identity for the gateway
	// (false once deprovisioned, or for one an external broker alone
	// knows); set on reads.
	Provisioned  bool
	Capabilities []string
	// PublicKey is the key credentials are sealed to.
	PublicKey   string
	Deployments map[string]*Deployment
	Registries  []Registry
	// Delivered lists the registries whose credential the cloud sent the
	// gateway and it accepted: refreshed tokens go only to these, never to
	// a gateway whose birth merely says it holds one.
	Delivered []string
	Running   uint32
	// Refused is what the inventory refused of this gateway for
	// exceeding a limit, one entry a limit.
	Refused []Refusal
	// Sessions are the latest MaxSessions sessions, newest first; set by
	// Get only (the record keeps them in sessions).
	Sessions []Session

	sessions []session   // oldest first; stored
	metrics  *metricRing // the last hour's heartbeats; not stored
	// storedSeen is LastSeen as last written to the store (see onlySeen).
	storedSeen time.Time

	events   float64   // the event budget (token bucket); not stored
	eventsAt time.Time // when events was last filled
}

// Host is the gateway's machine.
type Host struct {
	Hostname    string
	OS          string
	Arch        string
	CPUs        uint32
	MemoryBytes uint64
}

// Engine is the gateway's container engine.
type Engine struct {
	Name      string
	Version   string
	Reachable bool
	Error     string
}

// Deployment is the last known status of one deployment on a gateway.
type Deployment struct {
	Name         string
	Revision     int64
	Phase        Phase
	Health       Health
	Image        string
	Digest       string
	ContainerID  string
	Code         string
	Message      string
	RestartCount uint32
	UpdatedAt    time.Time
	// ReportedAt is when the gateway says it reported this (the status's
	// updatedAt, or the birth's timestamp, by the gateway's clock): it
	// orders two reports of one revision that replicas applied in either
	// order. Zero when the gateway sent none.
	ReportedAt time.Time
	// Services are the services its status reports, in its order (an
	// application's; a single container's one). Never changed once set:
	// a new status makes a new Deployment.
	Services []Service

	// storedAt is UpdatedAt as last written to the store (see onlySeen).
	storedAt time.Time
}

// sameReport reports whether d says what old said, reported again later:
// everything the inventory keeps but the times is the same.
func (d *Deployment) sameReport(old *Deployment) bool {
	return d.Name == old.Name && d.Revision == old.Revision && d.Phase == old.Phase && d.Health == old.Health &&
		d.Image == old.Image && d.Digest == old.Digest && d.ContainerID == old.ContainerID && d.Code == old.Code &&
		d.Message == old.Message && d.RestartCount == old.RestartCount && slices.Equal(d.Services, old.Services)
}

// newer reports whether d supersedes old: a later revision, or the same
// revision reported later (arrival order when either has no time).
func (d *Deployment) newer(old *Deployment) bool {
	return newerReport(d.Revision, d.ReportedAt, old.Revision, old.ReportedAt)
}

// newerReport reports whether a deployment's status of revision rev,
// reported at, supersedes one of oldRev reported at oldAt (see newer).
func newerReport(rev int64, at time.Time, oldRev int64, oldAt time.Time) bool {
	if rev != oldRev {
		return rev > oldRev
	}
	return at.IsZero() || oldAt.IsZero() || !at.Before(oldAt)
}

// reportedAt is when s says it was reported; zero when it does not.
func reportedAt(s *fleetv1.DeploymentStatus) time.Time {
	if s.GetUpdatedAt() == nil {
		return time.Time{}
	}
	return s.GetUpdatedAt().AsTime()
}

// Registry is a credential a gateway holds, as its birth summarises it
// (never the secret).
type Registry struct {
	Registry    string
	Kind        string
	Username    string
	Fingerprint string
	ExpiresAt   time.Time
	Warning     string
}

func (g *Gateway) clone() *Gateway {
	c := *g
	c.Labels = maps.Clone(g.Labels)
	c.Groups = slices.Clone(g.Groups)
	c.ReportedLabels = maps.Clone(g.ReportedLabels)
	c.ReportedGroups = slices.Clone(g.ReportedGroups)
	c.Capabilities = slices.Clone(g.Capabilities)
	c.Registries = slices.Clone(g.Registries)
	c.Refused = slices.Clone(g.Refused)
	c.Delivered = slices.Clone(g.Delivered)
	c.sessions, c.metrics = nil, nil // read under the inventory's lock only
	c.Deployments = make(map[string]*Deployment, len(g.Deployments))
	for k, d := range g.Deployments {
		dc := *d
		c.Deployments[k] = &dc
	}
	if g.Host != nil {
		h := *g.Host
		c.Host = &h
	}
	if g.Engine != nil {
		e := *g.Engine
		c.Engine = &e
	}
	return &c
}

// applyBirth takes a birth; it reports false for one older than what the
// inventory knows (a retained birth of a session that has since died).
func (g *Gateway) applyBirth(b *fleetv1.Birth, at time.Time) bool {
	if b.GetSession() < g.Session || (g.DeathSession != 0 && b.GetSession() <= g.DeathSession) {
		return false
	}
	g.Online, g.Session = true, b.GetSession()
	g.DeathReason = ""
	g.ConnectedAt = b.GetTimestamp().AsTime()
	g.seen(at)
	g.AgentVersion, g.ProtocolVersion, g.Simulated = b.GetAgentVersion(), b.GetProtocolVersion(), b.GetSimulated()
	if h := b.GetHost(); h != nil {
		g.Host = &Host{Hostname: h.GetHostname(), OS: h.GetOs(), Arch: h.GetArch(), CPUs: h.GetCpuCount(), MemoryBytes: h.GetMemoryBytes()}
	}
	if e := b.GetEngine(); e != nil {
		g.Engine = &Engine{Name: e.GetName(), Version: e.GetVersion(), Reachable: e.GetReachable(), Error: e.GetError()}
	}
	g.ReportedLabels, g.ReportedGroups, g.Capabilities = b.GetLabels(), b.GetGroups(), b.GetCapabilities()
	g.PublicKey = b.GetPublicKey()
	g.Deployments = mergeBirth(g.Deployments, b, at)
	g.Registries = g.Registries[:0]
	for _, r := range b.GetRegistries() {
		reg := Registry{Registry: r.GetRegistry(), Kind: r.GetKind(), Username: r.GetUsername(), Fingerprint: r.GetFingerprint(), Warning: r.GetWarning()}
		if r.GetExpiresAt() != nil {
			reg.ExpiresAt = r.GetExpiresAt().AsTime()
		}
		g.Registries = append(g.Registries, reg)
	}
	return true
}

// applyDeath takes a death; it reports false for one of a session older
// than the current birth's.
func (g *Gateway) applyDeath(d *fleetv1.Death, at time.Time) bool {
	if d.GetSession() < g.Session || d.GetSession() <= g.DeathSession {
		return false
	}
	g.Online = false
	g.Session, g.DeathSession = d.GetSession(), d.GetSession()
	g.DeathReason = strings.ToLower(d.GetReason().String())
	g.seen(at)
	return true
}

func (g *Gateway) applyStatus(name string, s *fleetv1.DeploymentStatus, at time.Time) {
	if s == nil { // an empty retained payload: the deployment was removed
		delete(g.Deployments, name)
		return
	}
	if g.Deployments == nil {
		g.Deployments = map[string]*Deployment{}
	}
	d := &Deployment{Name: name, Revision: s.GetRevision(), Phase: Phase(s.GetPhase()), Image: clip(s.GetImage(), maxText), Digest: clip(s.GetImageDigest(), maxText),
		ContainerID: clip(s.GetContainerId(), maxText), Message: clip(s.GetMessage(), maxMessage), RestartCount: s.GetRestartCount(), UpdatedAt: at}
	d.ReportedAt = reportedAt(s)
	if old := g.Deployments[name]; old != nil && !d.newer(old) {
		return
	}
	d.Health = Health(s.GetHealth())
	d.Services = servicesOf(s, g.serviceRoom(name))
	if s.GetCode() != fleetv1.Reply_OK {
		d.Code = s.GetCode().String()
	}
	g.Deployments[name] = d
}

// Phase is a deployment's phase: the protocol's enum.
type Phase fleetv1.DeploymentStatus_Phase

// The phases the controller acts on.
const (
	Running    = Phase(fleetv1.DeploymentStatus_RUNNING)
	Failed     = Phase(fleetv1.DeploymentStatus_FAILED)
	RolledBack = Phase(fleetv1.DeploymentStatus_ROLLED_BACK)
)

func (p Phase) String() string { return fleetv1.DeploymentStatus_Phase(p).String() }

// Health is a deployment's health check status: the protocol's enum;
// its String is lower case ("healthy"), "" when there is no check.
type Health fleetv1.HealthCheck_Status

// The health statuses the controller acts on.
const (
	NoHealthCheck = Health(fleetv1.HealthCheck_NONE)
	Healthy       = Health(fleetv1.HealthCheck_HEALTHY)
	Unhealthy     = Health(fleetv1.HealthCheck_UNHEALTHY)
)

func (h Health) String() string {
	if h == NoHealthCheck {
		return ""
	}
	return strings.ToLower(fleetv1.HealthCheck_Status(h).String())
}

// mergeBirth is the deployments after birth b: the ones it lists, except
// where what is known of one is newer than the birth (a status the
// gateway reported after it, applied first by another replica); a
// deployment the birth does not list is kept only when reported after it.
func mergeBirth(known map[string]*Deployment, b *fleetv1.Birth, at time.Time) map[string]*Deployment {
	born := b.GetTimestamp().AsTime()
	if b.GetTimestamp() == nil {
		born = time.Time{}
	}
	deps := make(map[string]*Deployment, len(b.GetDeployments()))
	for _, d := range b.GetDeployments() {
		dep := &Deployment{Name: d.GetName(), Revision: d.GetRevision(), Phase: Phase(d.GetPhase()), Image: clip(d.GetImage(), maxText),
			Digest: clip(d.GetDigest(), maxText), UpdatedAt: at, ReportedAt: born}
		// A birth summarises; keep the richer status of the same revision,
		// and a status reported after the birth.
		if old := known[d.GetName()]; old != nil && ((old.Revision == dep.Revision && old.Phase == dep.Phase) || !dep.newer(old)) {
			dep = old
		}
		deps[d.GetName()] = dep
	}
	for name, old := range known {
		if _, listed := deps[name]; !listed && !born.IsZero() && old.ReportedAt.After(born) {
			deps[name] = old
		}
	}
	return deps
}

// seen moves LastSeen forward to at, never back: replicas apply a
// gateway's publications in any order.
func (g *Gateway) seen(at time.Time) {
	if at.After(g.LastSeen) {
		g.LastSeen = at
	}
}
