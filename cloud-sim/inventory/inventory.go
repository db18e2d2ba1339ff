// Package inventory is the fleet's inventory: one record a gateway, built
// from its births, deaths, statuses, metrics and events, with label
// selectors to choose gateways and a read-only view for the rollout
// scheduler. Its state lives in the store (package state) and is written
// behind: births, deaths and statuses are retained at the broker, so what
// a crash loses between two flushes comes back when the controller
// resubscribes.
package inventory

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/mqttclient"
	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config configures an Inventory.
type Config struct {
	// StaleAfter is how long an online gateway may stay silent before it
	// is shown as stale (2 minutes when zero).
	StaleAfter time.Duration
	// Changes receives gateway and deployment changes (none when nil).
	Changes *changes.Hub
	// Limits bound what one gateway may report (see Limits).
	Limits Limits
	// Assigned tells the groups and labels the cloud assigned each
	// gateway (package identity). Filters select by these, never by what
	// a gateway's birth reports; without it no gateway has any.
	Assigned Assigner
	// Replicated is set when several controller replicas share the store
	// and each applies part of the fleet's publications (see replica.go):
	// records are then written compare-and-set and Load watches the
	// others' writes.
	Replicated bool
	Logger     *slog.Logger
	Now        func() time.Time
}

// Assigner tells the groups and labels the cloud assigned a gateway, and
// whether the cloud provisioned it at all. The inventory does not change
// them.
type Assigner interface {
	Assigned(tenant, id string) (groups []string, labels map[string]string, provisioned bool)
}

type unassigned struct{}

func (unassigned) Assigned(string, string) ([]string, map[string]string, bool) {
	return nil, nil, false
}

// Inventory is the fleet's gateways.
type Inventory struct {
	staleAfter time.Duration
	limits     Limits
	hub        *changes.Hub
	assigned   Assigner
	now        func() time.Time
	log        *slog.Logger

	mu       sync.RWMutex
	gateways map[string]*Gateway // by state.Key(tenant, id); guarded by mu
	dirty    map[string]struct{} // keys changed since the last flush; guarded by mu
	ingested uint64              // guarded by mu
	// Replicated only (nil otherwise), guarded by mu: the store revision
	// each record was last read or written at, what was applied to it
	// since, and how many records came from the store.
	revs      map[string]uint64
	pending   map[string][]pendingOp
	orphans   map[string][]orphan
	inflight  map[string]struct{}    // keys being written
	deferred  map[string]state.Entry // watched while being written
	remote    uint64
	stopWatch func()

	// orderMu guards order: every gateway in natural order, sorted again
	// when the inventory grew (see ordered). Taken before mu.
	orderMu sync.Mutex
	order   []*Gateway
}

