package rollout

import (
	"fmt"

	"github.com/fleet-agent/fleet/cloud-sim/changes"
	"github.com/fleet-agent/fleet/cloud-sim/dispatch"
)

// The prefetch phase: Step's part of it. Each target gateway's prefetch
// is a command of its own (CommandID "prefetch"), sent by a worker as a
// deploy is; its outcome is the command's (the agent sends no status for
// a prefetch). The gateway's own State stays QUEUED throughout: the
// phase changes nothing the rest of the rollout counts.

func (run *Run) countPrefetch(st PrefetchState) int {
	n := 0
	for _, g := range run.gws {
		if g.Prefetch != nil && g.Prefetch.State == st {
			n++
		}
	}
	return n
}

func (s *stepper) setPrefetch(g *Gateway, st PrefetchState, code, msg string) {
	p := g.Prefetch
	p.State, p.Code, p.Message = st, code, msg
	if st != PrefetchQueued && st != PrefetchInProgress {
		p.FinishedAt = s.now
	}
	s.run.dirty[g.Gateway] = struct{}{}
	s.run.note(changes.Change{Kind: "rollout.prefetch", At: s.now, Tenant: s.run.R.Spec.Tenant, Gateway: g.Gateway, Batch: s.run.R.ID,
		Command: p.CommandID, State: string(st), Message: msg})
}

// observePrefetch records a prefetch's final reply.
func (s *stepper) observePrefetch(g *Gateway) {
	st, code, msg, ok := s.cmds.Outcome(g.Prefetch.CommandID)
	switch {
	case !ok || !st.Final():
	case st == dispatch.Succeeded:
		s.setPrefetch(g, PrefetchSucceeded, "", "")
	default:
		s.setPrefetch(g, PrefetchFailed, code, msg)
	}
}

// prefetchDone: the phase's timeout has passed, or no gateway's prefetch
// is in flight and none waits online to be sent.
func (s *stepper) prefetchDone() bool {
	if !s.now.Before(s.run.R.PrefetchUntil) {
		return true
	}
	for _, g := range s.run.gws {
		p := g.Prefetch
		if p != nil && (p.State == PrefetchInProgress || (p.State == PrefetchQueued && g.State == GatewayQueued && s.online(g))) {
			return false
		}
	}
	return true
}

// endPrefetch ends the phase: prefetches still in flight time out, those
// never sent are skipped, and the canary or the batches come next. It
// returns why the rollout must abort instead: fewer gateways than the
// spec's minimum hold the image.
func (s *stepper) endPrefetch() string {
	run, r := s.run, s.run.R
	for _, id := range run.order {
		g := run.gws[id]
		switch {
		case g.Prefetch == nil:
		case g.Prefetch.State == PrefetchInProgress:
			s.setPrefetch(g, PrefetchTimedOut, "DEADLINE_EXCEEDED", "still running when the prefetch phase ended; the deploy pulls")
		case g.Prefetch.State == PrefetchQueued:
			s.setPrefetch(g, PrefetchSkipped, "", "offline during the prefetch phase; the deploy pulls")
		}
	}
	r.Phase, run.dirtyRun = PhaseBatches, true
	if r.Spec.Strategy.Canary != nil {
		r.Phase = PhaseCanary
	}
	staged, total := run.countPrefetch(PrefetchSucceeded), len(run.gws)
	pct := 100.0
	if total > 0 {
		pct = 100 * float64(staged) / float64(total)
	}
	run.note(changes.Change{Kind: "rollout.phase", At: s.now, Tenant: r.Spec.Tenant, Batch: r.ID, State: string(r.Phase),
		Message: fmt.Sprintf("prefetch done: %d of %d gateways hold the image", staged, total)})
	if least := r.Spec.Strategy.Prefetch.MinPercent; least > 0 && pct < least {
		return fmt.Sprintf("prefetch: %d of %d gateways hold the image (%.1f%%, minimum %.1f%%)", staged, total, pct, least)
	}
	return ""
}

// dispatchPrefetch sends the prefetches of the queued online gateways,
// within the rollout's in-flight bound and rate.
func (s *stepper) dispatchPrefetch(inflight int) []Dispatch {
	run, r := s.run, s.run.R
	if r.State != Running {
		r.lastTick = s.now
		return nil
	}
	limit := s.limit(inflight)
	var out []Dispatch
	for _, id := range run.order {
		if len(out) >= limit {
			break
		}
		g := run.gws[id]
		if g.Prefetch == nil || g.Prefetch.State != PrefetchQueued || g.State != GatewayQueued || !s.online(g) {
			continue
		}
		g.Prefetch.CommandID, g.Prefetch.DispatchedAt = CommandID(r.ID, id, 0, "prefetch"), s.now
		s.setPrefetch(g, PrefetchInProgress, "", "")
		out = append(out, Dispatch{Rollout: r.ID, Gateway: id, CommandID: g.Prefetch.CommandID})
	}
	if r.Spec.Strategy.RatePerMinute > 0 || r.Spec.Strategy.Exponential != nil {
		r.tokens -= float64(len(out))
	}
	return out
}
