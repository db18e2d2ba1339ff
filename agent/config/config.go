// Package config loads the agent's configuration from flags, FLEET_*
// environment variables and a YAML file, in that order of precedence.
//
// Every flag has an environment variable (FLEET_ and the flag name in upper
// case with - as _, e.g. FLEET_STATE_DIR) and a YAML key (the flag name, or
// its camelCase form, or nested maps whose keys join with -, so
// `broker: {username: x}` is broker-username; labels and groups may be
// written as a map and a list). Labels and groups from all sources are
// merged.
//
// The layering is written here rather than on github.com/peterbourgon/ff
// (v3.4.0, or v4, still alpha) because ff cannot keep three documented
// behaviours: it sets a flag from the environment or the file only when no
// earlier source set it, so labels and groups would no longer merge across
// sources (TestPrecedence); it reads the environment through os.Getenv and
// takes an empty variable for an absent one (TestConfigFromEnv); and its
// YAML parser knows neither camelCase nor snake_case keys, nor the plural
// keys labels/groups/allow-host-paths/…, nor a map of labels (TestFileKeys),
// so what is left to ff is the 20 lines of precedence below.
package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	units "github.com/docker/go-units"
	"gopkg.in/yaml.v3"

	"github.com/fleet-agent/fleet/agent/command"
	"github.com/fleet-agent/fleet/agent/ecrexec"
	"github.com/fleet-agent/fleet/agent/engine"
	"github.com/fleet-agent/fleet/agent/gateway"
	"github.com/fleet-agent/fleet/agent/logs"
	"github.com/fleet-agent/fleet/agent/reconcile"
	"github.com/fleet-agent/fleet/agent/trust"
	"github.com/fleet-agent/fleet/internal/backoff"
	"github.com/fleet-agent/fleet/internal/credential"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	fleetv1 "github.com/fleet-agent/fleet/protocol/fleet/v1"
	"github.com/fleet-agent/fleet/protocol/topic"
)

// Config is the agent's configuration as given.
type Config struct {
	ConfigFile string

	Broker             string
	BrokerUsername     string
	BrokerPassword     string
	BrokerPasswordFile string
	BrokerCA           string
	BrokerCert         string
	BrokerKey          string
	ClientID           string

	Tenant      string
	Gateway     string
	StateDir    string
	TopicPrefix string
	Encoding    string
	Labels      map[string]string
	Groups      []string

	KeepAlive       time.Duration
	SessionExpiry   time.Duration
	ReconnectMin    time.Duration
	ReconnectMax    time.Duration
	MaxPayload      int
	MetricsInterval time.Duration

	// CommandSigningKeys is the file of the tenant's command-signing
	// public keys; CommandMaxAge and CommandMaxSkew bound signed
	// commands' issuedAt.
	CommandSigningKeys string
	CommandMaxAge      time.Duration
	CommandMaxSkew     time.Duration

	DockerHost       string
	ImageGC          bool
	ResourcePrefix   string
	RequireSealed    bool
	AtRestKey        string
	RegistryCertsDir string
	ExpiryWarning    time.Duration
	ECRHelper        string
	AllowPrivileged  bool
	AllowHostNetwork bool
	AllowCapAdd      bool
	AllowHostPaths   []string
	AllowNetworks    []string
	AllowVolumes     []string
	AllowLogDrivers  []string
	PublishHostIP    string
	AllowPublishIPs  []string
	TmpfsSize        int64
	ImageTrustPolicy string

	// Pull mode AGENT (issue 14): who downloads images, and how.
	PullMode         string
	PullBandwidth    int64
	PullStallTimeout time.Duration
	PullStoreMax     int64
	AllowInsecure    []string

	// The logs verbs (issue 16): the rate limit across streams, its burst,
	// and the most text of a chunk.
	LogsRate      int64
	LogsBurst     int64
	LogsChunkSize int64

	LogFormat string
	LogLevel  string
}

