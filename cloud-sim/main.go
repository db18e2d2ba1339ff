// Command cloud-sim is the cloud side of Fleet Agent: an MQTT broker with
// per-gateway authentication and ACL, emulated registries, the fleet
// controller with its HTTP API and durable state in NATS JetStream,
// simulated gateways, and the CLI that talks to it.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/fleet-agent/fleet/cloud-sim/api"
	"github.com/fleet-agent/fleet/cloud-sim/api/apiclient"
	"github.com/fleet-agent/fleet/cloud-sim/broker"
	"github.com/fleet-agent/fleet/cloud-sim/cli"
	"github.com/fleet-agent/fleet/cloud-sim/demo"
	"github.com/fleet-agent/fleet/cloud-sim/egress"
	"github.com/fleet-agent/fleet/cloud-sim/inventory"
	"github.com/fleet-agent/fleet/cloud-sim/serve"
	"github.com/fleet-agent/fleet/cloud-sim/simfleet"
	"github.com/fleet-agent/fleet/protocol/cmdsig"
	"github.com/fleet-agent/fleet/protocol/codec"
	"github.com/fleet-agent/fleet/protocol/topic"
)

var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	st, _ := os.Stderr.Stat()
	env := cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Interactive: st != nil && st.Mode()&os.ModeCharDevice != 0}
	root := cli.New(env, serveCmd(), fleetCmd(), demoCmd(), brokerCmd(), sampleWebCmd(), versionCmd())
	root.Version = version
	root.SetVersionTemplate("{{.Version}}\n")
	code := cli.Execute(ctx, root, os.Args[1:])
	stop()
	os.Exit(code)
}

func logger(verbose bool, level string) *slog.Logger {
	lv := slog.LevelWarn
	if verbose {
		lv = slog.LevelInfo
	}
	switch level {
	case "debug":
		lv = slog.LevelDebug
	case "info":
		if verbose {
			lv = slog.LevelInfo
		}
	case "error":
		lv = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
}

func readSecretFile(flagName, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flagName, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func serveCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Broker, registries, NATS, controller, HTTP API (and a simulated fleet)",
		Args:  cli.NoArgs,
	}
	config := serveConfig(cmd.Flags())
	profile := cmd.Flags().String("cpu-profile", "", "write a CPU profile of the whole run to FILE, ended at shutdown (go tool pprof FILE): what costs the controller CPU")
	allocs := cmd.Flags().String("alloc-profile", "", "write a profile of the whole run's allocations to FILE at shutdown (go tool pprof -sample_index=alloc_space FILE): what the garbage collector follows")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := config()
		if err != nil {
			return cli.Usagef("%v", err)
		}
		if *profile != "" {
			stop, err := startCPUProfile(*profile)
			if err != nil {
				return err
			}
			defer stop()
		}
		if *allocs != "" {
			defer writeAllocProfile(cmd.ErrOrStderr(), *allocs)
		}
		return runServe(cmd.Context(), cmd.OutOrStdout(), cfg)
	}
	return cmd
}

// startCPUProfile profiles the process's CPU into path until stop.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// writeAllocProfile writes the allocations made since the process
// started into path; a failure is only reported, at shutdown.
func writeAllocProfile(w io.Writer, path string) {
	f, err := os.Create(path)
	if err == nil {
		err = errors.Join(pprof.Lookup("allocs").WriteTo(f, 0), f.Close())
	}
	if err != nil {
		fmt.Fprintf(w, "--alloc-profile: %v\n", err)
	}
}

