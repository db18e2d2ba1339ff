package inventory

import (
	"slices"
	"time"
)

// Summary is what an overview of the fleet counts: gateways, their
// versions, their deployments' phases and health, the failing deployments
// and the expiring credentials gateways hold.
type Summary struct {
	Total, Online, Stale int
	// AgentVersions counts gateways by agent version ("" unknown),
	// Engines by engine name and version.
	AgentVersions map[string]int
	Engines       map[EngineVersion]int
	Deployments   int
	Phases        map[Phase]int
	// Health counts the deployments with a health check by status.
	Health map[Health]int
	// Failing are deployments that failed, are unhealthy or restarting
	// (restarted and not running), newest first, at most the maximum
	// asked; FailingTotal counts them all.
	Failing      []Failing
	FailingTotal int
	// Expiring are the credentials gateways hold that expire before the
	// time asked, soonest first.
	Expiring []HeldCredential
}

// EngineVersion is a container engine's name and version.
type EngineVersion struct{ Name, Version string }

// Failing is one failing deployment on one gateway.
type Failing struct {
	Tenant, Gateway, Deployment string
	Phase                       Phase
	Health                      Health
	RestartCount                uint32
	Code, Message               string
	UpdatedAt                   time.Time
}

// HeldCredential is a credential a gateway holds.
type HeldCredential struct {
	Tenant, Gateway string
	Registry
}

// failing reports whether d fails: FAILED, unhealthy, or restarting
// (restarted, and not running now).
func failing(d *Deployment) bool {
	return d.Phase == Failed || d.Health == Unhealthy || (d.RestartCount > 0 && d.Phase != Running)
}

// summarizeChunk is how many gateways Summarize reads under one hold of
// the read lock.
const summarizeChunk = 512

// Summarize counts the gateways of tenant ("" all) with maxFailing
// failing deployments at most and the credentials expiring before
// expiring. It reads the records without copying them, holding the read
// lock for summarizeChunk gateways at a time (the counts are not one
// instant's, which an overview does not need); sorting is done after.
func (inv *Inventory) Summarize(tenant string, expiring time.Time, maxFailing int) Summary {
	now := inv.now()
	s := Summary{AgentVersions: map[string]int{}, Engines: map[EngineVersion]int{}, Phases: map[Phase]int{}, Health: map[Health]int{}}
	order := inv.ordered()
	for from := 0; from < len(order); from += summarizeChunk {
		inv.mu.RLock()
		for _, g := range order[from:min(from+summarizeChunk, len(order))] {
			if tenant == "" || g.Tenant == tenant {
				inv.summarize(&s, g, now, expiring)
			}
		}
		inv.mu.RUnlock()
	}
	slices.SortFunc(s.Failing, func(a, b Failing) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
	s.FailingTotal = len(s.Failing)
	s.Failing = s.Failing[:min(len(s.Failing), maxFailing)]
	slices.SortFunc(s.Expiring, func(a, b HeldCredential) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	return s
}

// summarize adds g to s. inv.mu is held.
func (inv *Inventory) summarize(s *Summary, g *Gateway, now, expiring time.Time) {
	s.Total++
	if g.Online {
		s.Online++
		if now.Sub(g.LastSeen) > inv.staleAfter {
			s.Stale++
		}
	}
	s.AgentVersions[g.AgentVersion]++
	if g.Engine != nil {
		s.Engines[EngineVersion{g.Engine.Name, g.Engine.Version}]++
	}
	for _, d := range g.Deployments {
		s.Deployments++
		s.Phases[d.Phase]++
		if d.Health != NoHealthCheck {
			s.Health[d.Health]++
		}
		if failing(d) {
			s.Failing = append(s.Failing, Failing{Tenant: g.Tenant, Gateway: g.ID, Deployment: d.Name, Phase: d.Phase, Health: d.Health,
				RestartCount: d.RestartCount, Code: d.Code, Message: d.Message, UpdatedAt: d.UpdatedAt})
		}
	}
	for _, r := range g.Registries {
		if !r.ExpiresAt.IsZero() && r.ExpiresAt.Before(expiring) {
			s.Expiring = append(s.Expiring, HeldCredential{Tenant: g.Tenant, Gateway: g.ID, Registry: r})
		}
	}
}