func defaults() Config {
	return Config{
		StateDir:         "/var/lib/fleet-agent",
		TopicPrefix:      topic.DefaultPrefix,
		Encoding:         "protobuf",
		Labels:           map[string]string{},
		KeepAlive:        30 * time.Second,
		SessionExpiry:    7 * 24 * time.Hour,
		ReconnectMin:     time.Second,
		ReconnectMax:     2 * time.Minute,
		MaxPayload:       command.DefaultMaxPayload,
		MetricsInterval:  30 * time.Second,
		ImageGC:          true,
		ResourcePrefix:   reconcile.DefaultResourcePrefix,
		RequireSealed:    true,
		CommandMaxAge:    command.DefaultMaxAge,
		CommandMaxSkew:   command.DefaultMaxSkew,
		RegistryCertsDir: "/etc/docker/certs.d",
		ExpiryWarning:    time.Hour,
		PublishHostIP:    reconcile.DefaultPublishHostIP,
		TmpfsSize:        reconcile.DefaultTmpfsSize,
		PullMode:         "agent",
		PullStallTimeout: 30 * time.Second,
		LogsRate:         logs.DefaultRate,
		LogsBurst:        logs.DefaultBurst,
		LogsChunkSize:    logs.DefaultChunkSize,
		LogFormat:        "text",
		LogLevel:         "info",
	}
}