// serveConfig defines serve's flags on fs and returns what makes the
// serve.Config of their values once they are parsed: the one place that
// maps flags onto the config.
func serveConfig(fs *pflag.FlagSet) func() (serve.Config, error) {
	var cfg serve.Config
	fs.StringVar(&cfg.DataDir, "data", "cloud-sim-data", "data directory: broker sessions, NATS store, keys, simulated gateways")
	fs.StringVar(&cfg.MQTTListen, "mqtt-listen", "127.0.0.1:1883", "embedded MQTT broker address")
	fs.StringVar(&cfg.BrokerURL, "broker", "", "external MQTT broker (mqtt://host:1883, mqtts://…) instead of the embedded one")
	fs.StringVar(&cfg.BrokerUsername, "broker-username", "controller", "with --broker: the controller's username")
	fs.StringVar(&cfg.BrokerIngestUsername, "broker-ingest-username", "", "with --broker: the username of the controller's second session, its share of what gateways publish, with the same password (default --broker-username; Mosquitto with use_username_as_clientid needs a user of its own)")
	brokerPass := fs.String("broker-password-file", "", "with --broker: file holding the controller's password")
	fs.StringVar(&cfg.BrokerCA, "broker-ca", "", "with --broker mqtts://: PEM file of the CA that signs the broker's certificate (default: system roots)")
	fs.StringVar(&cfg.BrokerCert, "broker-cert", "", "with --broker mqtts://: PEM client certificate of the controller, for brokers that require one")
	fs.StringVar(&cfg.BrokerKey, "broker-key", "", "with --broker-cert: its PEM private key")
	fs.StringVar(&cfg.BrokerDynsecLogin, "broker-dynsec-login", "", "with --broker on Mosquitto 2 with its dynamic security plugin: file (username:password) of the plugin's admin; gateways' identities are then kept on the broker (see mosquitto-dynsec.conf)")
	fs.StringVar(&cfg.MQTTTLSListen, "mqtts-listen", "127.0.0.1:8883", "embedded broker's MQTT-over-TLS address (with --mqtt-tls-cert and --mqtt-tls-key)")
	fs.StringVar(&cfg.MQTTTLSCert, "mqtt-tls-cert", "", "PEM certificate (chain) of the embedded broker: serve mqtts:// on --mqtts-listen")
	fs.StringVar(&cfg.MQTTTLSKey, "mqtt-tls-key", "", "PEM private key of --mqtt-tls-cert")
	fs.IntVar(&cfg.BrokerLimits.MaxPacketSize, "mqtt-max-packet-size", broker.DefaultMaxPacketSize, "embedded broker: largest MQTT packet a client may send, in bytes (a larger one disconnects it)")
	fs.IntVar(&cfg.BrokerLimits.MaxConnectSize, "mqtt-max-connect-size", broker.DefaultMaxConnectSize, "embedded broker: largest CONNECT, read before authentication, in bytes")
	fs.DurationVar(&cfg.BrokerLimits.ConnectTimeout, "mqtt-connect-timeout", broker.DefaultConnectTimeout, "embedded broker: a new connection that has not sent its CONNECT (and finished TLS) by then is closed")
	fs.IntVar(&cfg.BrokerLimits.MaxClients, "mqtt-max-clients", broker.DefaultMaxClients, "embedded broker: authenticated clients at once, each controller replica's two sessions included; more are refused (CONNACK server busy)")
	fs.IntVar(&cfg.BrokerLimits.MaxPending, "mqtt-max-pending", broker.DefaultMaxPending, "embedded broker: connections waiting for their CONNECT at once; more are closed")
	fs.IntVar(&cfg.GatewayLimits.MaxDeployments, "gateway-max-deployments", inventory.DefaultMaxDeployments, "deployments (status topics) one gateway may report; a birth with more, or a status of one more, is refused and shown on the gateway")
	fs.Float64Var(&cfg.GatewayLimits.EventRate, "gateway-event-rate", inventory.DefaultEventRate, "events a second one gateway may publish on average; more are dropped and shown on the gateway")
	fs.IntVar(&cfg.GatewayLimits.EventBurst, "gateway-event-burst", inventory.DefaultEventBurst, "events one gateway may publish at once")
	fs.StringVar(&cfg.NATSURL, "nats", "", "external NATS (nats://host:4222,tls://host2:4222,…) instead of the embedded server")
	fs.StringVar(&cfg.NATSListen, "nats-listen", "127.0.0.1:4222", "embedded NATS address (other replicas use it with --nats and --nats-creds)")
	fs.StringVar(&cfg.NATSCreds, "nats-creds", "", "NATS login file: one line user:password, or a NATS .creds file (with --nats); embedded, the server's own login (default: nats-login in --data, made on first start)")
	fs.StringVar(&cfg.NATSCA, "nats-ca", "", "with --nats: PEM file of the CA that signs the NATS servers' certificates (TLS is then required)")
	fs.StringVar(&cfg.NATSCert, "nats-cert", "", "with --nats: PEM client certificate for mutual TLS")
	fs.StringVar(&cfg.NATSKey, "nats-key", "", "with --nats: PEM client key for mutual TLS")
	fs.IntVar(&cfg.NATSReplicas, "nats-replicas", 0, "replicas of every JetStream bucket and stream (1-5; 0: 3 when the cluster places 3, 1 on a single server; an existing bucket with more keeps them)")
	fs.StringVar(&cfg.HTTPListen, "http-listen", "127.0.0.1:8080", "HTTP API address")
	tokenFile := fs.String("api-token-file", "", "file holding the token the API requires as Authorization: Bearer (default: api-token in --data, made on first start)")
	fs.StringArrayVar(&cfg.APIAllowedHosts, "api-allowed-host", nil, "a Host name clients use for the API besides its listen address, host:port or host for any port (repeatable; others are refused)")
	fs.IntVar(&cfg.APIMaxStreams, "api-max-streams", api.DefaultMaxStreams, "concurrent event streams (/v1/events) the API serves")
	fs.BoolVar(&cfg.APIInsecureNoAuth, "api-insecure-no-auth", false, "TESTS ONLY: the API requires no token (loopback --http-listen only)")
	fs.StringVar(&cfg.Registries, "registries", "", "registries file: emulated registries, their users and images")
	fs.StringSliceVar(&cfg.RegistryCheckAllow, "registry-check-allow", nil,
		"destinations the cloud's registry check may reach besides public addresses: CIDR (10.0.0.0/8), address or host:port (repeatable; the --registries registries are added)")
	fs.StringVar(&cfg.SecretsKey, "secrets-key", "", "key encrypting credentials at rest (default: controller.key in --data)")
	prefix := fs.String("topic-prefix", topic.DefaultPrefix, "MQTT topic prefix")
	fs.StringVar(&cfg.ControllerID, "controller-id", "controller", "this replica's MQTT client id; replicas sharing a broker and NATS need different ones")
	fs.StringVar(&cfg.IngestGroup, "ingest-group", serve.DefaultIngestGroup, "MQTT v5 shared-subscription group through which controller replicas share what gateways publish (each publication goes to one replica)")
	fs.BoolVar(&cfg.SoloIngest, "solo-ingest", false, "receive every gateway publication in this replica (no shared subscription), for a broker without MQTT v5 shared subscriptions; replicas then each apply everything")
	ctrlPass := fs.String("controller-password-file", "", "embedded broker: file holding the password of user controller, for other replicas (random when empty)")
	fs.DurationVar(&cfg.StaleAfter, "stale-after", 2*time.Minute, "an online gateway silent this long is shown as stale")
	fs.DurationVar(&cfg.Retention, "retention", 30*24*time.Hour, "finished commands and rollouts older than this are forgotten (checked hourly)")
	fs.IntVar(&cfg.Sim.Count, "sim-count", 0, "run this many simulated gateways in the process")
	fs.StringVar(&cfg.Sim.Tenant, "sim-tenant", "sim", "tenant of the simulated gateways")
	fs.DurationVar(&cfg.Sim.PullTime, "sim-pull-time", time.Second, "simulated pull duration")
	fs.Float64Var(&cfg.Sim.FailureRate, "sim-failure-rate", 0, "share of simulated pulls that fail (0-1)")
	fs.Float64Var(&cfg.Sim.CrashRate, "sim-crash-rate", 0, "share of simulated containers that crash (0-1)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	return func() (serve.Config, error) {
		var err error
		if cfg.Scheme, err = topic.NewScheme(*prefix); err != nil {
			return cfg, fmt.Errorf("--topic-prefix: %w", err)
		}
		if _, err := egress.New("--registry-check-allow", cfg.RegistryCheckAllow); err != nil {
			return cfg, err
		}
		if cfg.BrokerPassword, err = readSecretFile("broker-password-file", *brokerPass); err != nil {
			return cfg, err
		}
		if cfg.APIToken, err = readSecretFile("api-token-file", *tokenFile); err != nil {
			return cfg, err
		}
		if cfg.ControllerPassword, err = readSecretFile("controller-password-file", *ctrlPass); err != nil {
			return cfg, err
		}
		if err := cfg.BrokerLimits.Check(); err != nil {
			return cfg, err
		}
		if cfg.GatewayLimits.MaxDeployments < 1 || cfg.GatewayLimits.EventRate <= 0 || cfg.GatewayLimits.EventBurst < 1 {
			return cfg, errors.New("--gateway-max-deployments, --gateway-event-rate and --gateway-event-burst must be positive")
		}
		if cfg.NATSReplicas < 0 || cfg.NATSReplicas > 5 {
			return cfg, fmt.Errorf("--nats-replicas %d: want 1 to 5, or 0 to pick them from the cluster", cfg.NATSReplicas)
		}
		if !fs.Changed("mqtts-listen") && cfg.MQTTTLSCert == "" {
			cfg.MQTTTLSListen = ""
		}
		cfg.Logger = logger(true, *level)
		return cfg, nil
	}
}

