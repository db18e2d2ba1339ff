package api

import (
	"errors"
	"strings"
	"testing"
	"time"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
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

const specYAML = `# a spec
name: web
revision: 2
image: registry.example.com/team/web:1
ports:
  - containerPort: 8080
    host_port: 80
  - containerPort: 9090
restartPolicy:
  mode: UNLESS_STOPPED
`

func TestDocLine(t *testing.T) {
	doc, err := ParseDoc([]byte(specYAML))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"name", 2},
		{"image", 4},
		{"ports", 5},
		{"ports[0]", 6},
		{"ports[0].hostPort", 7},
		{"ports[1].containerPort", 8},
		{"ports[7].hostPort", 5}, // the deepest part it has
		{"restart_policy.mode", 10},
		{"privileged", 0},
		{"", 0},
	} {
		if got := doc.Line(tc.path); got != tc.want {
			t.Errorf("Line(%q) = %d, want %d", tc.path, got, tc.want)
		}
	}
}

func TestDocDecode(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		wantLine   int
		wantKey    string
		wantErr    string // substring; "" for none
	}{
		{name: "valid", yaml: specYAML},
		{name: "json", yaml: `{"name": "web", "image": "x:1"}`},
		{name: "unknown field", yaml: "name: web\nimagee: x:1\n", wantLine: 2, wantKey: "imagee", wantErr: `unknown field "imagee"`},
		{name: "wrong type", yaml: "name: web\nports:\n  - containerPort: eighty\n", wantLine: 3, wantKey: "containerPort", wantErr: "containerPort"},
		{name: "syntax", yaml: "name: web\nimage: x: y\n", wantLine: 2, wantErr: "mapping values"},
		{name: "tab", yaml: "name: web\n\timage: x\n", wantLine: 2, wantErr: "tab character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var spec fleetv1.DeploymentSpec
			doc, err := ParseDoc([]byte(tc.yaml))
			if err == nil {
				err = doc.Decode(&spec)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("err = %v, want none", err)
				}
				if spec.GetName() != "web" {
					t.Errorf("name = %q, want web", spec.GetName())
				}
				return
			}
			de, ok := errors.AsType[*DocError](err)
			if !ok {
				t.Fatalf("err = %v, want a *DocError", err)
			}
			if de.Line != tc.wantLine || de.Key != tc.wantKey || !strings.Contains(de.Msg, tc.wantErr) || strings.HasPrefix(de.Msg, "proto:") {
				t.Errorf("err = line %d key %q %q, want line %d key %q containing %q", de.Line, de.Key, de.Msg, tc.wantLine, tc.wantKey, tc.wantErr)
			}
		})
	}
}
