package controller

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/console"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Gateway is one gateway in the inventory, as its births, deaths,
// statuses and metrics describe it.
type Gateway struct {
	Tenant string `json:"tenant"`
	ID     string `json:"id"`
	// Online is true from a birth until a death of the same or a newer
	// session. Stale is set on reads when an online gateway has sent
	// nothing for longer than the controller's stale threshold.
	Online       bool      `json:"online"`
	Stale        bool      `json:"stale,omitempty"`
	Session      uint64    `json:"session"`
	DeathSession uint64    `json:"deathSession,omitempty"`
	DeathReason  string    `json:"deathReason,omitempty"`
	ConnectedAt  time.Time `json:"connectedAt,omitzero"`
	LastSeen     time.Time `json:"lastSeen,omitzero"`

	AgentVersion    string            `json:"agentVersion,omitempty"`
	ProtocolVersion uint32            `json:"protocolVersion,omitempty"`
	Simulated       bool              `json:"simulated,omitempty"`
	Host            *Host             `json:"host,omitempty"`
	Engine          *Engine           `json:"engine,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Groups          []string          `json:"groups,omitempty"`
	Capabilities    []string          `json:"capabilities,omitempty"`
	// PublicKey is the key credentials are sealed to.
	PublicKey   string                 `json:"publicKey,omitempty"`
	Deployments map[string]*Deployment `json:"deployments,omitempty"`
	Registries  []Registry             `json:"registries,omitempty"`
	Running     uint32                 `json:"running"`
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
type Deployment struct {
	Name         string    `json:"name"`
	Revision     int64     `json:"revision"`
	Phase        string    `json:"phase"`
	Health       string    `json:"health,omitempty"`
	Image        string    `json:"image,omitempty"`
	Digest       string    `json:"digest,omitempty"`
	Code         string    `json:"code,omitempty"`
	Message      string    `json:"message,omitempty"`
	RestartCount uint32    `json:"restartCount,omitempty"`
	UpdatedAt    time.Time `json:"updatedAt,omitzero"`
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

func (g *Gateway) clone() *Gateway {
	c := *g
	c.Labels = maps.Clone(g.Labels)
	c.Groups = slices.Clone(g.Groups)
	c.Capabilities = slices.Clone(g.Capabilities)
	c.Registries = slices.Clone(g.Registries)
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
	g.LastSeen = at
	g.AgentVersion, g.ProtocolVersion, g.Simulated = b.GetAgentVersion(), b.GetProtocolVersion(), b.GetSimulated()
	if h := b.GetHost(); h != nil {
		g.Host = &Host{Hostname: h.GetHostname(), OS: h.GetOs(), Arch: h.GetArch(), CPUs: h.GetCpuCount(), MemoryBytes: h.GetMemoryBytes()}
	}
	if e := b.GetEngine(); e != nil {
		g.Engine = &Engine{Name: e.GetName(), Version: e.GetVersion(), Reachable: e.GetReachable(), Error: e.GetError()}
	}
	g.Labels, g.Groups, g.Capabilities = b.GetLabels(), b.GetGroups(), b.GetCapabilities()
	g.PublicKey = b.GetPublicKey()
	deps := make(map[string]*Deployment, len(b.GetDeployments()))
	for _, d := range b.GetDeployments() {
		dep := &Deployment{Name: d.GetName(), Revision: d.GetRevision(), Phase: phaseName(d.GetPhase()), Image: d.GetImage(), Digest: d.GetDigest(), UpdatedAt: at}
		// A birth summarises; keep the richer status of the same revision.
		if old := g.Deployments[d.GetName()]; old != nil && old.Revision == dep.Revision && old.Phase == dep.Phase {
			dep = old
		}
		deps[d.GetName()] = dep
	}
	g.Deployments = deps
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
	g.LastSeen = at
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
	if old := g.Deployments[name]; old != nil && old.Revision > s.GetRevision() {
		return
	}
	d := &Deployment{Name: name, Revision: s.GetRevision(), Phase: phaseName(s.GetPhase()), Image: s.GetImage(), Digest: s.GetImageDigest(),
		Message: s.GetMessage(), RestartCount: s.GetRestartCount(), UpdatedAt: at}
	if s.GetHealth() != fleetv1.HealthCheck_NONE {
		d.Health = strings.ToLower(s.GetHealth().String())
	}
	if s.GetCode() != fleetv1.Reply_OK {
		d.Code = s.GetCode().String()
	}
	g.Deployments[name] = d
}

func phaseName(p fleetv1.DeploymentStatus_Phase) string { return p.String() }

// Ingest applies one publication from a gateway to the inventory (or, for
// a reply, to its command). The controller calls it for everything it
// receives; benchmarks and tests call it directly.
func (c *Controller) Ingest(r console.Received) {
	t := r.Topic
	if t.Kind == topic.Reply {
		if rep, ok := r.Message.(*fleetv1.Reply); ok {
			c.reply(t.Tenant, t.Gateway, rep, r.At)
		}
		return
	}
	if r.Err != nil {
		c.log.Debug("undecodable publication", "topic", r.Name, "err", r.Err)
		return
	}
	c.mu.Lock()
	k := state.Key(t.Tenant, t.Gateway)
	g := c.gateways[k]
	if g == nil {
		if t.Kind != topic.Birth {
			// Only a birth creates a gateway: statuses and metrics of one
			// that never announced itself are kept out of the inventory.
			c.mu.Unlock()
			return
		}
		g = &Gateway{Tenant: t.Tenant, ID: t.Gateway}
		c.gateways[k] = g
	}
	var ev *Change
	switch m := r.Message.(type) {
	case *fleetv1.Birth:
		if g.applyBirth(m, r.At) {
			ev = &Change{Kind: "gateway.online", Tenant: g.Tenant, Gateway: g.ID}
		}
	case *fleetv1.Death:
		if g.applyDeath(m, r.At) {
			ev = &Change{Kind: "gateway.offline", Tenant: g.Tenant, Gateway: g.ID, Message: g.DeathReason}
		}
	case *fleetv1.DeploymentStatus:
		g.applyStatus(t.Deployment, m, r.At)
		g.LastSeen = r.At
		if d := g.Deployments[t.Deployment]; d != nil {
			ev = &Change{Kind: "deployment.status", Tenant: g.Tenant, Gateway: g.ID, Deployment: t.Deployment, Revision: d.Revision, Phase: d.Phase, Message: d.Message}
		}
	case nil:
		if t.Kind == topic.Status {
			g.applyStatus(t.Deployment, nil, r.At)
			ev = &Change{Kind: "deployment.removed", Tenant: g.Tenant, Gateway: g.ID, Deployment: t.Deployment}
		}
	case *fleetv1.Metrics:
		g.LastSeen = r.At
		g.Running = m.GetRunningCount()
	case *fleetv1.Event:
		g.LastSeen = r.At
		ev = &Change{Kind: "event", Tenant: g.Tenant, Gateway: g.ID, Deployment: m.GetDeployment(), Message: m.GetKind() + ": " + m.GetMessage()}
	}
	c.dirty[k] = struct{}{}
	c.ingested++
	c.mu.Unlock()
	if ev != nil {
		ev.At = r.At
		c.hub.publish(*ev)
	}
}

// Filter selects gateways.
type Filter struct {
	Tenant   string
	Selector Selector
	Group    string
	// Online, when set, keeps only gateways that are (or are not) online.
	Online *bool
}

func (f Filter) match(g *Gateway) bool {
	switch {
	case f.Tenant != "" && g.Tenant != f.Tenant:
		return false
	case f.Group != "" && !slices.Contains(g.Groups, f.Group):
		return false
	case f.Online != nil && g.Online != *f.Online:
		return false
	}
	return f.Selector.Matches(g.Labels)
}

// Gateways lists the gateways f selects, ordered by tenant and id.
func (c *Controller) Gateways(f Filter) []*Gateway {
	now := c.cfg.Now()
	c.mu.Lock()
	out := make([]*Gateway, 0, len(c.gateways))
	for _, g := range c.gateways {
		if f.match(g) {
			out = append(out, c.view(g, now))
		}
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Gateway returns one gateway.
func (c *Controller) Gateway(tenant, id string) (*Gateway, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.gateways[state.Key(tenant, id)]
	if g == nil {
		return nil, false
	}
	return c.view(g, c.cfg.Now()), true
}

// view is a copy of g for a reader, with Stale computed. c.mu is held.
func (c *Controller) view(g *Gateway, now time.Time) *Gateway {
	v := g.clone()
	v.Stale = g.Online && now.Sub(g.LastSeen) > c.cfg.StaleAfter
	return v
}

// Selector is a label selector: comma-separated requirements "k=v",
// "k==v", "k!=v", "k" (has the label) and "!k" (has not).
type Selector []requirement

type requirement struct {
	key, value string
	op         string // "=", "!=", "exists", "!exists"
}

// ParseSelector parses s; "" selects everything.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var r requirement
		switch {
		case strings.Contains(part, "!="):
			k, v, _ := strings.Cut(part, "!=")
			r = requirement{key: strings.TrimSpace(k), value: strings.TrimSpace(v), op: "!="}
		case strings.Contains(part, "="):
			k, v, _ := strings.Cut(part, "=")
			r = requirement{key: strings.TrimSpace(k), value: strings.TrimPrefix(strings.TrimSpace(v), "="), op: "="}
			r.value = strings.TrimSpace(r.value)
		case strings.HasPrefix(part, "!"):
			r = requirement{key: strings.TrimSpace(part[1:]), op: "!exists"}
		default:
			r = requirement{key: part, op: "exists"}
		}
		if r.key == "" || strings.ContainsAny(r.key, "=! ") {
			return nil, fmt.Errorf("selector %q: requirement %q has no label key; write k=v, k!=v, k or !k separated by commas", s, part)
		}
		sel = append(sel, r)
	}
	return sel, nil
}

// Matches reports whether labels satisfy every requirement.
func (s Selector) Matches(labels map[string]string) bool {
	for _, r := range s {
		v, ok := labels[r.key]
		switch r.op {
		case "=":
			if !ok || v != r.value {
				return false
			}
		case "!=":
			if ok && v == r.value {
				return false
			}
		case "exists":
			if !ok {
				return false
			}
		case "!exists":
			if ok {
				return false
			}
		}
	}
	return true
}
