package rollout

import (
	"encoding/json"
	"testing"

	"github.com/fleet-agent/fleet/internal/errdefs"
)

func TestSpecValidate(t *testing.T) {
	valid := func() Spec {
		return Spec{Tenant: "acme", Targets: Targets{All: true},
			Deployment: json.RawMessage(`{"name": "web", "revision": 2, "image": "registry.example.com/web:2"}`)}
	}
	tests := []struct {
		name   string
		change func(*Spec)
		field  string // "" when valid
	}{
		{"valid", func(*Spec) {}, ""},
		{"no tenant", func(s *Spec) { s.Tenant = "" }, "tenant"},
		{"no targets", func(s *Spec) { s.Targets = Targets{} }, "targets"},
		{"bad selector", func(s *Spec) { s.Targets = Targets{Selector: "=x"} }, "targets.selector"},
		{"no deployment", func(s *Spec) { s.Deployment = nil }, "deployment"},
		{"deployment not a spec", func(s *Spec) { s.Deployment = json.RawMessage(`{"nom": "web"}`) }, "deployment"},
		{"bad name", func(s *Spec) {
			s.Deployment = json.RawMessage(`{"name": "Web!", "revision": 2, "image": "x"}`)
		}, "deployment.name"},
		{"no revision", func(s *Spec) { s.Deployment = json.RawMessage(`{"name": "web", "image": "x"}`) }, "deployment.revision"},
		{"no image", func(s *Spec) { s.Deployment = json.RawMessage(`{"name": "web", "revision": 1}`) }, "deployment.image"},
		{"empty canary", func(s *Spec) { s.Strategy.Canary = &Canary{} }, "strategy.canary.count"},
		{"batch size and percent", func(s *Spec) { s.Strategy.BatchSize, s.Strategy.BatchPercent = 10, 10 }, "strategy.batchPercent"},
		{"percent over 100", func(s *Spec) { s.Strategy.BatchPercent = 150 }, "strategy.batchPercent"},
		{"rate and exponential", func(s *Spec) {
			s.Strategy.RatePerMinute, s.Strategy.Exponential = 10, &Exponential{BaseRate: 1, IncrementFactor: 2, StepEvery: 1}
		}, "strategy.exponential"},
		{"exponential factor below 1", func(s *Spec) {
			s.Strategy.Exponential = &Exponential{BaseRate: 1, IncrementFactor: 0.5, StepEvery: 1}
		}, "strategy.exponential.incrementFactor"},
		{"exponential step on", func(s *Spec) {
			s.Strategy.Exponential = &Exponential{BaseRate: 1, IncrementFactor: 2, StepEvery: 1, StepOn: "always"}
		}, "strategy.exponential.stepOn"},
		{"prefetch minimum over 100", func(s *Spec) { s.Strategy.Prefetch = &Prefetch{MinPercent: 120} }, "strategy.prefetch.minPercent"},
		{"negative prefetch timeout", func(s *Spec) { s.Strategy.Prefetch = &Prefetch{Timeout: -1} }, "strategy.prefetch.timeout"},
		{"unknown failure kind", func(s *Spec) { s.Abort.FailureKinds = []string{"FAILED", "CRASHED"} }, "abort.failureKinds[1]"},
		{"threshold over 100", func(s *Spec) { s.Abort.ThresholdPercent = 101 }, "abort.thresholdPercent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid()
			tt.change(&s)
			_, err := s.Validate()
			if got := errdefs.Field(err); got != tt.field || (tt.field != "" && err == nil) {
				t.Errorf("validate: field %q (%v), want %q", got, err, tt.field)
			}
		})
	}
}

func TestAbortCountsAsFailure(t *testing.T) {
	tests := []struct {
		kinds []string
		state GatewayState
		want  bool
	}{
		{nil, GatewayFailed, true},
		{nil, GatewayTimedOut, true},
		{nil, GatewaySucceeded, false},
		{nil, GatewayCanceled, false},
		{[]string{"FAILED"}, GatewayTimedOut, false},
		{[]string{"timed_out"}, GatewayTimedOut, true},
		{[]string{"ALL"}, GatewayRejected, true},
	}
	for _, tt := range tests {
		if got := (AbortCriteria{FailureKinds: tt.kinds}).countsAsFailure(tt.state); got != tt.want {
			t.Errorf("kinds %v, state %s: %v, want %v", tt.kinds, tt.state, got, tt.want)
		}
	}
}
