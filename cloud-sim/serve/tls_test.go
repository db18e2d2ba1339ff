package serve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleet-agent/fleet/cloud-sim/broker"
)

// TestTLSSettings: TLS settings that cannot work are refused with an
// error naming the flag.
func TestTLSSettings(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(notPEM, []byte("not a certificate"), 0o600)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"CA with a plain broker", Config{BrokerURL: "mqtt://broker:1883", BrokerCA: notPEM}, "--broker mqtts://"},
		{"missing CA file", Config{BrokerURL: "mqtts://broker:8883", BrokerCA: "/nonexistent"}, "--broker-ca"},
		{"CA file without a certificate", Config{BrokerURL: "mqtts://broker:8883", BrokerCA: notPEM}, "no PEM certificate"},
		{"client certificate without its key", Config{BrokerURL: "mqtts://broker:8883", BrokerCert: "c.pem"}, "--broker-key"},
		{"no TLS settings", Config{BrokerURL: "mqtts://broker:8883"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := controllerTLS(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
			}
		})
	}
	for _, cfg := range []Config{{MQTTTLSCert: "c.pem"}, {MQTTTLSListen: ":8883"}, {MQTTTLSCert: "/nonexistent", MQTTTLSKey: "/nonexistent"}} {
		if err := brokerTLS(cfg, new(broker.Config)); err == nil || !strings.Contains(err.Error(), "--m") {
			t.Errorf("brokerTLS(%+v) = %v, want an error naming the flag", cfg, err)
		}
	}
}