// New returns an empty inventory; Load fills it from the store.
func New(cfg Config) *Inventory {
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 2 * time.Minute
	}
	if cfg.Changes == nil {
		cfg.Changes = new(changes.Hub)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Assigned == nil {
		cfg.Assigned = unassigned{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	inv := &Inventory{staleAfter: cfg.StaleAfter, limits: cfg.Limits.withDefaults(), hub: cfg.Changes, assigned: cfg.Assigned, now: cfg.Now,
		log: cfg.Logger, gateways: map[string]*Gateway{}, dirty: map[string]struct{}{}}
	if cfg.Replicated {
		inv.revs, inv.pending, inv.orphans = map[string]uint64{}, map[string][]pendingOp{}, map[string][]orphan{}
		inv.inflight, inv.deferred = map[string]struct{}{}, map[string]state.Entry{}
	}
	return inv
}

// Load reads the stored gateways; a replicated inventory then keeps
// watching the store until Close.
func (inv *Inventory) Load(ctx context.Context, st *state.Store) error {
	if inv.revs != nil {
		stop, err := inv.Watch(ctx, st)
		if err != nil {
			return fmt.Errorf("inventory: load: %w", err)
		}
		inv.mu.Lock()
		inv.stopWatch = stop
		inv.mu.Unlock()
		return nil
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	err := st.Each(ctx, state.Gateways, func(k string, raw []byte) error {
		g := new(state.Gateway)
		if err := state.Decode(raw, g); err != nil {
			return err
		}
		inv.gateways[k] = restore(g)
		return nil
	})
	if err != nil {
		return fmt.Errorf("inventory: load: %w", err)
	}
	return nil
}

// Close stops a replicated inventory's watch.
func (inv *Inventory) Close() {
	inv.mu.Lock()
	stop := inv.stopWatch
	inv.stopWatch = nil
	inv.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// Len is how many gateways the inventory holds.
func (inv *Inventory) Len() int {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	return len(inv.gateways)
}

// Flush writes the gateways changed since the last flush; on failure they
// are written with the next.
func (inv *Inventory) Flush(ctx context.Context, st *state.Store) error {
	if inv.revs != nil {
		return inv.flushReplicated(ctx, st)
	}
	inv.mu.Lock()
	if len(inv.dirty) == 0 {
		inv.mu.Unlock()
		return nil
	}
	gws := make(map[string]any, len(inv.dirty))
	for k := range inv.dirty {
		if g := inv.gateways[k]; g != nil {
			gws[k] = g.stored()
		}
	}
	inv.dirty = map[string]struct{}{}
	inv.mu.Unlock()
	err := st.PutMany(ctx, state.Gateways, gws)
	if err != nil {
		inv.mu.Lock()
		for k := range gws {
			inv.dirty[k] = struct{}{}
		}
		inv.mu.Unlock()
	}
	return err
}

// Ingested is how many gateway publications the inventory has applied.
func (inv *Inventory) Ingested() uint64 {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	return inv.ingested
}

// Apply takes one publication from a gateway (anything but a reply).
func (inv *Inventory) Apply(r mqttclient.Received) {
	t := r.Topic
	k := state.Key(t.Tenant, t.Gateway)
	inv.mu.Lock()
	g := inv.gateways[k]
	if g == nil {
		if t.Kind != topic.Birth {
			// Only a birth creates a gateway: statuses and metrics of one
			// that never announced itself are kept out of the inventory
			// (a replica keeps them a while: another may have its birth).
			inv.orphan(k, r)
			inv.mu.Unlock()
			return
		}
		g = &Gateway{Tenant: t.Tenant, ID: t.Gateway}
		inv.gateways[k] = g
		inv.adopt(k, g)
	}
	inv.ingested++
	running, before := g.Running, g.Deployments[t.Deployment]
	var ev changes.Change
	var changed bool
	limit, why := g.refuse(inv.limits, t, r.Message, r.At)
	if limit != "" {
		ev, changed = g.noteRefusal(limit, why, r.At)
	} else {
		ev, changed = g.apply(t, r.Message, r.At)
	}
	// The stored lastSeen may lag by half the stale threshold (one
	// heartbeat in two, at the defaults): another replica still never
	// shows a live gateway stale.
	if limit != "" || !g.onlySeen(t, running, before, inv.staleAfter/2) {
		inv.dirty[k] = struct{}{}
		if inv.pending != nil {
			// What replaying needs: not the payload, nor the packet
			// it came in.
			kept := &mqttclient.Received{Topic: t, Message: r.Message, At: r.At}
			after := g.Deployments[t.Deployment]
			newest := limit == "" && t.Kind == topic.Status && after != nil && after != before
			inv.remember(k, pendingOp{r: kept, newest: newest})
		}
	}
	if changed && limit == "" && t.Kind == topic.Status && before != nil && r.Message != nil {
		// A status that says again what the last one said (a pull's
		// progress), or an older one, changes nothing anyone watches.
		after := g.Deployments[t.Deployment]
		changed = after != before && !after.sameReport(before)
	}
	inv.mu.Unlock()
	if changed {
		ev.At = r.At
		inv.hub.Publish(ev)
	}
}

// onlySeen reports whether a publication on t, just applied, changed
// nothing stored but times, and those by less than every since they were
// last stored: heartbeats that report the same running count, events, and
// statuses that say again what the last one said (a pull's progress,
// which the inventory does not keep: most of the statuses of a rollout).
// Each would otherwise rewrite the gateway's whole record (and, with
// replicas, wake every replica's watch). running is the count before,
// before the deployment's status before (nil when there was none).
func (g *Gateway) onlySeen(t topic.Topic, running uint32, before *Deployment, every time.Duration) bool {
	switch t.Kind {
	case topic.Metrics, topic.Events:
		if g.Running != running {
			return false
		}
	case topic.Status:
		after := g.Deployments[t.Deployment]
		if before == nil || after == nil {
			return false
		}
		if after != before { // applied: newer
			if !after.sameReport(before) {
				return false
			}
			after.storedAt = before.storedAt
			if after.UpdatedAt.Sub(after.storedAt) >= every {
				return false
			}
		}
	default:
		return false
	}
	return g.LastSeen.Sub(g.storedSeen) < every
}

// apply applies msg, published on t, and describes the change.
func (g *Gateway) apply(t topic.Topic, msg any, at time.Time) (changes.Change, bool) {
	switch m := msg.(type) {
	case *fleetv1.Birth:
		if g.applyBirth(m, at) {
			g.noteBirth(m.GetSession(), g.ConnectedAt)
			return changes.Change{Kind: "gateway.online", Tenant: g.Tenant, Gateway: g.ID}, true
		}
	case *fleetv1.Death:
		ok := g.applyDeath(m, at)
		reason := g.DeathReason // shared, not copied, when the death applied
		if !ok {
			reason = strings.ToLower(m.GetReason().String())
		}
		g.noteDeath(m.GetSession(), reason, at)
		if ok {
			return changes.Change{Kind: "gateway.offline", Severity: changes.Warning, Tenant: g.Tenant, Gateway: g.ID, Message: g.DeathReason}, true
		}
	case *fleetv1.DeploymentStatus:
		g.applyStatus(t.Deployment, m, at)
		g.seen(at)
		if d := g.Deployments[t.Deployment]; d != nil {
			sev := changes.Info
			if d.Phase == Failed {
				sev = changes.Error
			}
			return changes.Change{Kind: "deployment.status", Severity: sev, Tenant: g.Tenant, Gateway: g.ID, Deployment: t.Deployment,
				Revision: d.Revision, Phase: d.Phase.String(), Message: d.Message}, true
		}
	case nil:
		if t.Kind == topic.Status {
			g.applyStatus(t.Deployment, nil, at)
			return changes.Change{Kind: "deployment.removed", Tenant: g.Tenant, Gateway: g.ID, Deployment: t.Deployment}, true
		}
	case *fleetv1.Metrics:
		g.seen(at)
		g.Running = m.GetRunningCount()
		if g.metrics == nil {
			g.metrics = new(metricRing)
		}
		g.metrics.add(m, at)
	case *fleetv1.Event:
		g.seen(at)
		return changes.Change{Kind: "event", Severity: severityOf(m.GetSeverity()), Tenant: g.Tenant, Gateway: g.ID, Deployment: m.GetDeployment(),
			Message: m.GetKind() + ": " + m.GetMessage()}, true
	}
	return changes.Change{}, false
}

// severityOf is an agent event's severity as a change's.
func severityOf(s fleetv1.Event_Severity) changes.Severity {
	switch s {
	case fleetv1.Event_WARNING:
		return changes.Warning
	case fleetv1.Event_ERROR:
		return changes.Error
	}
	return changes.Info
}

// Touch records that a gateway was heard from (a reply) at at.
func (inv *Inventory) Touch(tenant, id string, at time.Time) {
	k := state.Key(tenant, id)
	inv.mu.Lock()
	if g := inv.gateways[k]; g != nil {
		g.seen(at)
	}
	inv.mu.Unlock()
}

// NoteCredentials records that a gateway accepted a set-credentials with
// regs, so that the next deploy does not send them again.
func (inv *Inventory) NoteCredentials(tenant, id string, regs []Registry) {
	k := state.Key(tenant, id)
	inv.mu.Lock()
	defer inv.mu.Unlock()
	g := inv.gateways[k]
	if g == nil {
		return
	}
	g.noteCredentials(regs)
	inv.remember(k, pendingOp{regs: regs})
	inv.dirty[k] = struct{}{}
}

// noteCredentials records that g accepted regs.
func (g *Gateway) noteCredentials(regs []Registry) {
	for _, r := range regs {
		if i := slices.IndexFunc(g.Registries, func(h Registry) bool { return h.Registry == r.Registry }); i >= 0 {
			g.Registries[i] = r
		} else {
			g.Registries = append(g.Registries, r)
		}
		if !slices.Contains(g.Delivered, r.Registry) {
			g.Delivered = append(g.Delivered, r.Registry)
		}
	}
}

// Filter selects gateways by what the cloud assigned them (the groups and
// labels of Config.Assigned), never by what they report of themselves.
type Filter struct {
	Tenant   string
	Selector Selector
	Group    string
	// AnyGroup, when set, keeps only gateways in at least one of them.
	AnyGroup []string
	// Online, when set, keeps only gateways that are (or are not) online.
	Online *bool
	// IDContains, when set, keeps only gateways whose id contains it,
	// regardless of case.
	IDContains string
}

func (inv *Inventory) match(f Filter, g *Gateway) bool {
	switch {
	case f.Tenant != "" && g.Tenant != f.Tenant:
		return false
	case f.Online != nil && g.Online != *f.Online:
		return false
	case f.IDContains != "" && !containsFold(g.ID, f.IDContains):
		return false
	}
	if f.Group == "" && len(f.AnyGroup) == 0 && len(f.Selector) == 0 {
		return true
	}
	groups, labels, _ := inv.assigned.Assigned(g.Tenant, g.ID)
	switch {
	case f.Group != "" && !slices.Contains(groups, f.Group):
		return false
	case len(f.AnyGroup) > 0 && !slices.ContainsFunc(f.AnyGroup, func(want string) bool { return slices.Contains(groups, want) }):
		return false
	}
	return f.Selector.Matches(labels)
}

// List returns copies of the gateways f selects, ordered by tenant and id.
func (inv *Inventory) List(f Filter) []*Gateway {
	now := inv.now()
	inv.mu.RLock()
	out := make([]*Gateway, 0, len(inv.gateways))
	for _, g := range inv.gateways {
		if inv.match(f, g) {
			out = append(out, inv.view(g, now))
		}
	}
	inv.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Tenant != out[j].Tenant {
			return out[i].Tenant < out[j].Tenant
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// IDs lists the ids of the gateways f selects, unordered, without copying
// their records.
func (inv *Inventory) IDs(f Filter) []string {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	var out []string
	for _, g := range inv.gateways {
		if inv.match(f, g) {
			out = append(out, g.ID)
		}
	}
	return out
}

// Get returns a copy of one gateway.
func (inv *Inventory) Get(tenant, id string) (*Gateway, bool) {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	g := inv.gateways[state.Key(tenant, id)]
	if g == nil {
		return nil, false
	}
	v := inv.view(g, inv.now())
	v.Sessions = g.sessionList()
	return v, true
}

// Metrics lists a gateway's heartbeat samples of the last hour, oldest
// first, and its CPU count (0 when unknown); false for an unknown gateway.
func (inv *Inventory) Metrics(tenant, id string) ([]Sample, uint32, bool) {
	now := inv.now()
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	g := inv.gateways[state.Key(tenant, id)]
	if g == nil {
		return nil, 0, false
	}
	var cpus uint32
	if g.Host != nil {
		cpus = g.Host.CPUs
	}
	return g.metrics.samples(now), cpus, true
}

// view is a copy of g for a reader, with Stale computed and the groups
// and labels the cloud assigned. inv.mu is held.
func (inv *Inventory) view(g *Gateway, now time.Time) *Gateway {
	v := g.clone()
	v.Stale = g.Online && now.Sub(g.LastSeen) > inv.staleAfter
	groups, labels, provisioned := inv.assigned.Assigned(g.Tenant, g.ID)
	v.Groups, v.Labels, v.Provisioned = slices.Clone(groups), maps.Clone(labels), provisioned
	return v
}

// Observation is what the rollout scheduler reads of one gateway: whether
// it is online and the status of one of its deployments.
type Observation struct {
	Known, Online bool
	// Deployment is the deployment's status; its Name is "" when the
	// gateway has no such deployment.
	Deployment Deployment
}

// Observe reads one gateway, by state.Key(tenant, id), without copying
// its record.
func (inv *Inventory) Observe(key, deployment string) Observation {
	inv.mu.RLock()
	defer inv.mu.RUnlock()
	g := inv.gateways[key]
	if g == nil {
		return Observation{}
	}
	o := Observation{Known: true, Online: g.Online}
	if d := g.Deployments[deployment]; d != nil {
		o.Deployment = *d
	}
	return o
}
