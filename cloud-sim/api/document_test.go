package api

import (
	"strings"
	"testing"
	"time"
)

func TestParseRolloutSpec(t *testing.T) {
	tests := []struct {
		name, doc string
		check     func(RolloutSpec) bool
		err       string
	}{
		{name: "yaml", doc: "tenant: acme\ntargets: {all: true}\ndeployment: {name: web, revision: 5, image: quay.io/acme/web:1.5}\nstrategy:\n  canary: {count: 2, soak: 10m}\n  batchPercent: 10\nabort: {thresholdPercent: 5, rollback: true}\n",
			check: func(s RolloutSpec) bool {
				return s.Tenant == "acme" && s.Targets.All && s.Strategy.Canary.Count == 2 && s.Strategy.Canary.Soak == Duration(10*time.Minute) &&
					s.Strategy.BatchPercent == 10 && s.Abort.Rollback && strings.Contains(string(s.Deployment), `"revision":5`)
			}},
		{name: "json", doc: `{"tenant": "acme", "targets": {"gateways": ["gw-1"]}, "deployment": {"name": "web"}}`,
			check: func(s RolloutSpec) bool { return s.Tenant == "acme" && len(s.Targets.Gateways) == 1 }},
		{name: "unknown field", doc: "tenant: acme\nstrategy: {batches: 3}\n", err: `unknown field "batches"`},
		{name: "not yaml", doc: "tenant: [acme", err: "yaml"},
		{name: "bad duration", doc: "strategy: {canary: {count: 1, soak: soon}}\n", err: "not a duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseRolloutSpec([]byte(tt.doc))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || !tt.check(s) {
				t.Fatalf("got %+v, %v", s, err)
			}
		})
	}
}
