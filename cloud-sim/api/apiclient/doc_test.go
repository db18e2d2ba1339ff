package apiclient

import (
	"errors"
	"strings"
	"testing"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

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
