package engine

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
)

// TestLogConfig: json-file keeps the size cap unless the spec sets its own
// (a gateway's flash fills up); other drivers take the spec's options.
func TestLogConfig(t *testing.T) {
	tests := []struct {
		name       string
		logging    *fleetv1.Logging
		wantDriver string
		wantOpts   map[string]string
	}{
		{"none given", nil, "json-file", map[string]string{"max-size": "10m", "max-file": "3"}},
		{"json-file without options", &fleetv1.Logging{Driver: "json-file"}, "json-file", map[string]string{"max-size": "10m", "max-file": "3"}},
		{"json-file with some", &fleetv1.Logging{Driver: "json-file", Options: map[string]string{"max-size": "1m", "tag": "x"}},
			"json-file", map[string]string{"max-size": "1m", "max-file": "3", "tag": "x"}},
		{"local as given", &fleetv1.Logging{Driver: "local", Options: map[string]string{"max-file": "2"}}, "local", map[string]string{"max-file": "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, host, err := containerConfig("t/g", &fleetv1.DeploymentSpec{Name: "x", Revision: 1, Image: "a:1", Logging: tt.logging}, Host{})
			if err != nil {
				t.Fatal(err)
			}
			if host.LogConfig.Type != tt.wantDriver {
				t.Errorf("driver = %q, want %q", host.LogConfig.Type, tt.wantDriver)
			}
			if d := cmp.Diff(tt.wantOpts, host.LogConfig.Config); d != "" {
				t.Errorf("options (-want +got):\n%s", d)
			}
		})
	}
}
