package api

import (
	"maps"
	"slices"
	"strings"

	"github.com/fleet-agent/fleet/cloud-sim/controller"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
	"github.com/fleet-agent/fleet/cloud-sim/identity"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/rollout"
	"github.com/fleet-agent/fleet/cloud-sim/tenantcred"
)

// The mapping between the wire types and the domain records, both ways.

func gatewayOf(g *inventory.Gateway) *Gateway {
	out := &Gateway{Tenant: g.Tenant, ID: g.ID, Online: g.Online, Stale: g.Stale, Session: g.Session, DeathSession: g.DeathSession,
		DeathReason: g.DeathReason, ConnectedAt: g.ConnectedAt, LastSeen: g.LastSeen, AgentVersion: g.AgentVersion,
		ProtocolVersion: g.ProtocolVersion, Simulated: g.Simulated, Labels: g.Labels, Groups: g.Groups,
		ReportedLabels: g.ReportedLabels, ReportedGroups: g.ReportedGroups, Provisioned: g.Provisioned, Capabilities: g.Capabilities,
		PublicKey: g.PublicKey, Registries: registriesOf(g.Registries), Running: g.Running}
	if g.Host != nil {
		h := Host(*g.Host)
		out.Host = &h
	}
	if g.Engine != nil {
		e := Engine(*g.Engine)
		out.Engine = &e
	}
	for _, s := range g.Sessions {
		out.Sessions = append(out.Sessions, Session(s))
	}
	for _, r := range g.Refused {
		out.Refused = append(out.Refused, Refusal{Limit: string(r.Limit), Message: r.Message, Count: r.Count, First: r.First, Last: r.Last})
	}
	if g.Deployments != nil {
		out.Deployments = make(map[string]*Deployment, len(g.Deployments))
		for k, d := range g.Deployments {
			out.Deployments[k] = deploymentOf(d)
		}
	}
	return out
}

func deploymentOf(d *inventory.Deployment) *Deployment {
	out := &Deployment{Name: d.Name, Revision: d.Revision, Phase: d.Phase.String(), Health: d.Health.String(), Image: d.Image,
		Digest: d.Digest, ContainerID: d.ContainerID, Code: d.Code, Message: d.Message, RestartCount: d.RestartCount, UpdatedAt: d.UpdatedAt}
	for _, s := range d.Services {
		out.Services = append(out.Services, Service{Name: s.Name, Phase: s.Phase.String(), Health: s.Health.String(), Image: s.Image,
			Digest: s.Digest, ContainerID: s.ContainerID, RestartCount: s.RestartCount, ExitCode: s.ExitCode, OOMKilled: s.OOMKilled,
			Code: s.Code, Message: s.Message})
	}
	return out
}

func registriesOf(list []inventory.Registry) []Registry {
	if list == nil {
		return nil
	}
	out := make([]Registry, len(list))
	for i, r := range list {
		out[i] = Registry(r)
	}
	return out
}

func gatewaysOf(list []*inventory.Gateway) []*Gateway {
	out := make([]*Gateway, len(list))
	for i, g := range list {
		out[i] = gatewayOf(g)
	}
	return out
}

func (t Target) domain() controller.Target {
	return controller.Target{Tenant: t.Tenant, Gateways: t.Gateways, Selector: t.Selector, Group: t.Group, All: t.All}
}

func commandOf(c *dispatch.Command) *Command {
	return &Command{ID: c.ID, Batch: c.Batch, Tenant: c.Tenant, Gateway: c.Gateway, Verb: c.Verb, State: string(c.State),
		OfflineWhenSent: c.OfflineWhenSent, Code: c.Code, Message: c.Message, Field: c.Field, Reply: c.Reply, SentAt: c.SentAt,
		AcceptedAt: c.AcceptedAt, FinishedAt: c.FinishedAt, Credentials: registriesOf(c.Credentials)}
}

func batchViewOf(b *dispatch.BatchView) *BatchView {
	out := &BatchView{Batch: Batch(b.Batch), Counts: make(map[string]int, len(b.Counts)), Done: b.Done, Failed: b.Failed}
	for _, c := range b.Commands {
		out.Commands = append(out.Commands, commandOf(c))
	}
	for st, n := range b.Counts {
		out.Counts[string(st)] = n
	}
	return out
}

func batchesOf(list []*dispatch.Batch) []*Batch {
	out := make([]*Batch, len(list))
	for i, b := range list {
		wb := Batch(*b)
		out[i] = &wb
	}
	return out
}

