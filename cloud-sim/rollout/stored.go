package rollout

import "github.com/fleet-agent/fleet/cloud-sim/state"

// The mapping between rollouts and what the store keeps, both ways.

func (s Spec) stored() state.RolloutSpec {
	st := s.Strategy
	out := state.RolloutSpec{Name: s.Name, Tenant: s.Tenant, Targets: state.RolloutTargets(s.Targets), Deployment: s.Deployment,
		SkipRegistryCheck: s.SkipRegistryCheck, Abort: state.AbortCriteria(s.Abort),
		Strategy: state.Strategy{BatchSize: st.BatchSize, BatchPercent: st.BatchPercent, MaxInFlight: st.MaxInFlight,
			RatePerMinute: st.RatePerMinute, GatewayTimeout: state.Duration(st.GatewayTimeout), Deadline: state.Duration(st.Deadline)}}
	if c := st.Canary; c != nil {
		out.Strategy.Canary = &state.Canary{Count: c.Count, Soak: state.Duration(c.Soak)}
	}
	if e := st.Exponential; e != nil {
		x := state.Exponential(*e)
		out.Strategy.Exponential = &x
	}
	if p := st.Prefetch; p != nil {
		out.Strategy.Prefetch = &state.Prefetch{MinPercent: p.MinPercent, Timeout: state.Duration(p.Timeout)}
	}
	return out
}

func restoreSpec(s state.RolloutSpec) Spec {
	st := s.Strategy
	out := Spec{Name: s.Name, Tenant: s.Tenant, Targets: Targets(s.Targets), Deployment: s.Deployment,
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

func (r *Rollout) stored() *state.Rollout {
	return &state.Rollout{ID: r.ID, Spec: r.Spec.stored(), State: string(r.State), Phase: string(r.Phase), Reason: r.Reason,
		CreatedAt: r.CreatedAt, FinishedAt: r.FinishedAt, SoakUntil: r.SoakUntil, PrefetchUntil: r.PrefetchUntil, Batch: r.Batch, BatchSize: r.BatchSize,
		Notified: r.Notified, Warnings: r.Warnings}
}

func restoreRollout(s *state.Rollout) *Rollout {
	return &Rollout{ID: s.ID, Spec: restoreSpec(s.Spec), State: State(s.State), Phase: Phase(s.Phase), Reason: s.Reason,
		CreatedAt: s.CreatedAt, FinishedAt: s.FinishedAt, SoakUntil: s.SoakUntil, PrefetchUntil: s.PrefetchUntil, Batch: s.Batch, BatchSize: s.BatchSize,
		Notified: s.Notified, Warnings: s.Warnings}
}

func (g *Gateway) stored() *state.RolloutGateway {
	return &state.RolloutGateway{Rollout: g.Rollout, Gateway: g.Gateway, State: string(g.State), Batch: g.Batch, Attempt: g.Attempt,
		CommandID: g.CommandID, DispatchedAt: g.DispatchedAt, FinishedAt: g.FinishedAt, Code: g.Code, Message: g.Message,
		PrevSpec: g.PrevSpec, RollbackRevision: g.RollbackRevision, Prefetch: g.Prefetch.stored()}
}

func (p *GatewayPrefetch) stored() *state.GatewayPrefetch {
	if p == nil {
		return nil
	}
	return &state.GatewayPrefetch{State: string(p.State), CommandID: p.CommandID, DispatchedAt: p.DispatchedAt, FinishedAt: p.FinishedAt,
		Code: p.Code, Message: p.Message}
}

func restorePrefetch(s *state.GatewayPrefetch) *GatewayPrefetch {
	if s == nil {
		return nil
	}
	return &GatewayPrefetch{State: PrefetchState(s.State), CommandID: s.CommandID, DispatchedAt: s.DispatchedAt, FinishedAt: s.FinishedAt,
		Code: s.Code, Message: s.Message}
}

func restoreGateway(s *state.RolloutGateway) *Gateway {
	return &Gateway{Rollout: s.Rollout, Gateway: s.Gateway, State: GatewayState(s.State), Batch: s.Batch, Attempt: s.Attempt,
		CommandID: s.CommandID, DispatchedAt: s.DispatchedAt, FinishedAt: s.FinishedAt, Code: s.Code, Message: s.Message,
		PrevSpec: s.PrevSpec, RollbackRevision: s.RollbackRevision, Prefetch: restorePrefetch(s.Prefetch)}
}