func (c *Config) flags(out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("fleet-agent", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.ConfigFile, "config", c.ConfigFile, "YAML config file")
	fs.StringVar(&c.Broker, "broker", c.Broker, "MQTT broker URL: mqtt://host:1883 or tls://host:8883 (required)")
	fs.StringVar(&c.BrokerUsername, "broker-username", c.BrokerUsername, "MQTT username")
	fs.StringVar(&c.BrokerPassword, "broker-password", c.BrokerPassword, "MQTT password (prefer --broker-password-file or FLEET_BROKER_PASSWORD: flags show in ps)")
	fs.StringVar(&c.BrokerPasswordFile, "broker-password-file", c.BrokerPasswordFile, "file holding the MQTT password")
	fs.StringVar(&c.BrokerCA, "broker-ca", c.BrokerCA, "PEM file of the CA that signs the broker's certificate (tls:// only; default: system roots)")
	fs.StringVar(&c.BrokerCert, "broker-cert", c.BrokerCert, "PEM client certificate for mutual TLS")
	fs.StringVar(&c.BrokerKey, "broker-key", c.BrokerKey, "PEM client key for mutual TLS")
	fs.StringVar(&c.ClientID, "client-id", c.ClientID, "MQTT client id (default {tenant}/{gateway})")
	fs.StringVar(&c.Tenant, "tenant", c.Tenant, "tenant id, 1-64 of [A-Za-z0-9._-] (required)")
	fs.StringVar(&c.Gateway, "gateway", c.Gateway, "gateway id, 1-64 of [A-Za-z0-9._-], not \"group\" (required)")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for the agent's state file")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", c.TopicPrefix, "topic prefix")
	fs.StringVar(&c.Encoding, "payload-encoding", c.Encoding, "encoding of the agent's own publications: protobuf or json")
	fs.Var(labelsValue{&c.Labels}, "label", "label key=value for the birth certificate; repeatable, or comma-separated")
	fs.Var(groupsValue{&c.Groups}, "group", "group whose commands this gateway takes; repeatable, or comma-separated")
	fs.DurationVar(&c.KeepAlive, "keep-alive", c.KeepAlive, "MQTT keep-alive")
	fs.DurationVar(&c.SessionExpiry, "session-expiry", c.SessionExpiry, "how long the broker keeps the session (and queued commands) while the gateway is offline")
	fs.DurationVar(&c.ReconnectMin, "reconnect-min", c.ReconnectMin, "ceiling of the first reconnect delay (exponential back-off, full jitter)")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", c.ReconnectMax, "cap of the reconnect delay")
	fs.IntVar(&c.MaxPayload, "max-payload", c.MaxPayload, "largest command payload accepted, in bytes")
	fs.DurationVar(&c.MetricsInterval, "metrics-interval", c.MetricsInterval, "metrics heartbeat interval")
	fs.StringVar(&c.DockerHost, "docker-host", c.DockerHost, "Docker Engine address (default: DOCKER_HOST or the local socket)")
	fs.BoolVar(&c.ImageGC, "image-gc", c.ImageGC, "remove images the agent pulled that no deployment uses (each keeps its current and previous revision's image); images the agent did not pull are never removed")
	fs.StringVar(&c.ResourcePrefix, "resource-prefix", c.ResourcePrefix, "first part of the engine names of the containers, networks and volumes the agent creates ({prefix}-{deployment}-r{revision}); give each agent sharing one engine its own")
	fs.BoolVar(&c.RequireSealed, "credentials-require-sealed", c.RequireSealed, "accept registry credentials only sealed to this gateway's public key")
	fs.StringVar(&c.ECRHelper, "ecr-helper", c.ECRHelper, "the fleet-agent-ecr helper that gets tokens for ecr credentials: a path, or a name on PATH (default: fleet-agent-ecr beside the agent's executable, else on PATH)")
	fs.StringVar(&c.RegistryCertsDir, "registry-certs-dir", c.RegistryCertsDir, "the Docker Engine's per-registry certificate directory, where credentials' caCertificate and client certificates are installed (<dir>/<host:port>/ca.crt, client.cert, client.key)")
	fs.DurationVar(&c.ExpiryWarning, "credentials-expiry-warning", c.ExpiryWarning, "warn (event and birth) this long before an ecr-token credential expires")
	fs.StringVar(&c.AtRestKey, "at-rest-key", c.AtRestKey, "file with the 32-byte key that encrypts secrets in the state file (default: at-rest.key in --state-dir, created on first start)")
	fs.StringVar(&c.CommandSigningKeys, "command-signing-keys", c.CommandSigningKeys, `JSON file of the tenant's command-signing public keys, {"keys": [{"id", "publicKey"}]} as the provisioning response's commandSigningKeys: only commands signed by one of them run (default: none, and the agent runs unsigned commands from anyone who can publish on its command topics: insecure)`)
	fs.DurationVar(&c.CommandMaxAge, "command-max-age", c.CommandMaxAge, "with --command-signing-keys: refuse commands issued longer ago than this (offline-queued commands older than this do not run); command ids are remembered as long")
	fs.DurationVar(&c.CommandMaxSkew, "command-max-skew", c.CommandMaxSkew, "with --command-signing-keys: refuse commands issued further than this in the future (clock skew)")
	fs.BoolVar(&c.AllowPrivileged, "allow-privileged", c.AllowPrivileged, "policy: allow privileged containers")
	fs.BoolVar(&c.AllowHostNetwork, "allow-host-network", c.AllowHostNetwork, "policy: allow networkMode host")
	fs.BoolVar(&c.AllowCapAdd, "allow-cap-add", c.AllowCapAdd, "policy: allow added capabilities")
	fs.Var(groupsValue{&c.AllowHostPaths}, "allow-host-path", "policy: host directory under which bind mounts and devices may lie once their symlinks are resolved; repeatable (default: none)")
	fs.Var(groupsValue{&c.AllowNetworks}, "allow-network", "policy: network mode allowed besides bridge and none: a network's name, container:NAME, or container:* for any; repeatable (default: none)")
	fs.Var(groupsValue{&c.AllowVolumes}, "allow-volume", "policy: named volume the agent did not create that deployments may mount; repeatable (default: none, only volumes the agent created)")
	fs.Var(groupsValue{&c.AllowLogDrivers}, "allow-log-driver", "policy: log driver allowed besides json-file, local and none (syslog, fluentd, gelf, awslogs, … send logs off the gateway with the engine's network and credentials); repeatable")
	fs.StringVar(&c.PublishHostIP, "publish-host-ip", c.PublishHostIP, "policy: host address of published ports whose spec gives no hostIp (0.0.0.0: every address, as Docker, IoT Edge and balena do)")
	fs.Var(groupsValue{&c.AllowPublishIPs}, "allow-publish-host-ip", "policy: host address a spec's port may name besides --publish-host-ip; repeatable (default: none)")
	fs.Var(sizeValue{&c.TmpfsSize}, "tmpfs-size", "policy: size of every tmpfs mount (the spec gives none), e.g. 64MiB")
	fs.StringVar(&c.ImageTrustPolicy, "image-trust-policy", c.ImageTrustPolicy, "YAML file of the image trust policy: cosign public keys or digests that images must match before a container is created from them (default: none, every image is trusted)")
	fs.StringVar(&c.PullMode, "pull-mode", c.PullMode, "who downloads images when a spec's pull.mode does not say: agent (into the agent's store under --state-dir/images: a cut download resumes from its last byte, also after a restart, every blob is verified by digest, --pull-bandwidth applies; the engine then pulls it from the agent on loopback) or engine (the Docker Engine pulls from the registry itself; a cut layer restarts from zero)")
	fs.Var(rateValue{&c.PullBandwidth}, "pull-bandwidth", "cap of the agent's downloads together, e.g. 512KiB/s (default: unlimited); a spec's pull.bandwidth caps its own download further")
	fs.DurationVar(&c.PullStallTimeout, "pull-stall-timeout", c.PullStallTimeout, "a download that receives no byte for this long is reconnected (pull mode agent)")
	fs.Var(sizeValue{&c.PullStoreMax}, "pull-store-max", "cap of the agent's image store, e.g. 2GiB: images no deployment keeps are removed oldest first to stay under it, and a pull that cannot fit fails with NO_SPACE (default: no cap beyond the free space)")
	fs.Var(groupsValue{&c.AllowInsecure}, "allow-insecure-registry", "policy: registry (host[:port]) whose credentials may say insecure: the agent's own pull reaches it over plain HTTP or TLS without verification, with no change to the engine's insecure-registries; repeatable (default: none)")
	fs.Var(rateValue{&c.LogsRate}, "logs-rate", "cap of the containers' output the logs verb sends, all streams together, e.g. 16KiB/s (0: unlimited); lines over it are dropped and counted in the next chunk")
	fs.Var(sizeValue{&c.LogsBurst}, "logs-burst", "the most output the logs streams may send at once above --logs-rate, e.g. 64KiB (at least 16KiB, a line's most)")
	fs.Var(sizeValue{&c.LogsChunkSize}, "logs-chunk-size", "the most line text of one LogChunk, e.g. 64KiB (16KiB to 128KiB: a chunk must stay under the brokers' 1 MiB packets also in JSON)")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "log level: debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `fleet-agent runs containers on this gateway as the cloud commands over MQTT.

Usage: fleet-agent --broker URL --tenant T --gateway ID [flags]

Every flag can also be set by an environment variable, FLEET_ and the flag
name in upper case (FLEET_STATE_DIR), and by a key in the YAML file given by
--config or FLEET_CONFIG (state-dir: /var/lib/fleet-agent). Flags win over
the environment, which wins over the file.

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

// Load reads the configuration. It returns flag.ErrHelp after printing the
// usage when asked for help; every other error names the setting at fault.
func Load(args []string, lookupEnv func(string) (string, bool), out io.Writer) (*Config, error) {
	// A first pass finds the config file.
	probe := defaults()
	pfs := probe.flags(io.Discard)
	pfs.Usage = func() {}
	_ = pfs.Parse(args)
	file := probe.ConfigFile
	if file == "" {
		file, _ = lookupEnv("FLEET_CONFIG")
	}

	c := defaults()
	fs := c.flags(out)
	if file != "" {
		if err := applyFile(fs, file); err != nil {
			return nil, err
		}
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := EnvName(f.Name)
		if v, ok := lookupEnv(name); ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("environment %s=%q: %w", name, v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: every setting is a --flag", fs.Arg(0))
	}
	c.ConfigFile = file
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return "FLEET_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func applyFile(fs *flag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return applyMap(fs, path, "", doc)
}

// fileAliases are the plural file keys of repeatable flags.
var fileAliases = map[string]string{"labels": "label", "groups": "group", "allow-host-paths": "allow-host-path",
	"allow-networks": "allow-network", "allow-volumes": "allow-volume", "allow-log-drivers": "allow-log-driver",
	"allow-publish-host-ips": "allow-publish-host-ip"}

func applyMap(fs *flag.FlagSet, path, prefix string, m map[string]any) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		name := prefix + kebab(k)
		if alias, ok := fileAliases[name]; ok {
			name = alias
		}
		v := m[k]
		// A map is a group of settings (broker: {username: x}), except
		// for the one map-valued flag.
		if sub, ok := v.(map[string]any); ok && name != "label" {
			if err := applyMap(fs, path, name+"-", sub); err != nil {
				return err
			}
			continue
		}
		if fs.Lookup(name) == nil {
			return fmt.Errorf("config file %s: unknown key %q; keys are the flag names (see fleet-agent --help)", path, name)
		}
		if err := fs.Set(name, yamlString(v)); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, name, err)
		}
	}
	return nil
}