func credentialOf(v tenantcred.CredentialView) CredentialView {
	out := CredentialView{Tenant: v.Tenant, Registry: v.Registry, Kind: v.Kind, Username: v.Username, Fingerprint: v.Fingerprint,
		IssueTokens: v.IssueTokens, TokenFingerprint: v.TokenFingerprint, TokenExpiresAt: v.TokenExpiresAt, TokenRefreshAt: v.TokenRefreshAt,
		ExpiresAt: v.ExpiresAt, HasCACertificate: v.HasCACertificate, HasClientCert: v.HasClientCert, RequireTLS: v.RequireTLS, Insecure: v.Insecure, UpdatedAt: v.UpdatedAt}
	if v.LastCheck != nil {
		c := CheckResult(*v.LastCheck)
		out.LastCheck = &c
	}
	return out
}

func (s RolloutSpec) domain() rollout.Spec {
	st := s.Strategy
	out := rollout.Spec{Name: s.Name, Tenant: s.Tenant, Targets: rollout.Targets(s.Targets), Deployment: s.Deployment,
		SkipRegistryCheck: s.SkipRegistryCheck, Abort: rollout.AbortCriteria(s.Abort),
		Strategy: rollout.Strategy{BatchSize: st.BatchSize, BatchPercent: st.BatchPercent, MaxInFlight: st.MaxInFlight,
			RatePerMinute: st.RatePerMinute, GatewayTimeout: rollout.Duration(st.GatewayTimeout), Deadline: rollout.Duration(st.Deadline)}}
	if c := st.Canary; c != nil {
		out.Strategy.Canary = &rollout.Canary{Count: c.Count, Soak: rollout.Duration(c.Soak)}
	}
	if e := st.Exponential; e != nil {
		x := rollout.Exponential(*e)
		out.Strategy.Exponential = &x
	}
	if p := st.Prefetch; p != nil {
		out.Strategy.Prefetch = &rollout.Prefetch{MinPercent: p.MinPercent, Timeout: rollout.Duration(p.Timeout)}
	}
	return out
}

func rolloutSpecOf(s rollout.Spec) RolloutSpec {
	st := s.Strategy
	out := RolloutSpec{Name: s.Name, Tenant: s.Tenant, Targets: RolloutTargets(s.Targets), Deployment: s.Deployment,
		SkipRegistryCheck: s.SkipRegistryCheck, Abort: AbortCriteria(s.Abort),
		Strategy: Strategy{BatchSize: st.BatchSize, BatchPercent: st.BatchPercent, MaxInFlight: st.MaxInFlight,
			RatePerMinute: st.RatePerMinute, GatewayTimeout: Duration(st.GatewayTimeout), Deadline: Duration(st.Deadline)}}
	if c := st.Canary; c != nil {
		out.Strategy.Canary = &Canary{Count: c.Count, Soak: Duration(c.Soak)}
	}
	if e := st.Exponential; e != nil {
		x := Exponential(*e)
		out.Strategy.Exponential = &x
	}
	if p := st.Prefetch; p != nil {
		out.Strategy.Prefetch = &Prefetch{MinPercent: p.MinPercent, Timeout: Duration(p.Timeout)}
	}
	return out
}

func rolloutGatewayOf(g rollout.Gateway) RolloutGateway {
	return RolloutGateway{Rollout: g.Rollout, Gateway: g.Gateway, State: string(g.State), Batch: g.Batch, Attempt: g.Attempt,
		CommandID: g.CommandID, DispatchedAt: g.DispatchedAt, FinishedAt: g.FinishedAt, Code: g.Code, Message: g.Message,
		PrevSpec: g.PrevSpec, RollbackRevision: g.RollbackRevision, Prefetch: gatewayPrefetchOf(g.Prefetch)}
}

func gatewayPrefetchOf(p *rollout.GatewayPrefetch) *GatewayPrefetch {
	if p == nil {
		return nil
	}
	return &GatewayPrefetch{State: string(p.State), CommandID: p.CommandID, DispatchedAt: p.DispatchedAt, FinishedAt: p.FinishedAt,
		Code: p.Code, Message: p.Message}
}

func rolloutGatewaysOf(list []rollout.Gateway) []RolloutGateway {
	if list == nil {
		return nil
	}
	out := make([]RolloutGateway, len(list))
	for i, g := range list {
		out[i] = rolloutGatewayOf(g)
	}
	return out
}