func runServe(ctx context.Context, out io.Writer, cfg serve.Config) error {
	s, err := serve.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "cloud-sim %s serving\n  MQTT broker  %s\n", version, s.BrokerURL.Redacted())
	if s.Broker != nil && s.Broker.TLSURL() != "" {
		fmt.Fprintf(out, "  MQTT TLS     %s\n", s.Broker.TLSURL())
	}
	fmt.Fprintf(out, "  NATS         %s (%d replicas)\n  HTTP API     %s\n  web console  %s/ (log in with the API token)\n", s.NATSURL, s.Store.Replicas(), s.APIURL, s.APIURL)
	if s.NATSCreds != "" {
		fmt.Fprintf(out, "  NATS login   %s (other replicas: --nats %s --nats-creds FILE)\n", s.NATSCreds, s.NATSURL)
	}
	switch {
	case s.APITokenCreated: // shown this once; the CLI on this host reads the file
		fmt.Fprintf(out, "  API token    %s (made now in %s; shown only this once)\n", s.APIToken, s.APITokenFile)
	case s.APITokenFile != "":
		fmt.Fprintf(out, "  API token    in %s\n", s.APITokenFile)
	case s.APIToken == "":
		fmt.Fprintf(out, "  API token    NONE (--api-insecure-no-auth): any local process controls the fleet\n")
	}
	for _, name := range slices.Sorted(maps.Keys(s.Registries)) {
		r := s.Registries[name]
		fmt.Fprintf(out, "  registry     %s at %s %v\n", name, r.Server.URL, r.Images)
	}
	if s.Fleet != nil {
		fmt.Fprintf(out, "  simulated    %d gateways of tenant %s\n", len(s.Fleet.IDs()), cfg.Sim.Tenant)
	}
	<-ctx.Done()
	fmt.Fprintln(out, "stopping")
	if err := s.Close(); err != nil {
		return fmt.Errorf("stop: %w", err)
	}
	return nil
}

func fleetCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "fleet --count N",
		Short: "Simulated gateways against a running serve",
		Args:  cli.NoArgs,
	}
	fs := cmd.Flags()
	var sim simfleet.Config
	apiURL := fs.String("api", or(os.Getenv("CLOUD_SIM_API"), "http://127.0.0.1:8080"), "cloud-sim serve API, to provision the gateways")
	tokenFile := fs.String("api-token-file", "", "file holding the API token (else CLOUD_SIM_TOKEN, else the api-token file in --data)")
	dataDir := fs.String("data", cli.DefaultDataDir, "serve's data directory, where it made the API token (api-token)")
	brokerURL := fs.String("broker", "mqtt://127.0.0.1:1883", "MQTT broker the gateways connect to")
	fs.IntVar(&sim.Count, "count", 10, "number of simulated gateways")
	fs.StringVar(&sim.Tenant, "tenant", "sim", "their tenant")
	fs.StringVar(&sim.Prefix, "prefix", "sim-", "their id prefix: {prefix}1, {prefix}2, …")
	fs.StringVar(&sim.StateDir, "state", "", "state directory (default: a temporary one, removed at exit)")
	fs.DurationVar(&sim.PullTime, "pull-time", time.Second, "simulated pull duration")
	fs.Int64Var(&sim.ImageBytes, "image-size", 0, "size of every image in bytes (0: 10 MiB)")
	fs.Int64Var(&sim.LinkRate, "link-rate", 0, "each gateway's simulated link in bytes per second: a pull takes image-size/link-rate more (0: no link)")
	fs.Float64Var(&sim.FailureRate, "failure-rate", 0, "share of pulls that fail (0-1)")
	fs.Float64Var(&sim.CrashRate, "crash-rate", 0, "share of started containers that crash (0-1)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		u, err := url.Parse(*brokerURL)
		if err != nil {
			return cli.Usagef("--broker: %v", err)
		}
		sim.BrokerURL = u
		token, help, err := cli.FindToken(*tokenFile, *dataDir, os.Getenv)
		if err != nil {
			return cli.Usagef("%v", err)
		}
		return runFleet(cmd.Context(), cmd.OutOrStdout(), &apiclient.Client{Base: *apiURL, Token: token, NoTokenHelp: help}, sim)
	}
	return cmd
}