func yamlString(v any) string {
	switch v := v.(type) {
	case map[string]any:
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(v)) {
			kv = append(kv, fmt.Sprintf("%s=%v", k, v[k]))
		}
		return strings.Join(kv, ",")
	case []any:
		var s []string
		for _, e := range v {
			s = append(s, fmt.Sprint(e))
		}
		return strings.Join(s, ",")
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// kebab turns camelCase and snake_case into kebab-case.
func kebab(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == '_':
			b.WriteByte('-')
		case unicode.IsUpper(r):
			if i > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(unicode.ToLower(r))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

type labelsValue struct{ m *map[string]string }

func (v labelsValue) String() string {
	if v.m == nil || *v.m == nil {
		return ""
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(*v.m)) {
		kv = append(kv, k+"="+(*v.m)[k])
	}
	return strings.Join(kv, ",")
}

func (v labelsValue) Set(s string) error {
	if *v.m == nil {
		*v.m = map[string]string{}
	}
	for _, pair := range strings.Split(s, ",") {
		if pair = strings.TrimSpace(pair); pair == "" {
			continue
		}
		k, val, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: write key=value", pair)
		}
		(*v.m)[k] = val
	}
	return nil
}

type groupsValue struct{ s *[]string }

func (v groupsValue) String() string {
	if v.s == nil {
		return ""
	}
	return strings.Join(*v.s, ",")
}

func (v groupsValue) Set(s string) error {
	for _, g := range strings.Split(s, ",") {
		if g = strings.TrimSpace(g); g != "" && !slices.Contains(*v.s, g) {
			*v.s = append(*v.s, g)
		}
	}
	return nil
}

// rateValue is bytes per second, written as a size with an optional "/s".
type rateValue struct{ n *int64 }

func (v rateValue) String() string {
	if v.n == nil || *v.n == 0 {
		return ""
	}
	return units.BytesSize(float64(*v.n)) + "/s"
}

func (v rateValue) Set(s string) error {
	n, err := units.RAMInBytes(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a rate such as 512KiB/s or 2MiB/s (0: unlimited)", s)
	}
	*v.n = n
	return nil
}

type sizeValue struct{ n *int64 }

func (v sizeValue) String() string {
	if v.n == nil {
		return ""
	}
	return units.BytesSize(float64(*v.n))
}

func (v sizeValue) Set(s string) error {
	n, err := units.RAMInBytes(s)
	if err != nil {
		return fmt.Errorf("%q is not a size such as 64MiB or 1g", s)
	}
	*v.n = n
	return nil
}

func (c *Config) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Broker == "" {
		add("--broker is required, e.g. --broker mqtt://broker.example:1883 (or FLEET_BROKER)")
	} else if u, err := url.Parse(c.Broker); err != nil || u.Host == "" {
		add("--broker %q: not a URL of the form mqtt://host:port or tls://host:port", c.Broker)
	} else if !slices.Contains([]string{"mqtt", "tcp", "tls", "ssl", "mqtts"}, u.Scheme) {
		add("--broker %q: scheme %q unsupported; use mqtt:// or tls://", c.Broker, u.Scheme)
	}
	if c.Tenant == "" {
		add("--tenant is required (or FLEET_TENANT)")
	} else if err := topic.CheckID("tenant", c.Tenant); err != nil {
		add("--tenant: %v", err)
	}
	if !validPrefix(c.ResourcePrefix) {
		add("--resource-prefix %q: use 1-32 characters of a-z 0-9 -, beginning with a letter or digit (default %s)", c.ResourcePrefix, reconcile.DefaultResourcePrefix)
	}
	if c.Gateway == "" {
		add("--gateway is required (or FLEET_GATEWAY)")
	} else if err := topic.CheckGatewayID(c.Gateway); err != nil {
		add("--gateway: %v", err)
	}
	for _, g := range c.Groups {
		if err := topic.CheckID("group", g); err != nil {
			add("--group: %v", err)
		}
	}
	if c.StateDir == "" {
		add("--state-dir must not be empty")
	}
	if _, err := topic.NewScheme(c.TopicPrefix); err != nil {
		add("--topic-prefix: %v", err)
	}
	if _, err := codec.ParseEncoding(c.Encoding); err != nil {
		add("--payload-encoding: %v", err)
	}
	if c.BrokerPassword != "" && c.BrokerPasswordFile != "" {
		add("--broker-password and --broker-password-file are both set; keep one")
	}
	if (c.BrokerCert == "") != (c.BrokerKey == "") {
		add("--broker-cert and --broker-key go together for mutual TLS; set both or neither")
	}
	if c.KeepAlive < time.Second || c.KeepAlive > 65535*time.Second {
		add("--keep-alive %v: must be between 1s and 18h12m15s", c.KeepAlive)
	}
	if c.SessionExpiry < 0 || c.SessionExpiry/time.Second > 1<<32-1 {
		add("--session-expiry %v: must be between 0 and about 136 years", c.SessionExpiry)
	}
	if c.ReconnectMin <= 0 || c.ReconnectMax < c.ReconnectMin {
		add("--reconnect-min %v / --reconnect-max %v: need 0 < min <= max", c.ReconnectMin, c.ReconnectMax)
	}
	if c.MaxPayload < 1024 {
		add("--max-payload %d: must be at least 1024 bytes", c.MaxPayload)
	}
	if c.CommandMaxAge < time.Minute {
		add("--command-max-age %v: must be at least 1m", c.CommandMaxAge)
	}
	if c.CommandMaxSkew < 0 {
		add("--command-max-skew %v: must not be negative", c.CommandMaxSkew)
	}
	if c.MetricsInterval < time.Second {
		add("--metrics-interval %v: must be at least 1s", c.MetricsInterval)
	}
	c.validatePolicy(add)
	if c.LogFormat != "text" && c.LogFormat != "json" {
		add("--log-format %q: use text or json", c.LogFormat)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		add("--log-level %q: use debug, info, warn or error", c.LogLevel)
	}
	return errors.Join(errs...)
}