func rolloutViewOf(s *rollout.Summary) *RolloutView {
	r := s.Rollout
	out := &RolloutView{Rollout: Rollout{ID: r.ID, Spec: rolloutSpecOf(r.Spec), State: string(r.State), Phase: string(r.Phase),
		Reason: r.Reason, CreatedAt: r.CreatedAt, FinishedAt: r.FinishedAt, SoakUntil: r.SoakUntil, PrefetchUntil: r.PrefetchUntil, Batch: r.Batch,
		BatchSize: r.BatchSize, Notified: r.Notified, Warnings: r.Warnings},
		Total: s.Total, Counts: make(map[string]int, len(s.Counts)), SucceededPct: s.SucceededPct, FailedPct: s.FailedPct,
		CurrentRate: s.CurrentRate, ETA: s.ETA, Failing: rolloutGatewaysOf(s.Failing), Gateways: rolloutGatewaysOf(s.Gateways), Active: s.Active}
	for st, n := range s.Counts {
		out.Counts[string(st)] = n
	}
	if s.PrefetchCounts != nil {
		out.PrefetchCounts = make(map[string]int, len(s.PrefetchCounts))
		for st, n := range s.PrefetchCounts {
			out.PrefetchCounts[string(st)] = n
		}
	}
	return out
}

func identityOf(d *identity.Device) *Identity {
	out := &Identity{Tenant: d.Tenant, ID: d.ID, Username: d.Tenant + "/" + d.ID, Groups: slices.Clone(d.Groups),
		Labels: maps.Clone(d.Labels), CreatedAt: d.CreatedAt}
	if out.Groups == nil {
		out.Groups = []string{}
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	return out
}

func dryRunOf(d *controller.DryRun) *DryRun {
	out := &DryRun{Tenant: d.Tenant, Gateways: d.Gateways, Count: len(d.Gateways), Warnings: d.Warnings}
	if d.Check != nil {
		c := CheckResult(*d.Check)
		out.Check = &c
	}
	for _, ch := range d.Checks {
		c := CheckResult(*ch)
		out.Checks = append(out.Checks, &c)
	}
	return out
}

func metricsOf(list []inventory.Sample, cpus uint32) *Metrics {
	out := &Metrics{Samples: make([]MetricSample, len(list))}
	for i, s := range list {
		out.Samples[i] = MetricSample{At: s.At, Load1: s.Load1, CPUs: cpus, MemoryUsedPercent: s.MemoryUsedPercent,
			DiskUsedPercent: s.DiskUsedPercent, Running: s.Running}
	}
	return out
}

func overviewOf(o *controller.Overview) *Overview {
	s := o.Summary
	out := &Overview{Gateways: GatewayCounts{Total: s.Total, Online: s.Online, Offline: s.Total - s.Online, Stale: s.Stale},
		AgentVersions: make(map[string]int, len(s.AgentVersions)), EngineVersions: make(map[string]int, len(s.Engines)),
		Deployments:    DeploymentCounts{ByPhase: make(map[string]int, len(s.Phases)), ByHealth: make(map[string]int, len(s.Health)), Total: s.Deployments},
		ActiveRollouts: make([]*RolloutView, 0, len(o.ActiveRollouts)), Failing: make([]FailingDeployment, 0, len(s.Failing)), FailingTotal: s.FailingTotal,
		ExpiringCredentials: make([]ExpiringCredential, 0, len(o.Expiring)), ExpiringCredentialsTotal: o.ExpiringTotal}
	for v, n := range s.AgentVersions {
		out.AgentVersions[orUnknown(v)] += n
	}
	for e, n := range s.Engines {
		out.EngineVersions[orUnknown(strings.TrimSpace(e.Name+" "+e.Version))] += n
	}
	for p, n := range s.Phases {
		out.Deployments.ByPhase[p.String()] += n
	}
	for h, n := range s.Health {
		out.Deployments.ByHealth[h.String()] += n
	}
	for _, r := range o.ActiveRollouts {
		out.ActiveRollouts = append(out.ActiveRollouts, rolloutViewOf(r))
	}
	for _, f := range s.Failing {
		out.Failing = append(out.Failing, FailingDeployment{Tenant: f.Tenant, Gateway: f.Gateway, Deployment: f.Deployment, Phase: f.Phase.String(),
			Health: f.Health.String(), RestartCount: f.RestartCount, Code: f.Code, Message: f.Message, UpdatedAt: f.UpdatedAt})
	}
	for _, e := range o.Expiring {
		where := WhereCloud
		if e.Gateway != "" {
			where = WhereGateway
		}
		out.ExpiringCredentials = append(out.ExpiringCredentials, ExpiringCredential{Tenant: e.Tenant, Registry: e.Registry, Kind: e.Kind,
			ExpiresAt: e.ExpiresAt, Where: where, Gateway: e.Gateway})
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
