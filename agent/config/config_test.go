package config_test

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-agent/fleet/agent/config"
	"github.com/google/go-cmp/cmp"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

var required = []string{"--broker", "mqtt://b:1883", "--tenant", "t", "--gateway", "g"}

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(file, []byte(`
broker: mqtt://file:1883
tenant: t
gateway: g
stateDir: /from/file
keepAlive: 10s
labels: {site: berlin, tier: edge}
groups: [a, b]
broker-username: fileuser
`), 0o600)
	cfg, err := config.Load([]string{"--config", file, "--keep-alive", "20s", "--label", "tier=canary"},
		env(map[string]string{"FLEET_STATE_DIR": "/from/env", "FLEET_KEEP_ALIVE": "15s", "FLEET_GROUP": "c"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Broker != "mqtt://file:1883" || cfg.BrokerUsername != "fileuser" {
		t.Errorf("file values: broker %q username %q", cfg.Broker, cfg.BrokerUsername)
	}
	if cfg.StateDir != "/from/env" {
		t.Errorf("state dir = %q, want the environment's over the file's", cfg.StateDir)
	}
	if cfg.KeepAlive != 20*time.Second {
		t.Errorf("keep-alive = %v, want the flag's over env and file", cfg.KeepAlive)
	}
	if d := cmp.Diff(map[string]string{"site": "berlin", "tier": "canary"}, cfg.Labels); d != "" {
		t.Errorf("labels (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"a", "b", "c"}, cfg.Groups); d != "" {
		t.Errorf("groups (-want +got):\n%s", d)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want string
	}{
		{"missing required", nil, nil, "", "--broker is required"},
		{"bad scheme", []string{"--broker", "http://x:1", "--tenant", "t", "--gateway", "g"}, nil, "", `scheme "http" unsupported`},
		{"reserved gateway", []string{"--broker", "mqtt://b:1", "--tenant", "t", "--gateway", "group"}, nil, "", "reserved"},
		{"bad encoding", append([]string{"--payload-encoding", "xml"}, required...), nil, "", "--payload-encoding"},
		{"cert without key", append([]string{"--broker-cert", "c.pem"}, required...), nil, "", "set both or neither"},
		{"bad env", required, map[string]string{"FLEET_KEEP_ALIVE": "soon"}, "", "FLEET_KEEP_ALIVE"},
		{"unknown file key", required, nil, "brokr: x\n", `unknown key "brokr"`},
		{"stray argument", append([]string{"extra"}, required...), nil, "", "unexpected argument"},
		{"relative host path", append([]string{"--allow-host-path", "data"}, required...), nil, "", `--allow-host-path "data": must be an absolute path`},
		{"publish host ip not an address", append([]string{"--publish-host-ip", "eth0"}, required...), nil, "", `--publish-host-ip "eth0"`},
		{"allowed host ip not an address", required, map[string]string{"FLEET_ALLOW_PUBLISH_HOST_IP": "lan"}, "", `--allow-publish-host-ip "lan"`},
		{"tmpfs size not a size", append([]string{"--tmpfs-size", "big"}, required...), nil, "", `"big" is not a size`},
		{"tmpfs size too small", required, nil, "tmpfsSize: 1k\n", "--tmpfs-size 1KiB: must be at least 1MiB"},
		{"pull mode unknown", append([]string{"--pull-mode", "both"}, required...), nil, "", `--pull-mode "both": use agent or engine`},
		{"pull bandwidth not a rate", append([]string{"--pull-bandwidth", "fast"}, required...), nil, "", `"fast" is not a rate`},
		{"stall timeout too short", required, map[string]string{"FLEET_PULL_STALL_TIMEOUT": "10ms"}, "", "--pull-stall-timeout 10ms"},
		{"store cap too small", required, nil, "pullStoreMax: 1MiB\n", "--pull-store-max 1MiB: must be at least 64MiB"},
		{"resource prefix with a capital", append([]string{"--resource-prefix", "Fleet"}, required...), nil, "", `--resource-prefix "Fleet": use 1-32 characters of a-z 0-9 -`},
		{"resource prefix beginning with -", append([]string{"--resource-prefix", "-x"}, required...), nil, "", `--resource-prefix "-x"`},
		{"resource prefix empty", required, nil, "resourcePrefix: \"\"\n", `--resource-prefix "": use`},
		{"insecure registry with a path", append([]string{"--allow-insecure-registry", "reg.example:5000/team"}, required...), nil, "", `--allow-insecure-registry "reg.example:5000/team"`},
		{"container network without a name", append([]string{"--allow-network", "container:"}, required...), nil, "", `--allow-network "container:"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				f := filepath.Join(t.TempDir(), "c.yaml")
				os.WriteFile(f, []byte(tt.file), 0o600)
				args = append([]string{"--config", f}, args...)
			}
			_, err := config.Load(args, env(tt.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Load error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestPullSettings: the pull settings parse as the README writes them and
// reach the gateway's configuration.
func TestPullSettings(t *testing.T) {
	args := append([]string{"--pull-mode", "engine", "--pull-bandwidth", "512KiB/s", "--pull-store-max", "2GiB",
		"--allow-insecure-registry", "reg.plant:5000,10.0.0.9:5000"}, required...)
	cfg, err := config.Load(args, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PullMode != "engine" || cfg.PullBandwidth != 512<<10 || cfg.PullStoreMax != 2<<30 || cfg.PullStallTimeout != 30*time.Second {
		t.Errorf("pull settings %q %d %d %v", cfg.PullMode, cfg.PullBandwidth, cfg.PullStoreMax, cfg.PullStallTimeout)
	}
	if d := cmp.Diff([]string{"reg.plant:5000", "10.0.0.9:5000"}, cfg.AllowInsecure); d != "" {
		t.Errorf("allowed insecure registries (-want +got):\n%s", d)
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	_, err := config.Load([]string{"--help"}, env(nil), &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"--broker", "FLEET_STATE_DIR", "-payload-encoding", "-session-expiry"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

// TestFileKeys pins the file's key forms that a generic config-file
// library does not read (see the package comment).
func TestFileKeys(t *testing.T) {
	tests := []struct {
		name string
		file string
		want func(*config.Config) any
		val  any
	}{
		{"flag name", "state-dir: /a\n", func(c *config.Config) any { return c.StateDir }, "/a"},
		{"camelCase", "stateDir: /a\n", func(c *config.Config) any { return c.StateDir }, "/a"},
		{"snake_case", "state_dir: /a\n", func(c *config.Config) any { return c.StateDir }, "/a"},
		{"nested map joined with -", "broker:\n  password:\n    file: /p\n", func(c *config.Config) any { return c.BrokerPasswordFile }, "/p"},
		{"labels as a map", "labels: {site: berlin}\n", func(c *config.Config) any { return c.Labels }, map[string]string{"site": "berlin"}},
		{"groups as a list", "groups: [a, b]\n", func(c *config.Config) any { return c.Groups }, []string{"a", "b"}},
		{"allowHostPaths as a list", "allowHostPaths: [/srv, /data]\n", func(c *config.Config) any { return c.AllowHostPaths }, []string{"/srv", "/data"}},
		{"allowNetworks as a list", "allowNetworks: [lan, \"container:vpn\"]\n", func(c *config.Config) any { return c.AllowNetworks }, []string{"lan", "container:vpn"}},
		{"allow-volumes as a list", "allow-volumes: [shared]\n", func(c *config.Config) any { return c.AllowVolumes }, []string{"shared"}},
		{"allow_log_drivers as a list", "allow_log_drivers: [syslog]\n", func(c *config.Config) any { return c.AllowLogDrivers }, []string{"syslog"}},
		{"allowPublishHostIps as a list", "allowPublishHostIps: [0.0.0.0]\n", func(c *config.Config) any { return c.AllowPublishIPs }, []string{"0.0.0.0"}},
		{"publishHostIp", "publishHostIp: 0.0.0.0\n", func(c *config.Config) any { return c.PublishHostIP }, "0.0.0.0"},
		{"tmpfsSize", "tmpfsSize: 16MiB\n", func(c *config.Config) any { return c.TmpfsSize }, int64(16 << 20)},
		{"duration", "keepAlive: 45s\n", func(c *config.Config) any { return c.KeepAlive }, 45 * time.Second},
		{"bool", "image-gc: false\n", func(c *config.Config) any { return c.ImageGC }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "c.yaml")
			os.WriteFile(f, []byte(tt.file), 0o600)
			cfg, err := config.Load(append([]string{"--config", f}, required...), env(nil), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.val, tt.want(cfg)); d != "" {
				t.Errorf("from %q (-want +got):\n%s", tt.file, d)
			}
		})
	}
}

// TestPolicyDefaults: the policy settings are secure without any setting,
// and the environment sets them as the flags do.
func TestPolicyDefaults(t *testing.T) {
	cfg, err := config.Load(required, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PublishHostIP != "127.0.0.1" || cfg.TmpfsSize != 64<<20 || len(cfg.AllowNetworks)+len(cfg.AllowVolumes)+len(cfg.AllowLogDrivers)+len(cfg.AllowPublishIPs) != 0 {
		t.Errorf("defaults: publish %q, tmpfs %d, networks %v, volumes %v, log drivers %v, host ips %v; want 127.0.0.1, 64 MiB and nothing allowed",
			cfg.PublishHostIP, cfg.TmpfsSize, cfg.AllowNetworks, cfg.AllowVolumes, cfg.AllowLogDrivers, cfg.AllowPublishIPs)
	}
	cfg, err = config.Load(required, env(map[string]string{"FLEET_ALLOW_NETWORK": "lan,container:*", "FLEET_PUBLISH_HOST_IP": "0.0.0.0", "FLEET_TMPFS_SIZE": "8m"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"lan", "container:*"}, cfg.AllowNetworks); d != "" || cfg.PublishHostIP != "0.0.0.0" || cfg.TmpfsSize != 8<<20 {
		t.Errorf("from the environment: networks (-want +got) %s, publish %q, tmpfs %d", d, cfg.PublishHostIP, cfg.TmpfsSize)
	}
}

// TestConfigFromEnv: FLEET_CONFIG names the file; a variable set to the
// empty string still overrides the file.
func TestConfigFromEnv(t *testing.T) {
	f := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(f, []byte("broker-username: fileuser\nstate-dir: /from/file\n"), 0o600)
	cfg, err := config.Load(required, env(map[string]string{"FLEET_CONFIG": f, "FLEET_BROKER_USERNAME": ""}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StateDir != "/from/file" || cfg.ConfigFile != f {
		t.Errorf("state dir %q, config file %q: want the file FLEET_CONFIG names", cfg.StateDir, cfg.ConfigFile)
	}
	if cfg.BrokerUsername != "" {
		t.Errorf("broker username = %q, want the empty FLEET_BROKER_USERNAME over the file", cfg.BrokerUsername)
	}
}

// TestEveryInvalidSetting: invalid settings are reported together, one
// line each.
func TestEveryInvalidSetting(t *testing.T) {
	_, err := config.Load([]string{"--broker", "http://x:1", "--tenant", "t", "--gateway", "g",
		"--payload-encoding", "xml", "--keep-alive", "0s", "--log-format", "yaml"}, env(nil), io.Discard)
	if err == nil {
		t.Fatal("Load accepted invalid settings")
	}
	for _, want := range []string{"--broker", "--payload-encoding", "--keep-alive", "--log-format"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 4 {
		t.Errorf("error has %d lines, want 4 (one per setting):\n%v", n, err)
	}
}