func (c *Config) validatePolicy(add func(string, ...any)) {
	for _, p := range c.AllowHostPaths {
		if !filepath.IsAbs(p) {
			add("--allow-host-path %q: must be an absolute path", p)
		}
	}
	if _, err := netip.ParseAddr(c.PublishHostIP); err != nil {
		add("--publish-host-ip %q: not an IP address; use 127.0.0.1 (this gateway only), 0.0.0.0 (every address) or one of the gateway's addresses", c.PublishHostIP)
	}
	for _, ip := range c.AllowPublishIPs {
		if _, err := netip.ParseAddr(ip); err != nil {
			add("--allow-publish-host-ip %q: not an IP address", ip)
		}
	}
	for _, n := range c.AllowNetworks {
		if n == "container:" {
			add("--allow-network %q: name the container (container:NAME) or write container:* for any", n)
		}
	}
	if c.TmpfsSize < 1<<20 {
		add("--tmpfs-size %s: must be at least 1MiB", units.BytesSize(float64(c.TmpfsSize)))
	}
	if _, ok := pullModes[c.PullMode]; !ok {
		add("--pull-mode %q: use agent or engine", c.PullMode)
	}
	if c.PullStallTimeout < time.Second {
		add("--pull-stall-timeout %v: must be at least 1s", c.PullStallTimeout)
	}
	if c.PullStoreMax != 0 && c.PullStoreMax < 64<<20 {
		add("--pull-store-max %s: must be at least 64MiB, or 0 for no cap", units.BytesSize(float64(c.PullStoreMax)))
	}
	if c.LogsBurst < logs.MaxLine {
		add("--logs-burst %s: must be at least 16KiB, a line's most", units.BytesSize(float64(c.LogsBurst)))
	}
	if c.LogsChunkSize < logs.MaxLine || c.LogsChunkSize > logs.MaxChunkSize {
		add("--logs-chunk-size %s: must be between 16KiB and 128KiB", units.BytesSize(float64(c.LogsChunkSize)))
	}
	for _, r := range c.AllowInsecure {
		if k, err := credential.ParseRegistry(r); err != nil || k.Prefix != "" || k.Host != r {
			add("--allow-insecure-registry %q: write a registry host as images name it, host or host:port, without a path", r)
		}
	}
}

