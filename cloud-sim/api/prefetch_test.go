package api

import (
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/cloud-sim/rollout"
)

// TestRolloutSpecPrefetch: strategy.prefetch is true, false or an object,
// read the same from YAML (CLI, console) as from JSON (the API), and
// mapped to the domain's prefetch phase.
func TestRolloutSpecPrefetch(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		want    *rollout.Prefetch
		wantErr string
	}{
		{"absent", `strategy: {batchSize: 10}`, nil, ""},
		{"true", `strategy: {prefetch: true}`, &rollout.Prefetch{}, ""},
		{"false", `strategy: {prefetch: false, batchSize: 10}`, nil, ""},
		{"object", "strategy:\n  prefetch: {minPercent: 90, timeout: 30m}", &rollout.Prefetch{MinPercent: 90, Timeout: rollout.Duration(30 * time.Minute)}, ""},
		{"JSON flow", `strategy: {"prefetch": {"minPercent": 50}}`, &rollout.Prefetch{MinPercent: 50}, ""},
		{"unknown field", `strategy: {prefetch: {minPercnt: 90}}`, nil, `unknown field "minPercnt"`},
		{"not a duration", `strategy: {prefetch: {timeout: soon}}`, nil, "not a duration"},
		{"unknown strategy field", `strategy: {prefetch: true, bachSize: 3}`, nil, `unknown field "bachSize"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := ParseRolloutSpec([]byte("tenant: acme\n" + tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := spec.domain().Strategy.Prefetch
			if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
				t.Errorf("prefetch %+v, want %+v", got, tt.want)
			}
			if back := rolloutSpecOf(spec.domain()).Strategy.Prefetch; (back == nil) != (tt.want == nil) {
				t.Errorf("mapped back: %+v", back)
			}
		})
	}
}
