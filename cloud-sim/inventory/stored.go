package inventory

import (
	"maps"
	"slices"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/state"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// stored is g as the store keeps it, a copy: it is encoded after the
// inventory's lock is released. The inventory's lock is held.
func (g *Gateway) stored() *state.Gateway {
	g.storedSeen = g.LastSeen
	s := &state.Gateway{Tenant: g.Tenant, ID: g.ID, Online: g.Online, Session: g.Session, DeathSession: g.DeathSession,
		DeathReason: g.DeathReason, ConnectedAt: g.ConnectedAt, LastSeen: g.LastSeen, AgentVersion: g.AgentVersion,
		ProtocolVersion: g.ProtocolVersion, Simulated: g.Simulated, ReportedLabels: maps.Clone(g.ReportedLabels),
		ReportedGroups: slices.Clone(g.ReportedGroups),
		Capabilities:   slices.Clone(g.Capabilities),
		PublicKey:      g.PublicKey, Registries: StoredRegistries(g.Registries), Delivered: slices.Clone(g.Delivered), Running: g.Running}
	for _, ss := range g.sessions {
		s.Sessions = append(s.Sessions, state.Session{Session: ss.id, ConnectedAt: state.TimeOf(ss.connected), DisconnectedAt: state.TimeOf(ss.disconnected), DeathReason: ss.reason})
	}
	for _, r := range g.Refused {
		s.Refused = append(s.Refused, state.Refusal{Limit: string(r.Limit), Message: r.Message, Count: r.Count, First: r.First, Last: r.Last})
	}
	if g.Host != nil {
		h := state.Host(*g.Host)
		s.Host = &h
	}
	if g.Engine != nil {
		e := state.Engine(*g.Engine)
		s.Engine = &e
	}
	if g.Deployments != nil {
		s.Deployments = make(map[string]*state.Deployment, len(g.Deployments))
		for k, d := range g.Deployments {
			d.storedAt = d.UpdatedAt
			s.Deployments[k] = &state.Deployment{Name: d.Name, Revision: d.Revision, Phase: d.Phase.String(), Health: d.Health.String(),
				Image: d.Image, Digest: d.Digest, ContainerID: d.ContainerID, Code: d.Code, Message: d.Message, RestartCount: d.RestartCount, UpdatedAt: d.UpdatedAt, ReportedAt: d.ReportedAt,
				Services: storedServices(d.Services)}
		}
	}
	return s
}

// restore is the gateway s stores.
func restore(s *state.Gateway) *Gateway {
	g := &Gateway{Tenant: s.Tenant, ID: s.ID, Online: s.Online, Session: s.Session, DeathSession: s.DeathSession,
		DeathReason: s.DeathReason, ConnectedAt: s.ConnectedAt, LastSeen: s.LastSeen, AgentVersion: s.AgentVersion,
		ProtocolVersion: s.ProtocolVersion, Simulated: s.Simulated, ReportedLabels: s.ReportedLabels, ReportedGroups: s.ReportedGroups, Capabilities: s.Capabilities,
		PublicKey: s.PublicKey, Registries: RestoredRegistries(s.Registries), Delivered: s.Delivered, Running: s.Running,
		storedSeen: s.LastSeen}
	for _, ss := range s.Sessions[max(len(s.Sessions)-MaxSessions, 0):] {
		g.pushSession(session{id: ss.Session, connected: state.UnixNano(ss.ConnectedAt), disconnected: state.UnixNano(ss.DisconnectedAt), reason: ss.DeathReason})
	}
	for _, r := range s.Refused {
		g.Refused = append(g.Refused, Refusal{Limit: Limit(r.Limit), Message: r.Message, Count: r.Count, First: r.First, Last: r.Last})
	}
	if s.Host != nil {
		h := Host(*s.Host)
		g.Host = &h
	}
	if s.Engine != nil {
		e := Engine(*s.Engine)
		g.Engine = &e
	}
	if s.Deployments != nil {
		g.Deployments = make(map[string]*Deployment, len(s.Deployments))
		for k, d := range s.Deployments {
			g.Deployments[k] = &Deployment{Name: d.Name, Revision: d.Revision, Phase: Phase(fleetv1.DeploymentStatus_Phase_value[d.Phase]),
				Health: Health(fleetv1.HealthCheck_Status_value[strings.ToUpper(d.Health)]), Image: d.Image, Digest: d.Digest,
				ContainerID: d.ContainerID, Code: d.Code, Message: d.Message, RestartCount: d.RestartCount, UpdatedAt: d.UpdatedAt, ReportedAt: d.ReportedAt,
				Services: restoredServices(d.Services), storedAt: d.UpdatedAt}
		}
	}
	return g
}

// StoredRegistries are regs as the store keeps them.
func StoredRegistries(regs []Registry) []state.Registry {
	if regs == nil {
		return nil
	}
	out := make([]state.Registry, len(regs))
	for i, r := range regs {
		out[i] = state.Registry(r)
	}
	return out
}

// RestoredRegistries are the registries regs stores.
func RestoredRegistries(regs []state.Registry) []Registry {
	if regs == nil {
		return nil
	}
	out := make([]Registry, len(regs))
	for i, r := range regs {
		out[i] = Registry(r)
	}
	return out
}