var pullModes = map[string]fleetv1.Pull_Mode{"agent": fleetv1.Pull_AGENT, "engine": fleetv1.Pull_ENGINE}

// Logger builds the logger the configuration asks for.
func (c *Config) Logger(w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Docker returns the client of the engine --docker-host names, labelling
// containers with the gateway's owner id (--client-id, or tenant/gateway).
func (c *Config) Docker(logger *slog.Logger) (*engine.Docker, error) {
	owner := c.ClientID
	if owner == "" {
		owner = c.Tenant + "/" + c.Gateway
	}
	d, err := engine.NewDocker(c.DockerHost, owner, logger.With("component", "engine"))
	if err != nil {
		return nil, fmt.Errorf("--docker-host: %w", err)
	}
	return d, nil
}

// CommandKeys reads the --command-signing-keys file: nil without one.
func (c *Config) CommandKeys() (*cmdsig.Verifier, error) {
	if c.CommandSigningKeys == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.CommandSigningKeys)
	if err != nil {
		return nil, fmt.Errorf("--command-signing-keys: %w", err)
	}
	v, err := cmdsig.ParseKeys(b)
	if err != nil {
		return nil, fmt.Errorf("--command-signing-keys %s: %w", c.CommandSigningKeys, err)
	}
	return v, nil
}

