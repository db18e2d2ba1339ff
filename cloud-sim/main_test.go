package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// TestServeConfig: serve's flags land in serve.Config, secrets are read
// from their files, and a bad value names its flag.
func TestServeConfig(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("s3cr3t\n"), 0o600)
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, cfg serve.Config)
		wantErr string
	}{
		{name: "defaults", check: func(t *testing.T, cfg serve.Config) {
			if cfg.HTTPListen != "127.0.0.1:8080" || cfg.Retention != 30*24*time.Hour || cfg.Scheme.Prefix() != topic.DefaultPrefix || cfg.APIToken != "" {
				t.Errorf("defaults: listen %q, retention %s, prefix %q, token %q", cfg.HTTPListen, cfg.Retention, cfg.Scheme.Prefix(), cfg.APIToken)
			}
			if cfg.APIInsecureNoAuth || cfg.APIMaxStreams != 64 || len(cfg.APIAllowedHosts) != 0 {
				t.Errorf("API defaults: insecure %v, max streams %d, allowed hosts %v; want false, 64, none (a token made in --data)", cfg.APIInsecureNoAuth, cfg.APIMaxStreams, cfg.APIAllowedHosts)
			}
		}},
		{name: "flags", args: []string{"--http-listen", ":0", "--sim-count", "3", "--topic-prefix", "acme/fleet", "--api-token-file", token},
			check: func(t *testing.T, cfg serve.Config) {
				if cfg.HTTPListen != ":0" || cfg.Sim.Count != 3 || cfg.Scheme.Prefix() != "acme/fleet" || cfg.APIToken != "s3cr3t" {
					t.Errorf("got listen %q, sim count %d, prefix %q, token %q; want :0, 3, acme/fleet, the file's token",
						cfg.HTTPListen, cfg.Sim.Count, cfg.Scheme.Prefix(), cfg.APIToken)
				}
			}},
		{name: "API guards", args: []string{"--api-allowed-host", "fleet.example.com", "--api-allowed-host", "10.0.0.5:8080", "--api-max-streams", "8", "--api-insecure-no-auth"},
			check: func(t *testing.T, cfg serve.Config) {
				if !slices.Equal(cfg.APIAllowedHosts, []string{"fleet.example.com", "10.0.0.5:8080"}) || cfg.APIMaxStreams != 8 || !cfg.APIInsecureNoAuth {
					t.Errorf("got allowed hosts %v, max streams %d, insecure %v", cfg.APIAllowedHosts, cfg.APIMaxStreams, cfg.APIInsecureNoAuth)
				}
			}},
		{name: "nats", args: []string{"--nats", "tls://a:4222,tls://b:4222", "--nats-creds", "/etc/fleet/nats.creds",
			"--nats-ca", "ca.pem", "--nats-cert", "c.pem", "--nats-key", "c.key", "--nats-replicas", "3"},
			check: func(t *testing.T, cfg serve.Config) {
				if cfg.NATSURL != "tls://a:4222,tls://b:4222" || cfg.NATSCreds != "/etc/fleet/nats.creds" ||
					cfg.NATSCA != "ca.pem" || cfg.NATSCert != "c.pem" || cfg.NATSKey != "c.key" || cfg.NATSReplicas != 3 {
					t.Errorf("got nats %q creds %q ca %q cert %q key %q replicas %d", cfg.NATSURL, cfg.NATSCreds, cfg.NATSCA, cfg.NATSCert, cfg.NATSKey, cfg.NATSReplicas)
				}
			}},
		{name: "nats replicas", args: []string{"--nats-replicas", "7"}, wantErr: "--nats-replicas"},
		{name: "bad prefix", args: []string{"--topic-prefix", "a/#"}, wantErr: "--topic-prefix"},
		{name: "missing file", args: []string{"--broker-password-file", "/nonexistent"}, wantErr: "--broker-password-file"},
		{name: "limits", args: []string{"--mqtt-max-packet-size", "65536", "--mqtt-max-clients", "10", "--gateway-max-deployments", "8"},
			check: func(t *testing.T, cfg serve.Config) {
				if cfg.BrokerLimits.MaxPacketSize != 65536 || cfg.BrokerLimits.MaxClients != 10 || cfg.GatewayLimits.MaxDeployments != 8 {
					t.Errorf("broker limits %+v, gateway limits %+v", cfg.BrokerLimits, cfg.GatewayLimits)
				}
				if cfg.MQTTTLSListen != "" {
					t.Errorf("TLS listener %q without a certificate", cfg.MQTTTLSListen)
				}
			}},
		{name: "packet size too small", args: []string{"--mqtt-max-packet-size", "10"}, wantErr: "--mqtt-max-packet-size"},
		{name: "no deployments", args: []string{"--gateway-max-deployments", "0"}, wantErr: "--gateway-max-deployments"},
		{name: "TLS listener", args: []string{"--mqtt-tls-cert", "c.pem", "--mqtt-tls-key", "k.pem"},
			check: func(t *testing.T, cfg serve.Config) {
				if cfg.MQTTTLSListen != "127.0.0.1:8883" || cfg.MQTTTLSCert != "c.pem" || cfg.MQTTTLSKey != "k.pem" {
					t.Errorf("TLS listener %q cert %q key %q", cfg.MQTTTLSListen, cfg.MQTTTLSCert, cfg.MQTTTLSKey)
				}
			}},
		{name: "registry check allow-list", args: []string{"--registry-check-allow", "10.0.0.0/8,registry.lan:5000", "--registry-check-allow", "127.0.0.1:5000"},
			check: func(t *testing.T, cfg serve.Config) {
				if want := []string{"10.0.0.0/8", "registry.lan:5000", "127.0.0.1:5000"}; !slices.Equal(cfg.RegistryCheckAllow, want) {
					t.Errorf("RegistryCheckAllow = %q, want %q", cfg.RegistryCheckAllow, want)
				}
			}},
		{name: "bad registry check allow entry", args: []string{"--registry-check-allow", "registry.lan"}, wantErr: "--registry-check-allow"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
			config := serveConfig(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			cfg, err := config()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, cfg)
		})
	}
}