func runFleet(ctx context.Context, out io.Writer, c *apiclient.Client, sim simfleet.Config) error {
	var p api.Provisioned
	if err := c.Do(ctx, "POST", "/v1/simulated", api.SimulatedRequest{Tenant: sim.Tenant, Prefix: sim.Prefix, Count: sim.Count}, &p, nil); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	if sim.StateDir == "" {
		dir, err := os.MkdirTemp("", "cloud-sim-fleet-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		sim.StateDir = dir
	}
	sim.Password, sim.Scheme, sim.Encoding = []byte(p.Password), topic.Default(), codec.Protobuf
	keys, err := cmdsig.NewVerifier(p.CommandSigningKeys)
	if err != nil {
		return fmt.Errorf("provision: the command-signing keys: %w", err)
	}
	sim.CommandKeys = keys
	sim.Logger = logger(false, "warn")
	f, err := simfleet.Start(ctx, sim)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d simulated gateways of tenant %s running; Ctrl-C stops them (each publishes its death)\n", sim.Count, sim.Tenant)
	<-ctx.Done()
	return f.Close()
}

func demoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The end-to-end demo (make demo)",
		Args:  cli.NoArgs,
	}
	sims := cmd.Flags().Int("sim-count", 30, "simulated gateways beside the real agent")
	verbose := cmd.Flags().BoolP("verbose", "v", false, "log at info level")
	keep := cmd.Flags().String("serve", "auto", "after the demo, keep serving the console until Ctrl-C: yes, no, or auto (yes when the output is a terminal)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		opts := demo.Options{SimCount: *sims}
		switch *keep {
		case "yes":
			opts.Serve = true
		case "no":
		case "auto":
			opts.Serve = isTerminal(cmd.OutOrStdout())
		default:
			return cli.Usagef("--serve %q: say yes, no or auto", *keep)
		}
		if err := demo.Run(cmd.Context(), cmd.OutOrStdout(), logger(*verbose, "info"), opts); err != nil {
			return fmt.Errorf("failed: %w", err)
		}
		return nil
	}
	return cmd
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func brokerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "broker",
		Short: "Only the embedded MQTT v5 broker, without authentication",
		Args:  cli.NoArgs,
	}
	listen := cmd.Flags().String("listen", "127.0.0.1:1883", "address to listen on")
	store := cmd.Flags().String("store", "", "bbolt file persisting sessions and queued messages (none: in memory)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		b, err := broker.Start(broker.Config{Addr: *listen, StorePath: *store, Logger: logger(false, "warn")})
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "broker listening on %s (no authentication: use serve for that)\n", b.URL())
		<-cmd.Context().Done()
		b.Close()
		return nil
	}
	return cmd
}

func sampleWebCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "sample-web",
		Short: "The sample web server inside the images cloud-sim pushes ($MESSAGE on $PORT)",
		Args:  cli.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return sampleWeb(cmd.Context()) },
	}
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cli.NoArgs,
		Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) },
	}
}

// sampleWeb is the program of the sample images: GET / answers $MESSAGE,
// GET /healthz 200, on $PORT.
func sampleWeb(ctx context.Context) error {
	msg, port := or(os.Getenv("MESSAGE"), "hello from cloud-sim"), or(os.Getenv("PORT"), "8080")
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, msg+"\n") })
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
