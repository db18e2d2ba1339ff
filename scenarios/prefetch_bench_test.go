package scenarios

import (
	"fmt"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
)

// The prefetch benchmark's fleet: each gateway's simulated link moves a
// 64 MiB image in 16 s (4 MiB/s, 32 Mbit/s: a good cellular link).
const (
	benchImage = 64 << 20
	benchLink  = 4 << 20
)

// BenchmarkPrefetchActivation: "Prefetched rollout: time from activate to
// RUNNING on 1,000 simulated gateways" (issue 14), side by side with the
// same rollout without a prefetch phase, on one fleet: every pull takes the
// image's size over the gateway's link (simfleet LinkRate). The rollout
// goes in 4 batches of 25 % (maxInFlight 1000, no rate limit, no canary).
// The activation is from the first deploy's dispatch to the last gateway
// SUCCEEDED (RUNNING the new revision): with the prefetch phase, the time
// the switch takes once the images are staged; without, the whole
// rollout. The prefetch phase's own time and the whole rollout's are
// reported too.
func BenchmarkPrefetchActivation(b *testing.B) {
	const n = 1000
	c := newCloud(b, simfleet.Config{Count: n, Tenant: "sim", ImageBytes: benchImage, LinkRate: benchLink, MetricsInterval: 10 * time.Minute})
	waitOnlineTB(b, c, n)
	rev := 0
	for _, prefetch := range []bool{false, true} {
		b.Run(map[bool]string{false: "pull-in-deploy", true: "prefetched"}[prefetch], func(b *testing.B) {
			for b.Loop() {
				rev++
				st := api.Strategy{BatchPercent: 25, MaxInFlight: n}
				if prefetch {
					st.Prefetch = &api.Prefetch{}
				}
				t0 := time.Now()
				v := createRollout(b, c, api.RolloutSpec{Tenant: "sim", Targets: api.RolloutTargets{All: true}, SkipRegistryCheck: true,
					Deployment: deploymentJSON(rev, fmt.Sprintf("registry.example.com/web:%d", rev)), Strategy: st})
				for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(250 * time.Millisecond) {
					var st api.RolloutView
					c.get(b, "/v1/rollouts/"+v.ID, &st)
					if !st.Active {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("rollout still %s %s after 10 minutes: %v, prefetch %v", st.State, st.Phase, st.Counts, st.PrefetchCounts)
					}
				}
				total := time.Since(t0)
				v = rolloutStatus(b, c, v.ID)
				if v.State != api.RolloutSucceeded || v.Counts[api.GwSucceeded] != n {
					b.Fatalf("rollout %s: %v (%s)", v.State, v.Counts, v.Reason)
				}
				if prefetch && v.PrefetchCounts[api.PrefetchSucceeded] != n {
					b.Fatalf("prefetch: %v", v.PrefetchCounts)
				}
				first, last := v.Gateways[0].DispatchedAt, v.Gateways[0].FinishedAt
				for _, g := range v.Gateways {
					first, last = minTime(first, g.DispatchedAt), maxTime(last, g.FinishedAt)
				}
				b.ReportMetric(last.Sub(first).Seconds(), "s-activate")
				b.ReportMetric(first.Sub(v.CreatedAt).Seconds(), "s-prefetch")
				b.ReportMetric(total.Seconds(), "s-rollout")
			}
		})
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