// GatewayConfig turns the configuration into the gateway's, on docker,
// reading the files it names (password, certificates). Births read the
// engine's facts from docker.Facts(), which the caller keeps running.
func (c *Config) GatewayConfig(version string, logger *slog.Logger, docker *engine.Docker) (gateway.Config, error) {
	u, _ := url.Parse(c.Broker)
	scheme, _ := topic.NewScheme(c.TopicPrefix)
	enc, _ := codec.ParseEncoding(c.Encoding)
	g := gateway.Config{
		Tenant: c.Tenant, ID: c.Gateway, Scheme: scheme, Encoding: enc, StateDir: c.StateDir,
		Labels: c.Labels, Groups: c.Groups,
		BrokerURL: u, ClientID: c.ClientID, Username: c.BrokerUsername, Password: []byte(c.BrokerPassword),
		KeepAlive: c.KeepAlive, SessionExpiry: c.SessionExpiry,
		Backoff:    backoff.Policy{Base: c.ReconnectMin, Max: c.ReconnectMax},
		MaxPayload: c.MaxPayload, MetricsInterval: c.MetricsInterval,
		Version: version, Logger: logger,
		ImageGC: c.ImageGC, ResourcePrefix: c.ResourcePrefix, RequireSealed: c.RequireSealed, AtRestKey: c.AtRestKey,
		RegistryCertsDir: c.RegistryCertsDir, ExpiryWarning: c.ExpiryWarning,
		Policy: reconcile.Policy{AllowPrivileged: c.AllowPrivileged, AllowHostNetwork: c.AllowHostNetwork,
			AllowCapAdd: c.AllowCapAdd, AllowedHostPaths: c.AllowHostPaths, AllowedNetworks: c.AllowNetworks,
			AllowedVolumes: c.AllowVolumes, AllowedLogDrivers: c.AllowLogDrivers, PublishHostIP: c.PublishHostIP,
			AllowedPublishHostIPs: c.AllowPublishIPs, TmpfsSize: c.TmpfsSize},
	}
	g.Engine, g.InsecureRegistry = docker, docker.InsecureRegistry
	g.Pull = gateway.PullConfig{Loopback: docker, Mode: pullModes[c.PullMode], Bandwidth: c.PullBandwidth,
		StallTimeout: c.PullStallTimeout, StoreMax: c.PullStoreMax, AllowInsecure: c.AllowInsecure}
	g.Logs = gateway.LogsConfig{Rate: c.LogsRate, Burst: c.LogsBurst, ChunkSize: int(c.LogsChunkSize)}
	if c.LogsRate == 0 {
		g.Logs.Rate = -1 // unlimited
	}
	if c.ImageTrustPolicy != "" {
		p, err := trust.Load(c.ImageTrustPolicy)
		if err != nil {
			return g, fmt.Errorf("--image-trust-policy %s: %w", c.ImageTrustPolicy, err)
		}
		g.TrustPolicy = p
	}
	g.ECRToken = ecrexec.Helper{Path: c.ECRHelper}.Token
	g.EngineInfo, g.OnConnect = docker.Facts().Get, docker.Facts().Refresh
	g.CommandMaxAge, g.CommandMaxSkew = c.CommandMaxAge, c.CommandMaxSkew
	var err error
	g.CommandKeysFile = c.CommandSigningKeys
	if g.CommandKeys, err = c.CommandKeys(); err != nil {
		return g, err
	}
	if c.BrokerPasswordFile != "" {
		b, err := os.ReadFile(c.BrokerPasswordFile)
		if err != nil {
			return g, fmt.Errorf("--broker-password-file: %w", err)
		}
		g.Password = []byte(strings.TrimRight(string(b), "\r\n"))
	}
	if c.BrokerCA != "" || c.BrokerCert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.BrokerCA != "" {
			pem, err := os.ReadFile(c.BrokerCA)
			if err != nil {
				return g, fmt.Errorf("--broker-ca: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return g, fmt.Errorf("--broker-ca %s: no PEM certificate in the file", c.BrokerCA)
			}
		}
		if c.BrokerCert != "" {
			cert, err := tls.LoadX509KeyPair(c.BrokerCert, c.BrokerKey)
			if err != nil {
				return g, fmt.Errorf("--broker-cert/--broker-key: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		g.TLS = tc
	}
	return g, nil
}

// validPrefix reports whether p can begin a container's, network's and
// volume's engine name.
func validPrefix(p string) bool {
	if p == "" || len(p) > 32 || p[0] == '-' {
		return false
	}
	for i := range len(p) {
		if c := p[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
